"""Orbax checkpoints of the train state plus the JSON that a resume or a sampler needs beside it.

Each checkpoint step holds two items: `state` (step, params, EMA params, optimizer state; a pytree) and `meta`
(JSON: the config, the data position, the latent normalization statistics, the latent manifest's identity).
Saving is atomic in Orbax (a step directory appears only once complete), so an interrupted save leaves the
previous checkpoint as the latest.
"""

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` with the current `args=` API."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves and waits, so a SIGTERM right after cannot leave a half-written latest checkpoint."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def restore_meta(self, step: int | None = None) -> dict:
    step = self._resolve(step)
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores the state into the structure, shapes and dtypes of `target` (arrays or ShapeDtypeStructs).

    Raises:
      ValueError: when the saved parameters do not fit `target` (another model size or latent width).
    """
    step = self._resolve(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f"the checkpoint at {self.directory} step {step} does not fit the model built from this config "
          f"(different model size or latent width?): {e}") from e
    return restored["state"], restored["meta"]

  def _resolve(self, step: int | None) -> int:
    if step is None or step < 0:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; run --mode=train first")
    if step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}")
    return step

  def close(self) -> None:
    self._manager.close()
