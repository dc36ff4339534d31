"""The evaluate stage: scores `<workdir>/samples.jsonl` and writes `<workdir>/metrics.json`, whose provenance
marks the stage done.

`evaluate_stage(score)` is the frame every method's evaluate shares: a stop signal aborts cleanly (metrics.json is
written once, at the end, atomically), a missing samples file is one error naming the stage to run, and the
scores get the provenance of the samples they came from. `EVALUATE` scores unconditional / class-conditional
samples (MAUVE against the eval split, memorization and the classifier against the train split, the method's
likelihood); `seq2seq_stage.EVALUATE_SEQ2SEQ` scores candidates per source against their references.
"""

import json
from typing import Callable

from absl import logging

from ldlg.data.splits import load_texts
from ldlg.engine import provenance
from ldlg.engine import signals
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir

# score(config, workdir, data_dir, records) -> metrics (JSON-serializable), records = samples.jsonl's lines.
ScoreFn = Callable[[object, Workdir, object, list[dict]], dict]


def read_samples(workdir: Workdir) -> list[dict]:
  """The records of `<workdir>/samples.jsonl`; raises naming the stage to run when there are none."""
  if not workdir.samples_file.exists():
    raise FileNotFoundError(f"no samples at {workdir.samples_file}: the sample stage has not run in this "
                            "workdir. Run --mode=sample (or --mode=pipeline) first.")
  return [json.loads(line) for line in workdir.samples_file.read_text(encoding="utf-8").splitlines()]


def evaluate_stage(score: ScoreFn) -> Stage:
  """The "evaluate" Stage that scores the samples with `score` and saves the metrics with their provenance."""

  def evaluate(config, workdir: Workdir, data_dir) -> dict:
    from ldlg.evaluation import evaluate as evaluate_lib
    with signals.RaiseOnSignal("evaluation"):  # metrics.json is written at the end, atomically.
      metrics = score(config, workdir, data_dir, read_samples(workdir))
      metrics["provenance"] = provenance.metrics_provenance(config, workdir.samples_file)
      evaluate_lib.save_metrics(metrics, workdir.metrics_json)
    logging.info("Metrics (%s): %s", workdir.metrics_json, json.dumps(metrics))
    return metrics

  def done(config, workdir: Workdir, data_dir=None) -> bool:
    return provenance.metrics_current(config, workdir.metrics_json, workdir.samples_file)

  return Stage("evaluate", evaluate, done)


def score_samples(config, workdir: Workdir, data_dir, records: list[dict]) -> dict:
  """MAUVE (with draws), perplexity, diversity, memorization, the classifier's accuracy on class-conditional
  samples, and the method's likelihood on the eval split."""
  from ldlg import methods
  from ldlg.evaluation import classifier as classifier_lib
  from ldlg.evaluation import evaluate as evaluate_lib
  from ldlg.evaluation import featurizers
  from ldlg.evaluation import perplexity
  train = load_texts(config, data_dir, workdir, config.data.train_split)
  reference = [r["text"] for r in load_texts(config, data_dir, workdir, config.data.eval_split)]
  reference = reference[:config.eval.max_reference]
  featurizer = featurizers.get_featurizer(config.eval.featurizer)
  ppl_model = perplexity.load_causal_lm(config.eval.ppl_model) if config.eval.ppl_model else None
  labels, classifier = None, None
  if config.model.get("num_classes", 0) > 0:
    labels = [r["class_id"] for r in records]
    classifier = classifier_lib.train_classifier([r["text"] for r in train], [r["label"] for r in train],
                                                 featurizers.get_featurizer("minilm"))
  metrics = evaluate_lib.evaluate_draws(
      [r["text"] for r in records], reference, [r["text"] for r in train], featurizer=featurizer,
      num_draws=config.eval.num_draws, ppl_model=ppl_model, sample_labels=labels, classifier=classifier,
      seed=config.sample.seed)
  metrics.update(methods.get(config).likelihood_metrics(config, workdir, data_dir))
  return metrics


EVALUATE = evaluate_stage(score_samples)
