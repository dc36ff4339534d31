"""The evaluate stage of sequence-to-sequence runs: the seq2seq table from `<workdir>/samples.jsonl`.

The sample stage wrote `num_candidates` candidates per distinct eval source. This stage scores two systems over
the same sources, each with `mbr.seq2seq_report` against all of a source's references:
  "first"  candidate 0 of each source (one draw: the row "without MBR");
  "mbr"    the minimum-Bayes-risk choice among the candidates (sentence-BLEU utility), with |S| >= 2.
Each report has multi-reference BLEU (sacrebleu), ROUGE-L (best over references), the BERTScore-style F1 on
`config.eval.featurizer`'s token embeddings (MiniLM; see `seq2seq_metrics`), dist-1, div-4, the candidates'
self-BLEU and div-4, and for E2E the slot error rate (`slot_error`: the source *is* the meaning representation).
`seconds_per_source` (the sampler's time for all candidates of one source) is copied from the samples.
Written to `<workdir>/metrics.json` as {"seq2seq": {"first": ..., "mbr": ...}, "num_candidates",
"seconds_per_source", "provenance"} by the evaluate frame all methods share (`stage.evaluate_stage`).
"""
import collections

from ldlg.engine.workdir import Workdir
from ldlg.evaluation.stage import evaluate_stage

# Datasets whose source is an E2E meaning representation (scored with the slot error rate).
MR_DATASETS = ("e2e",)


def candidates_by_source(records: list[dict]) -> dict[str, list[str]]:
  """{source: [candidate texts in candidate order]}, sources in the order of their source_index.

  Raises:
    ValueError: the records are not a seq2seq sample file, or a source lacks some of its candidates.
  """
  if not records or "source_index" not in records[0]:
    raise ValueError("samples.jsonl has no seq2seq records (source_index, candidate, source): it was not written "
                     "by a seq2seq method's sample stage. Rerun --mode=sample for this config.")
  grouped: dict[int, dict[int, dict]] = collections.defaultdict(dict)
  for r in records:
    grouped[r["source_index"]][r["candidate"]] = r
  num = max(r["candidate"] for r in records) + 1
  out = {}
  for index in sorted(grouped):
    cands = grouped[index]
    if sorted(cands) != list(range(num)):
      raise ValueError(f"source {index} has candidates {sorted(cands)}, expected 0..{num - 1}: samples.jsonl is "
                       "incomplete; rerun --mode=sample")
    out[cands[0]["source"]] = [cands[k]["text"] for k in range(num)]
  return out


def score_seq2seq(config, workdir: Workdir, data_dir, records: list[dict]) -> dict:
  """The "first" and "mbr" reports over the sampled sources (see the module docstring)."""
  from ldlg.data.seq2seq import group_references
  from ldlg.data.splits import load_texts
  from ldlg.evaluation import featurizers
  from ldlg.evaluation import mbr
  cands = candidates_by_source(records)
  references = dict(group_references(load_texts(config, data_dir, workdir, config.data.eval_split)))
  missing = [s for s in cands if s not in references]
  if missing:
    raise ValueError(f"{len(missing)} sampled sources are not in the {config.data.eval_split} split (e.g. "
                     f"{missing[0]!r}): the samples come from another split or dataset")
  refs = {s: references[s] for s in cands}
  mrs = {s: s for s in cands} if config.data.name in MR_DATASETS else None
  featurizer = featurizers.get_featurizer(config.eval.featurizer)
  embedder = featurizer if hasattr(featurizer, "token_embeddings") else None
  many = len(next(iter(cands.values()))) >= 2
  systems = {"first": {s: c[0] for s, c in cands.items()}}
  if many:
    systems["mbr"] = {s: c[mbr.mbr_select(c)] for s, c in cands.items()}
  return {"seq2seq": {name: mbr.seq2seq_report(hyps, refs, cands if many else None, embedder=embedder,
                                               meaning_representations=mrs)
                      for name, hyps in systems.items()},
          "num_candidates": len(next(iter(cands.values()))),
          "seconds_per_source": records[0].get("seconds_per_source"),
          "split": config.data.eval_split}


EVALUATE_SEQ2SEQ = evaluate_stage(score_seq2seq)
