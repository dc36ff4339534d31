"""Reconstruction scores of an autoencoder: how well decode(encode(x)) gives back x.

All on whitespace-split words (the texts are compared as the tokenizer decodes them, stripped):
- exact_match: fraction of sentences reproduced exactly;
- word_accuracy: fraction of reference words reproduced at the same position;
- bleu: corpus BLEU-4 (Papineni et al. 2002: clipped n-gram precisions, geometric mean, brevity
  penalty; no smoothing, no tokenisation beyond whitespace), in [0, 100].
"""
import collections
import math
from typing import Sequence


def _ngrams(words: list[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
  """Corpus BLEU in [0, 100] with one reference per hypothesis."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses vs {len(references)} references")
  matches, totals = [0] * max_n, [0] * max_n
  hyp_len = ref_len = 0
  for hyp, ref in zip(hypotheses, references):
    h, r = hyp.split(), ref.split()
    hyp_len += len(h)
    ref_len += len(r)
    for n in range(1, max_n + 1):
      hn, rn = _ngrams(h, n), _ngrams(r, n)
      matches[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
      totals[n - 1] += max(len(h) - n + 1, 0)
  if hyp_len == 0 or min(matches) == 0:
    return 0.0
  log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
  brevity = min(0.0, 1.0 - ref_len / hyp_len)
  return 100.0 * math.exp(log_precision + brevity)


def reconstruction_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """{"exact_match", "word_accuracy", "bleu", "num_sentences"} of hypotheses against references."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses vs {len(references)} references")
  hyps = [h.strip() for h in hypotheses]
  refs = [r.strip() for r in references]
  exact = sum(h == r for h, r in zip(hyps, refs))
  correct = total = 0
  for h, r in zip(hyps, refs):
    hw, rw = h.split(), r.split()
    correct += sum(a == b for a, b in zip(hw, rw))
    total += len(rw)
  n = max(len(refs), 1)
  return dict(exact_match=exact / n, word_accuracy=correct / max(total, 1),
              bleu=corpus_bleu(hyps, refs), num_sentences=len(refs))
