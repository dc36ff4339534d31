"""Metrics to a JSONL file and TensorBoard (tensorboardX: protobuf only, no TensorFlow)."""

import json
import math
import pathlib

import tensorboardX


class MetricWriter:
  """Writes scalars and text; only process 0 should make one (others get `None` from `make_writer`)."""

  def __init__(self, jsonl_path: pathlib.Path, tensorboard_dir: pathlib.Path):
    jsonl_path.parent.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(jsonl_path, "a", encoding="utf-8")
    self._tb = tensorboardX.SummaryWriter(str(tensorboard_dir))

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, step)
    record = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def write_tensorboard(self, step: int, scalars: dict[str, float]) -> None:
    """Scalars for TensorBoard only (timings: they would make the JSONL log differ between identical runs)."""
    for key, value in scalars.items():
      self._tb.add_scalar(key, float(value), step)

  def write_texts(self, step: int, texts: dict[str, str]) -> None:
    for key, value in texts.items():
      self._tb.add_text(key, value, step)
    self._jsonl.write(json.dumps({"step": step, **texts}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    self._tb.close()
    self._jsonl.close()
