"""The stages of a run and `--mode=pipeline`, which runs every stage not yet done in a workdir, in order.

Each stage's output lives in the workdir (see ldlg/workdir.py) and marks it done:
  pretrain_autoencoder  <workdir>/autoencoder/reconstruction.json   (only when config.autoencoder.pretrain)
  precompute            <workdir>/latents/<train split>/manifest.json with "complete": true
  train                 a checkpoint at step config.train.num_steps
  sample                <workdir>/samples.jsonl
  evaluate              <workdir>/metrics.json
Re-running a finished stage is cheap: each one resumes (or skips) what is already on disk.
"""

import json
import pathlib

from absl import logging
import jax
import ml_collections

from ldlg.engine.workdir import Workdir
from ldlg.engine.workdir import save_or_check_config

STAGES = ("pretrain_autoencoder", "precompute", "train", "sample", "evaluate")
MODES = STAGES + ("pipeline",)
# Stages that run on process 0 only in a multi-host job; training runs on every host (pmap, sharded data).
SINGLE_HOST_STAGES = ("pretrain_autoencoder", "precompute", "sample", "evaluate")


def load_texts(config, data_dir, workdir: Workdir, split: str) -> list[dict]:
  """Records of a split (at most config.data.max_examples), read through the TFDS builder."""
  from ldlg.data import datasets
  records = datasets.load_split(config.data.name, split, data_dir, tfds_dir=workdir.tfds_dir)
  limit = config.data.max_examples
  n = len(records) if not limit else min(limit, len(records))
  return [records[i] for i in range(n)]


def pretrain_autoencoder(config, workdir: Workdir, data_dir) -> None:
  if not config.autoencoder.pretrain:
    logging.info("config.autoencoder.pretrain is False: using the pretrained %s.", config.autoencoder.name)
    return
  from ldlg.codecs.bart import pretrain
  train = [r["text"] for r in load_texts(config, data_dir, workdir, config.data.train_split)]
  valid = [r["text"] for r in load_texts(config, data_dir, workdir, config.data.eval_split)]
  result = pretrain.pretrain_autoencoder(config.autoencoder, train, valid,
                                         workdir.autoencoder_dir)
  logging.info("Autoencoder: %s", json.dumps({k: v for k, v in result.items() if k != "out_dir"}))


def precompute(config, workdir: Workdir, data_dir) -> None:
  from ldlg import from_config
  from ldlg.data import datasets
  from ldlg.data import precompute as precompute_lib
  autoencoder = from_config.load_autoencoder(config, workdir)
  spec, _ = datasets.get_spec(config.data.name)
  for split in dict.fromkeys((config.data.train_split, config.data.eval_split)):
    records = load_texts(config, data_dir, workdir, split)
    manifest = precompute_lib.precompute_latents(
        autoencoder, records, workdir.root / "latents", split=split, dtype=config.data.latent_dtype,
        shard_size=config.data.shard_size, batch_size=config.data.encode_batch_size,
        label_set=spec.label_set if config.model.num_classes > 0 else None,
        compute_stats=split == config.data.train_split)
    logging.info("Latents for %s: %d examples, text stats %s", split, manifest["num_examples"],
                 manifest["text_stats"])


def train(config, workdir: Workdir, data_dir) -> None:
  del data_dir
  from ldlg import train as train_lib
  train_lib.train_and_evaluate(config, workdir)


def sample(config, workdir: Workdir, data_dir) -> None:
  del data_dir
  from ldlg import sample as sample_lib
  sample_lib.sample_to_file(config, workdir)


def evaluate(config, workdir: Workdir, data_dir) -> None:
  """Scores samples.jsonl against the eval split (MAUVE) and the train split (memorization, classifier)."""
  from ldlg.evaluation import evaluate as evaluate_lib
  from ldlg.evaluation import classifier as classifier_lib
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
  if config.model.num_classes > 0:
    labels = [r["class_id"] for r in records]
    classifier = classifier_lib.train_classifier([r["text"] for r in train], [r["label"] for r in train],
                                                 featurizers.get_featurizer("minilm"))
  metrics = evaluate_lib.evaluate_draws(
      [r["text"] for r in records], reference, [r["text"] for r in train], featurizer=featurizer,
      num_draws=config.eval.num_draws, ppl_model=ppl_model, sample_labels=labels, classifier=classifier,
      seed=config.sample.seed)
  evaluate_lib.save_metrics(metrics, workdir.metrics_json)
  logging.info("Metrics (%s): %s", workdir.metrics_json, json.dumps(metrics))


def stage_done(stage: str, config, workdir: Workdir) -> bool:
  if stage == "pretrain_autoencoder":
    return not config.autoencoder.pretrain or (workdir.autoencoder_dir / "reconstruction.json").exists()
  if stage == "precompute":
    for split in (config.data.train_split, config.data.eval_split):
      manifest = workdir.latents_dir(split) / "manifest.json"
      if not manifest.exists() or not json.loads(manifest.read_text()).get("complete"):
        return False
    return True
  if stage == "train":
    from ldlg.engine import checkpoints as checkpointing
    if not workdir.checkpoint_dir.exists():
      return False
    ckpt = checkpointing.Checkpointer(workdir.checkpoint_dir)
    try:
      latest = ckpt.latest_step()
    finally:
      ckpt.close()
    return latest is not None and latest >= config.train.num_steps
  if stage == "sample":
    return workdir.samples_file.exists()
  if stage == "evaluate":
    return workdir.metrics_json.exists()
  raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")


_RUN = {"pretrain_autoencoder": pretrain_autoencoder, "precompute": precompute, "train": train,
        "sample": sample, "evaluate": evaluate}


def run(mode: str, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, data_dir=None) -> None:
  """Runs one stage, or with mode="pipeline" every stage not yet done.

  A single stage whose inputs are missing fails with a message naming the stage to run first.
  """
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
  wd = Workdir(pathlib.Path(workdir).absolute())
  save_or_check_config(config, wd, write=jax.process_index() == 0)
  stages = STAGES if mode == "pipeline" else (mode,)
  for stage in stages:
    if mode == "pipeline" and stage_done(stage, config, wd):
      logging.info("Stage %s: already done in %s.", stage, wd.root)
      continue
    logging.info("Stage %s: running.", stage)
    if stage in SINGLE_HOST_STAGES and jax.process_count() > 1:
      # One host writes the shared workdir; the others wait for it rather than racing on the same files.
      from jax.experimental import multihost_utils
      if jax.process_index() == 0:
        _RUN[stage](config, wd, data_dir)
      multihost_utils.sync_global_devices(f"ldlg stage {stage}")
    else:
      _RUN[stage](config, wd, data_dir)
