"""Metrics of generated text against references, for sequence-to-sequence tasks (DiffuSeq-style tables).

- BLEU: sacrebleu's corpus BLEU (default 13a tokenization, exp smoothing), on a 0-100 scale.
- ROUGE-L: F-measure of the longest common subsequence, tokenized as Google's `rouge-score` does (lowercase,
  every run of characters other than [a-z0-9] is a separator, no stemming), averaged over pairs.
- BERTScore-style similarity: BERTScore's greedy matching (Zhang et al. 2020) on unit-norm contextual
  token embeddings: precision = mean over hypothesis tokens of the best cosine with a reference token,
  recall the other way round, F1 their harmonic mean; averaged over pairs. It uses MiniLM's last layer,
  no idf weighting and no baseline rescaling, so values are *not* comparable with published BERTScore
  (deberta-xlarge-mnli / roberta-large); they rank systems inside this project.
- self-BLEU: mean sentence BLEU over ordered pairs of distinct texts from one set (DiffuSeq's diversity
  of the candidates for one source), with sacrebleu's sentence BLEU (exp smoothing, effective order)
  instead of NLTK's smoothing method 4, on a 0-100 scale.
"""
from __future__ import annotations

import re
from typing import Protocol, Sequence

import numpy as np

_ROUGE_SEPARATOR = re.compile(r"[^a-z0-9]+")


def _check_pairs(hypotheses: Sequence[str], references: Sequence[object]) -> None:
  if isinstance(hypotheses, str):
    raise ValueError("hypotheses must be a list of strings, not a single string")
  if len(hypotheses) != len(references) or not hypotheses:
    raise ValueError(f"need one reference entry per hypothesis and at least one pair; got "
                     f"{len(hypotheses)} hypotheses and {len(references)} references")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
                *, tokenize: str = "13a", lowercase: bool = False) -> float:
  """sacrebleu corpus BLEU (0-100).

  Args:
    hypotheses: one generated text per example.
    references: one reference per example, or a list of references per example (any number each).
    tokenize: sacrebleu tokenizer name ("13a", "none", "intl", ...).
    lowercase: case-insensitive BLEU.
  """
  import sacrebleu  # pylint: disable=import-outside-toplevel
  _check_pairs(hypotheses, references)
  ref_lists = [[r] if isinstance(r, str) else list(r) for r in references]
  if any(not refs for refs in ref_lists):
    raise ValueError("every hypothesis needs at least one reference")
  width = max(len(refs) for refs in ref_lists)
  # sacrebleu takes reference *streams*; None pads examples that have fewer references.
  streams = [[refs[k] if k < len(refs) else None for refs in ref_lists] for k in range(width)]
  return float(sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize=tokenize, lowercase=lowercase).score)


def self_bleu(texts: Sequence[str]) -> float:
  """Mean sentence BLEU (0-100) of each text against each other text of the set, over ordered pairs."""
  import sacrebleu  # pylint: disable=import-outside-toplevel
  if len(texts) < 2:
    raise ValueError("self-BLEU needs at least two texts")
  scores = [sacrebleu.sentence_bleu(texts[i], [texts[j]]).score
            for i in range(len(texts)) for j in range(len(texts)) if i != j]
  return float(np.mean(scores))


def rouge_tokenize(text: str) -> list[str]:
  """`rouge-score`'s default tokenization: lowercase, split on anything but [a-z0-9]."""
  return [t for t in _ROUGE_SEPARATOR.split(text.lower()) if t]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence of two token lists (O(len(a) * len(b)) dynamic program)."""
  if not a or not b:
    return 0
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  return prev[-1]


def rouge_l(hypothesis: str, reference: str) -> dict[str, float]:
  """ROUGE-L of one pair: {"precision": lcs/|hyp|, "recall": lcs/|ref|, "f1": harmonic mean} (0 if empty)."""
  hyp, ref = rouge_tokenize(hypothesis), rouge_tokenize(reference)
  lcs = lcs_length(hyp, ref)
  if lcs == 0:
    return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
  p, r = lcs / len(hyp), lcs / len(ref)
  return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r)}


def mean_rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """Mean ROUGE-L F1 over pairs, in [0, 1]."""
  _check_pairs(hypotheses, references)
  return float(np.mean([rouge_l(h, r)["f1"] for h, r in zip(hypotheses, references)]))


class TokenEmbedder(Protocol):
  """Anything with MiniLMFeaturizer's `token_embeddings`: texts -> unit-norm [L_i, D] arrays."""
  name: str

  def token_embeddings(self, texts: Sequence[str]) -> list[np.ndarray]:
    ...


def greedy_match(hyp_emb: np.ndarray, ref_emb: np.ndarray) -> tuple[float, float, float]:
  """BERTScore's greedy matching of one pair of unit-norm token embeddings [L_h, D], [L_r, D] -> (P, R, F1)."""
  if len(hyp_emb) == 0 or len(ref_emb) == 0:
    return 0.0, 0.0, 0.0
  sim = hyp_emb @ ref_emb.T  # cosine similarities [L_h, L_r]
  p = float(sim.max(axis=1).mean())
  r = float(sim.max(axis=0).mean())
  return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def bertscore(hypotheses: Sequence[str], references: Sequence[str], embedder: TokenEmbedder) -> dict[str, object]:
  """Mean BERTScore-style precision, recall and F1 over pairs, with the embedder's name."""
  _check_pairs(hypotheses, references)
  hyp = embedder.token_embeddings(list(hypotheses))
  ref = embedder.token_embeddings(list(references))
  scores = np.array([greedy_match(h, r) for h, r in zip(hyp, ref)])
  return {"precision": float(scores[:, 0].mean()), "recall": float(scores[:, 1].mean()),
          "f1": float(scores[:, 2].mean()), "model": embedder.name}
