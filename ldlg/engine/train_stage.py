"""What a method's train and sample stages ask of a training run in its workdir: run it to the end (or raise the
error the CLI reports), say whether it is done, and read a checkpoint back.

The trainer (`trainer.train`) returns how it stopped; a stage turns the two early stops into errors so that the
pipeline never goes on to sample from a run that did not finish: a stop signal (`signals.Interrupted`: the
checkpoint is saved and the rerun resumes) and a diverged loss (`FloatingPointError`: nothing more is saved).
"""

from typing import Any

import ml_collections

from ldlg.engine import checkpoints
from ldlg.engine import provenance
from ldlg.engine import signals
from ldlg.engine import train_state as train_state_lib
from ldlg.engine import trainer
from ldlg.engine.workdir import Workdir


def train_to_end(job: trainer.TrainJob, run: trainer.TrainRun, what: str = "training") -> trainer.TrainResult:
  """`trainer.train(job, run)`; raises on a stop signal or a diverged loss (see the module docstring)."""
  result = trainer.train(job, run)
  if result.stopped_by == "signal":
    raise signals.Interrupted(f"{what} was interrupted at step {result.step} (checkpoint saved)")
  if result.stopped_by == "divergence":
    raise FloatingPointError(f"{what} stopped at step {result.step}: the loss diverged (see the warnings above); "
                             "lower --config.optim.lr")
  return result


def train_done(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> bool:
  """The Stage `done` test of a train stage: a checkpoint at `config.train.num_steps` or later exists."""
  del data_dir
  latest = provenance.latest_step(workdir.checkpoint_dir)
  return latest is not None and latest >= config.train.num_steps


def restore_train_state(config: ml_collections.ConfigDict, workdir: Workdir, params: Any, step: int = -1,
                        **create_kwargs) -> tuple[dict, dict]:
  """(the saved train state as a dict: params, ema_params, opt_state, ...; the checkpoint's meta) at `step`
  (the latest with -1). `params` (a pytree of the right shapes) and `create_kwargs` (`ema`, `method_state`, as
  the train stage passed to `TrainState.create`) give the layout to restore into."""
  tx = train_state_lib.make_optimizer(config.optim, config.train.num_steps)
  target = train_state_lib.TrainState.create(params, tx, **create_kwargs).to_dict()
  ckpt = checkpoints.Checkpointer(workdir.checkpoint_dir)
  try:
    return ckpt.restore(target, step)
  finally:
    ckpt.close()
