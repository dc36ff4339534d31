"""The one sample runner: a method's compiled sampler sharded over the local devices, the codec's decoder,
empty outputs re-drawn, and `samples.jsonl` written atomically.

A method supplies three functions (see `SampleRunner`); the runner owns batching, the per-batch keys, the
re-draw rounds, the device sharding and the file. Batch `start` of round r uses the key
`fold_in(fold_in(key(seed), r), start)` and the host generator `default_rng(seed)` in batch order, so the same
seed and settings give the same texts. A round's batch is never larger than what it has left to draw (four
samples, or three empty ones re-drawn, run a batch of four or three, not a padded full batch). The batch is split
over devices with pmap; each device is told its
offset in the batch, and a method that draws its noise for the whole batch and slices it (the Gaussian
samplers do, see ldlg/methods/gaussian/noise.py) gives the same samples on any number of devices.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import numpy as np
import tqdm

from ldlg.engine import parallel

# (params, rng, inputs {name: [b, ...]}, example_offset, global_batch) -> outputs pytree of [b, ...] arrays.
DeviceFn = Callable[[Any, jax.Array, dict, Any, int], Any]
# (host generator, batch size, conditions [batch size, ...] or None) -> (inputs {name: [G, ...] host arrays},
# per-row record fields [G] dicts). Conditions are the per-sample int rows given to `SampleRunner.sample` (class
# ids, a seq2seq sample's index, from which it knows its source, or a planned (length, class) row), 0 on the
# unused rows of a last batch.
InputsFn = Callable[[np.random.Generator, int, np.ndarray | None], tuple[dict, list[dict]]]
# (outputs pytree of [G, ...] host arrays, inputs) -> G texts.
DecodeFn = Callable[[Any, dict], list[str]]


def resolve_class_ids(num_classes: int, num_samples: int, class_id: int | None) -> np.ndarray | None:
  """Class ids of the samples: balanced over classes (class_id None or -1), one class, or None (unconditional).

  Raises:
    ValueError: a class id out of range, or one given to an unconditional model.
  """
  if num_classes == 0:
    if class_id is not None and class_id != -1:
      raise ValueError(f"class_id={class_id} was given, but the model is unconditional (num_classes=0); "
                       "leave --config.sample.class_id at -1")
    return None
  if class_id is None or class_id == -1:
    return (np.arange(num_samples) % num_classes).astype(np.int32)
  if not 0 <= class_id <= num_classes:
    raise ValueError(f"class_id={class_id} is out of range: the model has {num_classes} classes (0.."
                     f"{num_classes - 1}; {num_classes} = unconditional, -1 = balanced over classes)")
  return np.full((num_samples,), class_id, np.int32)


def usable_devices(batch_size: int, devices: Sequence[jax.Device] | None = None) -> list[jax.Device]:
  """The most local devices (a divisor of batch_size) a batch can be split over evenly."""
  devices = list(devices or jax.local_devices())
  n = len(devices)
  while batch_size % n:
    n -= 1
  return devices[:n]


@dataclasses.dataclass
class SampleRunner:
  """Draws texts with a method's sampler, sharded over devices.

  Attributes:
    device_fn: the method's sampler for one device's rows (see DeviceFn); traced once per shape.
    make_inputs: builds a batch's host inputs (lengths, masks, class ids) and the per-row record fields.
    decode: the codec's decoder, outputs -> texts.
    devices: devices to shard over (default all local; reduced to a divisor of the batch size).
    batch_seconds: after `sample`, the wall time of each batch it computed (not those read back from a partial
      file), from the sampler's call to its outputs on the host: the first one includes compilation.
    batch_rows: after `sample`, the rows (the batch size) of each of those batches.
  """
  device_fn: DeviceFn
  make_inputs: InputsFn
  decode: DecodeFn
  devices: Sequence[jax.Device] | None = None

  def __post_init__(self):
    self._compiled = {}
    self.last_empty_count = 0
    self.batch_seconds: list[float] = []
    self.batch_rows: list[int] = []

  def seconds_per_row(self) -> float | None:
    """The steady sampling time of one row: the batches' time over their rows, the first batch (compilation)
    left out when there are others; None when `sample` computed no batch (all read back from a partial file)."""
    first = 1 if len(self.batch_seconds) > 1 else 0
    rows = sum(self.batch_rows[first:])
    return float(sum(self.batch_seconds[first:])) / rows if rows else None

  def _pmapped(self, devices: tuple):
    if devices not in self._compiled:
      n = len(devices)
      def per_device(params, rng, inputs):
        b = jax.tree.leaves(inputs)[0].shape[0]
        return self.device_fn(params, rng, inputs, parallel.device_index() * b, b * n)
      self._compiled[devices] = jax.pmap(per_device, axis_name=parallel.AXIS, in_axes=(0, None, 0),
                                         devices=list(devices))
    return self._compiled[devices]

  def sample(self, params: Any, *, num_samples: int, seed: int, batch_size: int,
             conditions: np.ndarray | None = None, order: Sequence[int] | None = None, max_redraws: int = 5,
             progress: bool = False, partial_path: pathlib.Path | None = None,
             partial_key: str = "") -> list[dict]:
    """Draws `num_samples` texts; empty decodes are counted and re-drawn (as the paper does).

    With `partial_path`, each finished batch is appended there (one JSON line), and a rerun with the same
    `partial_key` (what the samples depend on: checkpoint, settings) skips the batches already done — replaying
    only their cheap host-side draws, so the result equals an uninterrupted run's. A stop signal ends the run
    after the current batch with `signals.Interrupted`.

    `conditions` [num_samples, ...] int (or None) is each sample's condition, handed to `make_inputs` per batch:
    the class ids of a class-conditional model, the sample's own index (`np.arange(num_samples)`) when the inputs
    depend on which sample a row is (a seq2seq source), or a planned row (length, class id).

    `order`: a permutation of range(num_samples), the order in which samples are put into batches (default: index
    order), e.g. shortest first so that a batch's rows have similar lengths. Records stay in index order.

    Returns:
      Records {"index", "text", "round" (0 = first draw), **the row's fields from make_inputs}, in index order.
    """
    from ldlg.engine import signals  # pylint: disable=import-outside-toplevel
    done_batches = _read_partial(partial_path, partial_key) if partial_path else {}
    if num_samples < 1:
      raise ValueError(f"num_samples={num_samples}: sample at least one text (--config.sample.num_samples)")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    replicated = {}  # The params on each device set a round's batch is split over.
    rng_np = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    conditions = None if conditions is None else np.asarray(conditions)
    todo = list(range(num_samples))
    if order is not None:
      todo = [int(i) for i in order]
      if sorted(todo) != list(range(num_samples)):
        raise ValueError(f"order must be a permutation of range(num_samples={num_samples})")
    results: dict[int, dict] = {}
    empties = 0
    self.batch_seconds, self.batch_rows = [], []
    # The stop handler is installed before the partial file appears: a stop signal that comes once the file
    # exists always lets the batch in flight finish and be saved.
    with signals.StopSignal() as stop, contextlib.ExitStack() as files:
      partial = files.enter_context(open(partial_path, "a", encoding="utf-8")) if partial_path else None
      for round_ in range(max_redraws + 1):
        if not todo:
          break
        # Never a batch larger than what is left: a few samples (the training job's periodic ones) or a few
        # re-draws would otherwise pay for a full padded batch.
        batch = min(batch_size, len(todo))
        devices = tuple(usable_devices(batch, self.devices))
        p_sample, n_dev = self._pmapped(devices), len(devices)
        if devices not in replicated:
          replicated[devices] = parallel.replicate(params, devices)
        bar = progress_bar(total=len(todo), desc=f"sample (round {round_})", disable=not progress)
        for start in range(0, len(todo), batch):
          idx = todo[start:start + batch]
          cond = None
          if conditions is not None:
            cond = np.zeros((batch,) + conditions.shape[1:], np.int32)
            cond[:len(idx)] = conditions[idx]
          inputs, fields = self.make_inputs(rng_np, batch, cond)  # Always: it advances the host draws.
          if (round_, start) in done_batches:
            batch_records, batch_empties = done_batches[(round_, start)]
          else:
            batch_key = jax.random.fold_in(jax.random.fold_in(key, round_), start)
            began = time.perf_counter()
            outputs = p_sample(replicated[devices], batch_key, parallel.shard_batch(inputs, n_dev))
            outputs = jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]),
                                   jax.device_get(outputs))
            self.batch_seconds.append(time.perf_counter() - began)
            self.batch_rows.append(batch)
            texts = self.decode(outputs, inputs)
            batch_records, batch_empties = [], 0
            for j, i in enumerate(idx):
              text = texts[j].strip()
              if text:
                batch_records.append({"index": i, "text": text, **fields[j], "round": round_})
              else:
                batch_empties += 1
            if partial:
              partial.write(json.dumps({"key": partial_key, "round": round_, "start": start,
                                        "records": batch_records, "empties": batch_empties},
                                       ensure_ascii=False) + "\n")
              partial.flush()
          empties += batch_empties
          for record in batch_records:
            results[record["index"]] = record
          bar.update(len(idx))
          if stop.received:
            raise signals.Interrupted(f"sampling was interrupted after {len(results)} of {num_samples} samples "
                                      "(progress saved)")
        bar.close()
        todo = [i for i in todo if i not in results]
    if todo:
      logging.warning("%d of %d samples were still empty after %d re-draws; they are written as empty text.",
                      len(todo), num_samples, max_redraws)
      for i in todo:
        results[i] = {"index": i, "text": "", "round": max_redraws}
    if empties and max_redraws:
      logging.info("%d empty decodes were re-drawn.", empties)
    self.last_empty_count = empties
    return [results[i] for i in range(num_samples)]


def progress_bar(**kwargs):
  """A tqdm bar that refreshes often on a terminal and once a minute into a redirected log (no spam)."""
  import sys  # pylint: disable=import-outside-toplevel
  interactive = sys.stderr.isatty()
  return tqdm.tqdm(mininterval=1.0 if interactive else 60.0, dynamic_ncols=interactive, **kwargs)


def _read_partial(path: pathlib.Path, key: str) -> dict:
  """{(round, start): (records, empties)} of the batches a previous run with the same key finished."""
  done = {}
  if not path.exists():
    return done
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      entry = json.loads(line)
    except ValueError:  # A torn last line from a crash mid-write.
      continue
    if entry.get("key") == key:
      done[(entry["round"], entry["start"])] = (entry["records"], entry["empties"])
  if done:
    logging.info("Resuming sampling: %d batches already done in %s.", len(done), path)
  return done


def write_samples(records: Sequence[dict], path: pathlib.Path, settings: dict) -> None:
  """Writes one JSON object per line (each record with `settings` added), atomically (temp file + rename)."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps({**record, **settings}, ensure_ascii=False) + "\n")
  os.replace(tmp, path)
