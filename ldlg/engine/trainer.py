"""The one training loop of the project: the denoiser, the autoregressive baseline and BART pretraining all use it.

`train(job, run)` trains `job.loss_fn` from `job.init_params` to `run.num_steps` (or a wall-time cap), resuming
from the newest intact checkpoint in `run.checkpoint_dir`:

- the step is a pure function `(state, batch) -> (state, metrics)`, pmapped over the local devices with the axis
  name `parallel.AXIS`, the state donated; gradients and metrics are averaged with `lax.pmean`;
- nothing random is carried: step s's key is `fold_in(job.rng, s)`, and a method keys every per-example draw on
  the example's global index, so a resumed run continues bit for bit and pmap = one device;
- host batches come from `job.batches(start_step)` (a function of the step alone) and are produced by a
  background thread one or two steps ahead, off the critical path;
- checkpoints (Orbax) hold the state, the data position, the wall time so far and `run.meta` (what sampling
  needs: normalization statistics, length histogram, codec identity, config); a checkpoint is written only when
  every loss since the last one was finite and the parameters and optimizer state are finite;
- a stop signal (SIGTERM/SIGINT) saves a checkpoint after the current step and returns `stopped_by="signal"`;
- a loss that rises far above its running level warns, and stops the run after `run.divergence_patience`
  log windows in a row (0 = only warn); a non-finite loss stops it at once, naming the last good checkpoint;
- the metric log (`metrics.jsonl`, TensorBoard) is trimmed to the restored step on resume, so a crash between
  a log line and the next checkpoint never leaves the same steps twice.
"""

import dataclasses
import json
import math
import pathlib
import queue
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm

from ldlg.engine import checkpoints as checkpoints_lib
from ldlg.engine import metric_writer
from ldlg.engine import parallel
from ldlg.engine import signals
from ldlg.engine import train_state as train_state_lib

Hook = Callable[[int, Callable[[], train_state_lib.TrainState]], None]


@dataclasses.dataclass
class TrainJob:
  """What to train.

  Attributes:
    init_params: rng -> initial parameters.
    loss_fn: pure (params, rng, batch) -> (loss, metrics) on one device's share (see ldlg.methods.base).
    batches: start_step -> endless iterator of host batches shaped [num_local_devices, b, ...]; step k's batch
      must depend only on k (and the seed), so a resumed run reads what an uninterrupted one would.
    optim: the optimizer section (ldlg.engine.train_state.make_optimizer).
    init_rng: key of the initial parameters.
    rng: base key of the steps (step s uses fold_in(rng, s)).
    ema_decay: EMA decay of the parameters, or None to keep no EMA copy.
    ema_warmup: min(decay, (1 + t) / (10 + t)) early on (or 1 - (1 + t)^-ema_power with ema_power > 0).
    init_method_state: () -> the method's own training state (see TrainState.method_state), or None. With it,
      `loss_fn` is (params, rng, batch, method_state) -> (loss, (metrics, new_method_state)), and the new state
      must be the same on every device (a method gathers what it needs over `parallel.AXIS`).
  """
  init_params: Callable[[jax.Array], Any]
  loss_fn: Callable[..., Any]
  batches: Callable[[int], Iterator[dict]]
  optim: ml_collections.ConfigDict
  init_rng: jax.Array
  rng: jax.Array
  ema_decay: float | None = None
  ema_warmup: bool = True
  ema_power: float = 0.0
  init_method_state: Callable[[], Any] | None = None


@dataclasses.dataclass
class TrainRun:
  """Where and how long to train.

  Attributes:
    directory: output folder: checkpoints/, metrics.jsonl, tb/.
    num_steps: step budget (the learning-rate schedule decays over it).
    max_seconds: wall-time cap summed over resumes (compilation included); 0 = none.
    log_every, ckpt_every: intervals in steps.
    keep_checkpoints: how many checkpoints Orbax keeps.
    meta: JSON saved beside every checkpoint (what a sampler needs without the training data).
    check_meta: called with a restored checkpoint's meta before resuming; raises if it belongs elsewhere.
    divergence_factor: a log window whose mean loss exceeds this many times the running level warns.
    divergence_patience: stop after this many such windows in a row (0 = warn only).
    hooks: (every, fn(step, get_state)) called after steps that are multiples of `every`.
    desc: the progress bar's label.
    stop_at: stop (with a checkpoint) after this step, as a preemption would (tests); None: run to num_steps.
    devices: devices to pmap over (default all local).
    is_primary: whether this process writes logs and checkpoints' JSON (process 0).
  """
  directory: pathlib.Path
  num_steps: int
  max_seconds: float = 0.0
  log_every: int = 100
  ckpt_every: int = 1000
  keep_checkpoints: int = 3
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  check_meta: Callable[[dict], None] | None = None
  divergence_factor: float = 100.0
  divergence_patience: int = 0
  hooks: Sequence[tuple[int, Hook]] = ()
  desc: str = "train"
  stop_at: int | None = None
  devices: Sequence[jax.Device] | None = None
  is_primary: bool = True

  @property
  def checkpoint_dir(self) -> pathlib.Path:
    return pathlib.Path(self.directory) / "checkpoints"

  @property
  def metrics_file(self) -> pathlib.Path:
    return pathlib.Path(self.directory) / "metrics.jsonl"

  @property
  def tensorboard_dir(self) -> pathlib.Path:
    return pathlib.Path(self.directory) / "tb"


@dataclasses.dataclass
class TrainResult:
  """What a call of `train` did.

  Attributes:
    state: the final train state (unreplicated, host arrays not fetched).
    step: the step reached.
    resumed_from: the step the call started at (0 = fresh).
    stopped_by: "num_steps", "max_seconds", "signal", "divergence" or "stop_at".
    seconds: wall time over all sessions of this run.
    final_loss: mean training loss of the last log window (NaN if none was logged this call).
    steps_per_s: this call's steps per second (compilation included).
  """
  state: train_state_lib.TrainState
  step: int
  resumed_from: int
  stopped_by: str
  seconds: float
  final_loss: float
  steps_per_s: float


def train_step(state: train_state_lib.TrainState, batch: dict, *, loss_fn, base_rng: jax.Array,
               ema_decay: float | None, ema_warmup: bool, ema_power: float = 0.0):
  """One optimizer step on one device's share of the global batch (call under pmap with axis parallel.AXIS).

  Returns:
    The new state and the metrics averaged over devices, with grad_norm and param_norm (inf or NaN when any
    parameter is: the cheap finiteness check of the update itself, not only of the loss).
  """
  # Every device gets the same key; the loss keys each example on its global index, so splitting a batch over
  # devices changes nothing.
  step_rng = jax.random.fold_in(base_rng, state.step)
  if state.method_state is None:
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, step_rng, batch)
  else:  # A stateful loss (TrainJob.init_method_state): its new state is already the same on every device.
    (_, (metrics, method_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, step_rng, batch, state.method_state)
    state = state.replace(method_state=method_state)
  grads = jax.lax.pmean(grads, parallel.AXIS)
  metrics = jax.lax.pmean(metrics, parallel.AXIS)
  metrics["grad_norm"] = parallel.global_norm(grads)
  new_state = state.apply_gradients(grads, ema_decay=ema_decay, ema_warmup=ema_warmup, ema_power=ema_power)
  metrics["param_norm"] = parallel.global_norm(new_state.params)
  return new_state, metrics


def make_p_train_step(job: TrainJob, devices=None):
  """The pmapped train step over `devices` (default all local); the state is donated, updated in place."""
  import functools
  step = functools.partial(train_step, loss_fn=job.loss_fn, base_rng=job.rng, ema_decay=job.ema_decay,
                           ema_warmup=job.ema_warmup, ema_power=job.ema_power)
  return jax.pmap(step, axis_name=parallel.AXIS, donate_argnums=(0,), devices=devices)


class Prefetcher:
  """Runs a batch iterator in a background thread, `depth` batches ahead (host gather and normalization
  overlap the device step). Batches come out in order; an exception in the producer re-raises in `next`."""

  def __init__(self, iterator: Iterator[dict], depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, args=(iterator,), daemon=True)
    self._thread.start()

  def _produce(self, iterator):
    try:
      for item in iterator:
        while not self._stop.is_set():
          try:
            self._queue.put((item, None), timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
    except Exception as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      self._queue.put((None, e))

  def __next__(self) -> dict:
    item, error = self._queue.get()
    if error is not None:
      raise error
    return item

  def close(self):
    self._stop.set()


def trim_metric_log(path: pathlib.Path, last_step: int) -> None:
  """Drops metric lines past the restored step (written after the last checkpoint, before a crash)."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text(encoding="utf-8").splitlines():
    if not line.strip():
      continue
    try:
      if json.loads(line)["step"] <= last_step:
        kept.append(line)
    except (ValueError, KeyError):  # A torn last line from a crash mid-write.
      continue
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(l + "\n" for l in kept), encoding="utf-8")
  tmp.replace(path)


class _Divergence:
  """Tracks a running level of the loss (EMA of log-window means) and counts windows far above it."""

  def __init__(self, factor: float, patience: int):
    self.factor, self.patience = factor, patience
    self.level = None
    self.strikes = 0

  def update(self, loss: float, step: int) -> bool:
    """Returns True when the run should stop."""
    if self.level is not None and self.factor > 0 and loss > self.factor * max(self.level, 1e-12):
      self.strikes += 1
      logging.warning("The training loss %.4g at step %d is %.0fx its running level %.4g: the run may be "
                      "diverging (lower the learning rate?)%s.", loss, step, loss / max(self.level, 1e-12),
                      self.level, f"; stopping after {self.patience - self.strikes} more such log windows"
                      if self.patience else "")
      return bool(self.patience) and self.strikes >= self.patience
    self.strikes = 0
    self.level = loss if self.level is None else 0.9 * self.level + 0.1 * loss
    return False


def _fetch(pending: list[tuple[int, Any]]) -> list[tuple[int, dict[str, float]]]:
  return [(s, {k: float(np.asarray(v)[0]) for k, v in m.items()}) for s, m in jax.device_get(pending)]


def train(job: TrainJob, run: TrainRun) -> TrainResult:
  """Trains to `run.num_steps` (or the wall-time cap, or a stop signal), resuming from the newest intact
  checkpoint; returns what happened (the caller decides what a signal means for its pipeline)."""
  devices = list(run.devices or jax.local_devices())
  tx = train_state_lib.make_optimizer(job.optim, run.num_steps)
  params = job.init_params(job.init_rng)
  state = train_state_lib.TrainState.create(
      params, tx, ema=job.ema_decay is not None,
      method_state=job.init_method_state() if job.init_method_state else None)
  ckpt = checkpoints_lib.Checkpointer(run.checkpoint_dir, keep=run.keep_checkpoints)
  seconds_before = 0.0
  try:
    if ckpt.latest_step() is not None:
      saved, saved_meta, saved_step = ckpt.restore_latest_intact(state.to_dict())
      if run.check_meta:
        run.check_meta(saved_meta)
      state = state.from_dict(saved)
      seconds_before = float(saved_meta.get("seconds", 0.0))
      if run.is_primary:
        trim_metric_log(run.metrics_file, saved_step)
      logging.info("Resumed from step %d (%s).", saved_step, run.desc)
    start_step = int(state.step)
    if start_step >= run.num_steps:
      logging.info("%s: already trained to step %d (num_steps=%d).", run.desc, start_step, run.num_steps)
      return TrainResult(state, start_step, start_step, "num_steps", seconds_before, math.nan, 0.0)
    return _loop(job, run, state, ckpt, devices, start_step, seconds_before)
  finally:
    ckpt.close()


def _loop(job, run, state, ckpt, devices, start_step, seconds_before) -> TrainResult:
  # Without explicit devices pmap spans every device of every process (a multi-host job's collectives reach
  # all hosts); naming the local devices would confine the gradient mean to this process.
  p_step = make_p_train_step(job, list(run.devices) if run.devices else None)
  schedule = train_state_lib.learning_rate_schedule(job.optim, run.num_steps)
  writer = metric_writer.MetricWriter(run.metrics_file, run.tensorboard_dir) if run.is_primary else None
  batches = None
  divergence = _Divergence(run.divergence_factor, run.divergence_patience)
  state = parallel.replicate(state, devices)
  pending: list[tuple[int, Any]] = []
  last_good = ckpt.latest_step() if start_step else None
  final_loss, stopped_by = math.nan, None
  t_start = t_log = time.perf_counter()
  elapsed = lambda: seconds_before + time.perf_counter() - t_start

  def check(fetched):
    for s, m in fetched:
      if not (math.isfinite(m["loss"]) and math.isfinite(m["param_norm"])):
        what = "loss" if not math.isfinite(m["loss"]) else "parameters"
        raise FloatingPointError(
            f"{run.desc}: the {what} became non-finite (loss {m['loss']}, parameter norm {m['param_norm']}) at "
            f"step {s}. Training stopped; the last good checkpoint (step {last_good}) in {ckpt.directory} is "
            "intact. Lower the learning rate, keep gradient clipping on, or check the data for NaN/inf.")

  def save(step):
    nonlocal last_good
    host_state = jax.device_get(parallel.unreplicate(state).to_dict())
    if not checkpoints_lib.all_finite({"params": host_state["params"], "opt_state": host_state["opt_state"]}):
      raise FloatingPointError(
          f"{run.desc}: the parameters or optimizer state hold NaN/inf at step {step}; not saved. The last good "
          f"checkpoint (step {last_good}) in {ckpt.directory} is intact. Lower the learning rate.")
    ckpt.save(step, host_state, {**run.meta, "data_position": step, "seconds": elapsed()})
    last_good = step

  bar = tqdm.tqdm(total=run.num_steps, initial=start_step, desc=run.desc, disable=not run.is_primary,
                  dynamic_ncols=True, mininterval=1.0)
  step = start_step
  try:
    with signals.StopSignal() as stop:
      # Started inside the handler's scope: a stop signal while the first batches are built is caught too.
      batches = Prefetcher(job.batches(start_step))
      while True:
        if step >= run.num_steps:
          stopped_by = "num_steps"
          break
        if run.stop_at is not None and step >= run.stop_at:
          stopped_by = "stop_at"
          break
        if run.max_seconds and elapsed() >= run.max_seconds:
          stopped_by = "max_seconds"
          break
        state, metrics = p_step(state, next(batches))
        step += 1
        pending.append((step, metrics))
        if run.max_seconds:  # Otherwise the host runs ahead of the device and the clock under-counts.
          jax.block_until_ready(metrics["loss"])
        bar.update(1)
        out_of_time = bool(run.max_seconds) and elapsed() >= run.max_seconds
        # Read the flag once per step: a signal that lands after this line (say, while the log line is written)
        # is acted on after the next step, never by a stop without the save this step decided to skip.
        signalled = stop.received
        at_end = step == run.num_steps or signalled or step == run.stop_at or out_of_time
        if step % run.log_every == 0 or at_end or step % run.ckpt_every == 0:
          fetched = _fetch(pending)
          pending = []
          check(fetched)  # Never log as fine, nor checkpoint, a state whose loss has not been checked.
          now = time.perf_counter()
          final_loss = float(np.mean([m["loss"] for _, m in fetched]))
          # The log holds the last step's metrics (not the window's mean, which depends on where a previous
          # session stopped), so a resumed run's log equals an uninterrupted one's.
          scalars = dict(fetched[-1][1])
          scalars.update(lr=float(schedule(step - 1)))
          timing = {"steps_per_s": len(fetched) / (now - t_log), "seconds": elapsed()}
          t_log = now
          if writer:  # The JSONL log holds only what the computation determines: a resumed run's log equals
            writer.write_scalars(step, scalars)  # an uninterrupted run's; timings go to TensorBoard.
            writer.write_tensorboard(step, timing)
          bar.set_postfix(loss=f"{final_loss:.4f}", sps=f"{timing['steps_per_s']:.2f}")
          if divergence.update(final_loss, step):
            stopped_by = "divergence"
        if step % run.ckpt_every == 0 or at_end:  # Not on divergence: that state is not a good one.
          save(step)
        for every, hook in run.hooks:
          if every and step % every == 0:
            hook(step, lambda: parallel.unreplicate(state))
        if out_of_time and not stopped_by:
          stopped_by = "max_seconds"
        if signalled:
          stopped_by = "signal"
          logging.warning("%s: stopped by %s after saving step %d; re-run the same command to resume.",
                          run.desc, stop.signal_name, step)
        if stopped_by:
          break
    if stopped_by == "max_seconds" and last_good != step:  # Out of time before any step of this session.
      save(step)
  finally:
    if batches is not None:
      batches.close()
    bar.close()
    if writer:
      writer.close()
  if stopped_by == "divergence":
    logging.error("%s: stopped at step %d: the loss stayed above %gx its running level for %d log windows.",
                  run.desc, step, run.divergence_factor, run.divergence_patience)
  seconds = elapsed()
  return TrainResult(parallel.unreplicate(state), step, start_step, stopped_by, seconds, final_loss,
                     (step - start_step) / max(time.perf_counter() - t_start, 1e-9))
