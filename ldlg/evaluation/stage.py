"""The evaluate stage: scores `<workdir>/samples.jsonl` against the eval split (MAUVE) and the train split
(memorization, classifier), and writes `<workdir>/metrics.json`; its existence marks the stage done."""

import json

from absl import logging

from ldlg.data.splits import load_texts
from ldlg.engine import provenance
from ldlg.engine import signals
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir


def evaluate(config, workdir: Workdir, data_dir) -> dict:
  with signals.RaiseOnSignal("evaluation"):  # metrics.json is written at the end, atomically.
    return _evaluate(config, workdir, data_dir)


def _evaluate(config, workdir: Workdir, data_dir) -> dict:
  from ldlg.evaluation import classifier as classifier_lib
  from ldlg.evaluation import evaluate as evaluate_lib
  from ldlg.evaluation import featurizers
  from ldlg.evaluation import perplexity
  if not workdir.samples_file.exists():
    raise FileNotFoundError(f"no samples at {workdir.samples_file}: the sample stage has not run in this "
                            "workdir. Run --mode=sample (or --mode=pipeline) first.")
  records = [json.loads(line) for line in workdir.samples_file.read_text(encoding="utf-8").splitlines()]
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
  from ldlg import methods
  metrics.update(methods.get(config).likelihood_metrics(config, workdir, data_dir))
  metrics["provenance"] = provenance.metrics_provenance(config, workdir.samples_file)
  evaluate_lib.save_metrics(metrics, workdir.metrics_json)
  logging.info("Metrics (%s): %s", workdir.metrics_json, json.dumps(metrics))
  return metrics


def evaluate_done(config, workdir: Workdir, data_dir=None) -> bool:
  return provenance.metrics_current(config, workdir.metrics_json, workdir.samples_file)


EVALUATE = Stage("evaluate", evaluate, evaluate_done)
