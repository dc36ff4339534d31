"""Minimum-Bayes-risk selection over sampled candidates, and the seq2seq report over grouped sources.

MBR (DiffuSeq, Gong et al. 2022): draw |S| candidates per source (different seeds) and return the one with
the highest mean sentence-BLEU against the others, i.e. the candidate closest to the consensus — the
expected-utility maximizer when the other candidates stand in for samples of the model distribution.
Sentence BLEU is sacrebleu's (exp smoothing, effective order, 0-100); candidate i's utility is
mean_{j≠i} BLEU(hypothesis = c_i, reference = c_j). Ties go to the earliest candidate.

`seq2seq_report` gathers the seq2seq table (BLEU, ROUGE-L, diversity, slot error) for one system:
- bleu: sacrebleu corpus BLEU of one hypothesis per source against all that source's references;
- rouge_l: per source, the best ROUGE-L F1 over its references (rouge-score's multi-reference rule), averaged
  over sources;
- dist_1: mean per-hypothesis distinct unigram ratio; div_4: distinct 4-grams over all hypotheses (pooled);
- with candidates: self_bleu (mean over sources of the self-BLEU among that source's candidates; lower =
  more diverse) and candidates_div_4 (per-source pooled distinct 4-grams among candidates, averaged);
- with an embedder: bertscore_f1 (BERTScore-style greedy matching, best F1 over a source's references);
- with meaning representations (E2E): the slot error of `slot_error.corpus_slot_error`.
"""
from __future__ import annotations

from typing import Mapping, Sequence, Union

import numpy as np

from ldlg.evaluation import ngram_metrics, seq2seq_metrics, slot_error

Grouped = Union[Sequence, Mapping[str, object]]


def mbr_scores(candidates: Sequence[str]) -> np.ndarray:
  """Each candidate's mean sentence-BLEU (0-100) against the other candidates: float64 [|S|]."""
  import sacrebleu  # pylint: disable=import-outside-toplevel
  if isinstance(candidates, str) or len(candidates) == 0:
    raise ValueError("candidates must be a non-empty list of strings")
  n = len(candidates)
  if n == 1:
    return np.zeros(1)
  bleu = np.array([[sacrebleu.sentence_bleu(candidates[i], [candidates[j]]).score if i != j else 0.0
                    for j in range(n)] for i in range(n)])
  return bleu.sum(axis=1) / (n - 1)


def mbr_select(candidates: Sequence[str]) -> int:
  """Index of the MBR candidate (highest mean BLEU against the others; the first on ties)."""
  return int(np.argmax(mbr_scores(candidates)))


def mbr_decode(candidates_by_source: Sequence[Sequence[str]]) -> list[str]:
  """The MBR candidate of each source's candidate list."""
  return [list(c)[mbr_select(c)] for c in candidates_by_source]


def _align(hypotheses_by_source: Grouped, *others: Grouped | None) -> tuple[list, ...]:
  """Lists in one order: by position for sequences, by the hypotheses' keys for mappings."""
  if isinstance(hypotheses_by_source, Mapping):
    keys = list(hypotheses_by_source)
    out = [[hypotheses_by_source[k] for k in keys]]
    for other in others:
      if other is None:
        out.append(None)
        continue
      if not isinstance(other, Mapping):
        raise ValueError("hypotheses are keyed by source, so references/candidates/MRs must be too")
      missing = [k for k in keys if k not in other]
      if missing:
        raise ValueError(f"{len(missing)} sources have no entry, e.g. {missing[0]!r}")
      out.append([other[k] for k in keys])
    return tuple(out)
  out = [list(hypotheses_by_source)]
  for other in others:
    if other is not None and len(other) != len(out[0]):
      raise ValueError(f"need one entry per source: {len(out[0])} hypotheses, {len(other)} entries")
    out.append(None if other is None else list(other))
  return tuple(out)


def seq2seq_report(hypotheses_by_source: Grouped, references_by_source: Grouped,
                   candidates_by_source: Grouped | None = None, *, embedder=None,
                   meaning_representations: Grouped | None = None) -> dict[str, object]:
  """The seq2seq metrics of one system over grouped sources.

  Args:
    hypotheses_by_source: one output per source (e.g. the MBR choice): a list, or a mapping source -> text.
    references_by_source: per source, its reference or list of references (same order / keys).
    candidates_by_source: per source, the |S| sampled candidates (for self-BLEU and candidates_div_4).
    embedder: a `seq2seq_metrics.TokenEmbedder` (e.g. MiniLM) for bertscore_f1; None skips it.
    meaning_representations: per source, its E2E MR string, for the slot error; None skips it.

  Returns:
    {"bleu", "rouge_l", "dist_1", "div_4", "num_sources"} plus, when given the inputs, "self_bleu",
    "candidates_div_4", "bertscore_f1" (with "bertscore_model"), "slot_error_rate".
  """
  hyps, refs, cands, mrs = _align(hypotheses_by_source, references_by_source, candidates_by_source,
                                  meaning_representations)
  if not hyps:
    raise ValueError("no sources to score")
  refs = [[r] if isinstance(r, str) else list(r) for r in refs]
  report: dict[str, object] = {
      "num_sources": len(hyps),
      "bleu": seq2seq_metrics.corpus_bleu(hyps, refs),
      "rouge_l": float(np.mean([max(seq2seq_metrics.rouge_l(h, r)["f1"] for r in rs)
                                for h, rs in zip(hyps, refs)])),
      "dist_1": ngram_metrics.distinct_n(hyps, 1),
      "div_4": ngram_metrics.distinct_n_pooled(hyps, 4),
  }
  if cands is not None:
    groups = [list(c) for c in cands if len(c) >= 2]
    if not groups:
      raise ValueError("self-BLEU needs at least two candidates for some source")
    report["self_bleu"] = float(np.mean([seq2seq_metrics.self_bleu(c) for c in groups]))
    report["candidates_div_4"] = float(np.nanmean([ngram_metrics.distinct_n_pooled(c, 4) for c in groups]))
  if embedder is not None:
    flat_refs = [r for rs in refs for r in rs]
    hyp_emb = embedder.token_embeddings(hyps)
    ref_emb = embedder.token_embeddings(flat_refs)
    starts = np.cumsum([0] + [len(rs) for rs in refs])
    f1 = [max(seq2seq_metrics.greedy_match(h, r)[2] for r in ref_emb[a:b])
          for h, a, b in zip(hyp_emb, starts[:-1], starts[1:])]
    report["bertscore_f1"] = float(np.mean(f1))
    report["bertscore_model"] = embedder.name
  if mrs is not None:
    report["slot_error_rate"] = slot_error.corpus_slot_error(mrs, hyps)["slot_error_rate"]
  return report
