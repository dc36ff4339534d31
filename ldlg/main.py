r"""Entry point for every job. The logic lives in libraries that tests and the Colab import; this file is flags.

  python -m ldlg.main --config=configs/e2e.py:cpu --workdir=runs/e2e_cpu --mode=pipeline --data_dir=../shared/data

Modes: a method's stages (tokenizer, pretrain_autoencoder, train_compression, precompute, train, sample,
evaluate: `ldlg.pipeline.STAGES`; each method has some of them) and pipeline (every stage not yet done, in order).
`--config.x.y=value` overrides config fields. The raw-data folder (holding `<dataset>/...`) comes from
`--data_dir` or $LDLG_DATA_DIR; with neither, the dataset builders download what is publicly downloadable.
Multi-host (TPU pod slices): pass --jax_distributed or set LDLG_DISTRIBUTED=1.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ldlg import pipeline
from ldlg.engine import signals

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (ml_collections), e.g. configs/e2e.py:cpu.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory for every stage's outputs.")
_MODE = flags.DEFINE_enum("mode", "pipeline", pipeline.MODES, "Which stage to run.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Raw data folder holding <dataset>/...; else $LDLG_DATA_DIR.")
_DISTRIBUTED = flags.DEFINE_bool("jax_distributed", False,
                                 "Call jax.distributed.initialize() (multi-host); also LDLG_DISTRIBUTED=1.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of an anticipated error (bad input, missing "
                             "stage output), not only its one-line message.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors a user can cause and fix (bad config values, missing files or stages, damaged checkpoints, non-finite
# training): one line saying what and how to fix it, not a traceback (unless --verbose).
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
                FloatingPointError, OSError)


class _QuietLibraries(logging.logging.Filter):
  """Drops INFO chatter of Orbax, TFDS and JAX's backend probing (dozens of lines per checkpoint; "Unable to
  initialize backend 'tpu'" on every CPU run); their warnings still show."""

  def filter(self, record):
    noisy = ("/orbax/", "/tensorflow_datasets/", "/faiss/", "/jax/_src/xla_bridge", "/etils/")
    return record.levelno >= logging.logging.WARNING or not any(n in record.pathname for n in noisy)


def _quiet_third_party() -> None:
  """Library banners that say nothing about this run: transformers' Flax deprecation notice, JAX's backend
  probes, TFDS's 'Downloading and preparing' for local files."""
  import warnings
  warnings.filterwarnings("ignore", message=".*TensorFlow and JAX classes are deprecated.*")
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  for name in ("jax._src.xla_bridge", "absl.tensorflow_datasets", "tensorflow_datasets"):
    logging.logging.getLogger(name).setLevel(logging.logging.WARNING)
  try:
    import transformers
    transformers.logging.set_verbosity_error()
  except ImportError:
    pass
  try:  # TFDS's own per-split progress bars ("Shuffling ...") fill redirected logs.
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
  except ImportError:
    pass


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _quiet_third_party()
  if _DISTRIBUTED.value or os.environ.get("LDLG_DISTRIBUTED") == "1":
    import jax
    jax.distributed.initialize()
  data_dir = _DATA_DIR.value or os.environ.get("LDLG_DATA_DIR") or None
  logging.debug("Config:\n%s", _CONFIG.value)
  try:
    pipeline.run(_MODE.value, _CONFIG.value, _WORKDIR.value, data_dir=data_dir)
  except signals.Interrupted as e:
    print(f"ldlg: interrupted: {e}. Everything done so far is saved; rerun the same command to resume.",
          file=sys.stderr)
    sys.exit(signals.EXIT_CODE_INTERRUPTED)
  except _USER_ERRORS as e:
    if _VERBOSE.value:
      raise
    print(f"ldlg: error: {type(e).__name__}: {e}\n(--verbose shows the traceback)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
