"""Orbax checkpoints of the train state plus the JSON that a resume or a sampler needs beside it.

Each checkpoint step holds two items: `state` (step, params, EMA params, optimizer state; a pytree) and `meta`
(JSON: the config, the data position, the latent normalization statistics, the latent manifest's identity).
Saving is atomic in Orbax (a step directory appears only once complete), so an interrupted save leaves the
previous checkpoint as the latest.
"""

import pathlib
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """No intact checkpoint could be restored (each damaged one is named in the message)."""


def all_finite(tree) -> bool:
  """True when every floating-point leaf of a host pytree is finite (what makes a checkpoint "good")."""
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
      return False
  return True


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
    saved_meta_file = self.directory / str(step) / "meta"
    if not saved_meta_file.exists():
      raise CheckpointError(f"the checkpoint at {self.directory} step {step} is incomplete: its meta item "
                            f"({saved_meta_file}) is missing")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      if self._shapes_differ(step, abstract):
        raise ValueError(
            f"the checkpoint at {self.directory} step {step} does not fit the model built from this config "
            f"(different model size or latent width?): {str(e).splitlines()[0][:300]}") from e
      raise CheckpointError(f"the checkpoint at {self.directory} step {step} is damaged: "
                            f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__}") from e
    return restored["state"], restored["meta"]

  def restore_latest_intact(self, target: Any) -> tuple[Any, dict, int]:
    """Restores the newest checkpoint that reads back whole, falling back over damaged ones with a warning.

    Returns:
      (state, meta, step).
    Raises:
      CheckpointError: when none can be read; the message names each step and what was wrong with it.
    """
    failures = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, meta = self.restore(target, step)
      except Exception as e:  # pylint: disable=broad-except  (TensorStore, JSON and shape errors alike)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        failures.append(f"step {step}: {first_line[:300]}")
        logging.warning("The checkpoint at %s step %d is damaged or does not fit (%s); trying the previous one.",
                        self.directory, step, first_line[:300])
        continue
      if failures:
        logging.warning("Resuming from step %d: newer checkpoints could not be read (%s).", step,
                        "; ".join(failures))
        self._set_aside(s for s in self.all_steps() if s > step)
      return state, meta, step
    raise CheckpointError(
        f"no checkpoint in {self.directory} could be restored:\n  " + "\n  ".join(failures) +
        "\nIf the model or config changed, use a new workdir; otherwise delete the damaged step folders to start "
        "that stage again.")

  def _set_aside(self, steps) -> None:
    """Renames damaged step folders to `damaged-<step>` (kept for inspection), so the run can save those
    steps again."""
    for step in list(steps):
      src = self.directory / str(step)
      dst = self.directory / f"damaged-{step}"
      k = 1
      while dst.exists():
        dst, k = self.directory / f"damaged-{step}.{k}", k + 1
      src.rename(dst)
      logging.warning("Moved the damaged checkpoint %s aside to %s.", src, dst)
    self._manager.reload()

  def _resolve(self, step: int | None) -> int:
    if step is None or step < 0:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; run --mode=train first")
    if step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}")
    return step

  def _shapes_differ(self, step: int, abstract: Any) -> bool:
    """Whether the saved tree's shapes differ from `abstract` (a real mismatch, not damage)."""
    try:
      metadata = self._manager.item_metadata(step)["state"]
    except Exception:  # pylint: disable=broad-except  (damaged metadata: cannot tell, call it damage)
      return False
    if metadata is None:
      return False
    try:
      saved = jax.tree.map(lambda m: tuple(m.shape), metadata)
      wanted = jax.tree.map(lambda a: tuple(a.shape), abstract)
      return jax.tree.structure(saved) != jax.tree.structure(wanted) or saved != wanted
    except Exception:  # pylint: disable=broad-except
      return True

  def close(self) -> None:
    self._manager.close()
