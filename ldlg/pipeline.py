"""The stage graph: `--mode=<stage>` runs one stage, `--mode=pipeline` every stage not yet done, in order.

The stages are the run's method's (`Method.stages()`: e.g. for Gaussian latent diffusion pretrain_autoencoder,
precompute, train, sample, evaluate); each stage's body lives with its concern (the codec, the method, the
evaluation) and its output in the workdir marks it done. This file only orchestrates: it checks the config and
the workdir before anything is written, runs the stages, and on a multi-host job lets process 0 run the
single-host stages while the others wait.
"""

import pathlib
import time

from absl import logging
import jax
import ml_collections

from ldlg import methods
from ldlg.config_validation import validate_config
from ldlg.engine.workdir import Workdir
from ldlg.engine.workdir import save_or_check_config

# The stage names a method may have (the --mode choices), in pipeline order.
STAGES = ("tokenizer", "pretrain_autoencoder", "train_compression", "precompute", "finetune_decoder", "train", "sample",
          "evaluate")
MODES = STAGES + ("pipeline",)


def stage_done(stage: str, config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> bool:
  for s in methods.stages(config):
    if s.name == stage:
      return s.done(config, workdir, data_dir)
  raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")


def check_workdir(root: pathlib.Path) -> None:
  """Fails up front (before minutes of work) when the workdir cannot hold this run's outputs."""
  import os
  if root.exists() and not root.is_dir():
    raise NotADirectoryError(f"--workdir={root} is a file, not a folder; pass a folder path (it is created)")
  existing = root
  while not existing.exists():
    existing = existing.parent
  if not os.access(existing, os.W_OK | os.X_OK):
    raise PermissionError(f"--workdir={root} is not writable ({existing} is read-only for this user); pick a "
                          "writable folder or fix its permissions")


def run(mode: str, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, data_dir=None) -> None:
  """Runs one stage, or with mode="pipeline" every stage not yet done.

  A single stage whose inputs are missing fails with a message naming the stage to run first.
  """
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
  stages = methods.stages(config)
  names = [s.name for s in stages]
  if mode != "pipeline" and mode not in names:
    raise ValueError(f"the {methods.method_name(config)} method has no {mode!r} stage; its stages are {names}")
  validate_config(config)  # Before anything is written: a bad value never reaches config.json.
  if "://" in str(workdir) or "://" in str(data_dir or ""):
    raise ValueError(f"--workdir={workdir} / --data_dir={data_dir}: URLs (gs://...) are not supported yet (latent "
                     "shards are memory-mapped and stages write with local file operations); mount the bucket "
                     "(gcsfuse) and pass the mounted path")
  wd = Workdir(pathlib.Path(workdir).absolute())
  check_workdir(wd.root)
  save_or_check_config(config, wd, write=jax.process_index() == 0)
  todo = stages if mode == "pipeline" else [s for s in stages if s.name == mode]
  t0 = time.perf_counter()
  for k, stage in enumerate(todo, 1):
    if mode == "pipeline" and stage.done(config, wd, data_dir):
      logging.info("Stage %s: already done in %s.", stage.name, wd.root)
      continue
    logging.info("Stage %d of %d: %s (%.0f s elapsed).", k, len(todo), stage.name, time.perf_counter() - t0)
    if stage.single_host and jax.process_count() > 1:
      # One host writes the shared workdir; the others wait for it rather than racing on the same files.
      from jax.experimental import multihost_utils
      if jax.process_index() == 0:
        stage.run(config, wd, data_dir)
      multihost_utils.sync_global_devices(f"ldlg stage {stage.name}")
    else:
      stage.run(config, wd, data_dir)
