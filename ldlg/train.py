"""Training the denoiser on precomputed latents: `train_and_evaluate(config, workdir)`.

The train step is a pure function `(state, batch) -> (state, metrics)`, pmapped over the local devices with the
axis name "batch"; gradients are averaged with `lax.pmean`. Nothing random is carried between steps:
the step's key is `fold_in(seed_key, step)`, and the loss keys every example's noise, timestep and coins on its
global position in the batch (`example_index`), so the result does not depend on how the batch is split over
devices, and a resumed run continues bit for bit. Dropout, the only per-call randomness, folds in the first
global index of the device's share, which differs between devices.
"""

import functools
import signal
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ldlg.engine import checkpoints as checkpointing
from ldlg import from_config
from ldlg.engine import metric_writer
from ldlg.engine import train_state as train_state_lib
from ldlg.engine.workdir import Workdir

AXIS = "batch"


def train_step(state: train_state_lib.TrainState, batch: dict, *, loss_fn, base_rng: jax.Array,
               ema_decay: float, ema_warmup: bool):
  """One optimizer step on one device's share of the global batch (call under pmap with axis "batch").

  Args:
    state: the replicated train state.
    batch: this device's examples: latents [b, L, D] (normalized), mask [b, L] bool, example_index [b]
      (position in the global batch), and label [b] for class-conditional data.
  Returns:
    The new state and metrics averaged over devices (loss, grad_norm, lr-free scalars).
  """
  # Every device gets the same key; the loss keys each example on its global index (and dropout on the
  # device's first global index), so splitting a batch over devices changes nothing.
  step_rng = jax.random.fold_in(base_rng, state.step)
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, step_rng, batch)
  grads = jax.lax.pmean(grads, AXIS)
  metrics = jax.lax.pmean(metrics, AXIS)
  metrics["grad_norm"] = optax_global_norm(grads)
  new_state = state.apply_gradients(grads, ema_decay=ema_decay, ema_warmup=ema_warmup)
  return new_state, metrics


def replicate(tree, devices=None):
  """One copy per local device (leading axis = device), for pmap.

  Placed exactly as pmap places its outputs (a 1-D mesh named after the pmap axis), so the state that
  comes back from step 1 has the same sharding as the one that went in and step 2 does not recompile.
  """
  devices = list(devices or jax.local_devices())
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                        jax.sharding.PartitionSpec(AXIS))
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), sharding), tree)


def unreplicate(tree):
  """The first device's copy. (flax.jax_utils.unreplicate returns a 1-device tree unchanged, with the
  device axis still on, so it is not used here.)"""
  return jax.tree.map(lambda x: x[0], tree)


def optax_global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def make_p_train_step(config: ml_collections.ConfigDict, model, base_rng: jax.Array, *, devices=None):
  """The pmapped train step (over `devices`, default all local); the state is donated, updated in place."""
  loss_fn = from_config.build_loss_fn(config, model)
  step = functools.partial(train_step, loss_fn=loss_fn, base_rng=base_rng,
                           ema_decay=config.train.ema_decay, ema_warmup=config.train.ema_warmup)
  return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,), devices=devices)


class StopSignal:
  """Turns SIGTERM (preemption) into a flag the loop checks, so it saves a checkpoint before exiting."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping.")
    self.received = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def _check_finite(history: list[tuple[int, dict]], last_good: int | None, ckpt_dir) -> None:
  for step, metrics in history:
    if not np.isfinite(metrics["loss"]):
      raise FloatingPointError(
          f"the training loss became non-finite ({metrics['loss']}) at step {step}. Training stopped; the last "
          f"good checkpoint (step {last_good}) in {ckpt_dir} is intact. Lower --config.optim.lr, keep "
          "--config.optim.grad_clip on, or check the latents for NaN/inf.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: Workdir) -> train_state_lib.TrainState:
  """Trains the denoiser to `config.train.num_steps`, resuming from the latest checkpoint in the workdir.

  Returns:
    The final train state (unreplicated, on the host's first device).
  """
  store = from_config.open_latent_store(config, workdir, config.data.train_split)
  from_config.check_latents_match_model(config, store)
  num_local, num_global = jax.local_device_count(), jax.device_count()
  if config.train.batch_size % num_global:
    raise ValueError(
        f"config.train.batch_size={config.train.batch_size} is not divisible by the {num_global} devices; "
        f"use a multiple of {num_global}.")

  model = from_config.build_denoiser(config)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  params = from_config.init_denoiser_params(config, model, init_rng)
  tx = train_state_lib.make_optimizer(config.optim, config.train.num_steps)
  state = train_state_lib.TrainState.create(params, tx)

  ckpt = checkpointing.Checkpointer(workdir.checkpoint_dir, keep=config.train.keep_checkpoints)
  meta = {"config": config.to_dict(), "stats": from_config.latent_stats(store),
          "latents": from_config.latent_identity(store)}
  if ckpt.latest_step() is not None:
    saved, saved_meta = ckpt.restore(state.to_dict())
    state = state.from_dict(saved)
    if saved_meta.get("latents") != meta["latents"]:
      raise ValueError(f"the checkpoint in {ckpt.directory} was trained on other latents "
                       f"({saved_meta.get('latents')}) than {store.path} ({meta['latents']}); use a new workdir")
    logging.info("Resumed from step %d.", int(state.step))
  start_step = int(state.step)
  num_steps = config.train.num_steps
  if start_step >= num_steps:
    logging.info("Already trained to step %d (num_steps=%d).", start_step, num_steps)
    ckpt.close()
    return state

  p_train_step = make_p_train_step(config, model, train_rng)
  batches = store.batches(
      config.train.batch_size, num_local_devices=num_local, seed=config.seed, start_step=start_step,
      length_bucketed=config.data.length_bucketed, process_index=jax.process_index(),
      process_count=jax.process_count())
  is_primary = jax.process_index() == 0
  writer = (metric_writer.MetricWriter(workdir.metrics_file, workdir.tensorboard_dir) if is_primary else None)
  log_sampler = None
  if config.train.sample_every and is_primary:
    from ldlg import sample as sample_lib  # Loads the autoencoder: only when samples are logged.
    log_sampler = sample_lib.TextSampler.from_workdir(config, workdir, store=store)

  state = replicate(state)
  history, pending = [], []
  last_good = ckpt.latest_step()
  tokens, t_last = 0, time.perf_counter()
  bar = tqdm.tqdm(total=num_steps, initial=start_step, desc="train", disable=not is_primary,
                  dynamic_ncols=True)
  with StopSignal() as stop:
    for step in range(start_step, num_steps):
      batch = next(batches)
      tokens += int(batch["mask"].sum()) * jax.process_count()
      state, metrics = p_train_step(state, batch)
      pending.append((step + 1, metrics))
      done = step + 1 == num_steps
      if (step + 1) % config.train.log_every == 0 or done or stop.received:
        fetched = [(s, {k: float(v[0]) for k, v in jax.device_get(m).items()}) for s, m in pending]
        pending = []
        history = fetched
        _check_finite(history, last_good, ckpt.directory)
        elapsed = time.perf_counter() - t_last
        scalars = dict(fetched[-1][1])
        scalars["lr"] = float(train_state_lib.learning_rate_schedule(config.optim, num_steps)(step))
        scalars["steps_per_s"] = len(fetched) / elapsed
        scalars["latent_tokens_per_s"] = tokens / elapsed
        tokens, t_last = 0, time.perf_counter()
        if writer:
          writer.write_scalars(step + 1, scalars)
        bar.set_postfix(loss=f"{scalars['loss']:.4f}", sps=f"{scalars['steps_per_s']:.2f}")
      bar.update(1)
      if (step + 1) % config.train.ckpt_every == 0 or done or stop.received:
        if pending:  # Never checkpoint a state whose loss has not been checked.
          fetched = [(s, {k: float(v[0]) for k, v in jax.device_get(m).items()}) for s, m in pending]
          pending = []
          _check_finite(fetched, last_good, ckpt.directory)
        ckpt.save(step + 1, jax.device_get(unreplicate(state).to_dict()),
                  {**meta, "data_position": step + 1})
        last_good = step + 1
      if log_sampler and (step + 1) % config.train.sample_every == 0:
        texts = log_sampler.sample(unreplicate(state).ema_params,
                                   num_samples=config.train.num_log_samples, seed=step + 1)
        if writer:
          writer.write_texts(step + 1, {"samples": "\n".join(r["text"] for r in texts)})
        logging.info("Samples at step %d:\n%s", step + 1, "\n".join(r["text"] for r in texts))
      if stop.received:
        logging.warning("Stopped by SIGTERM after saving step %d.", step + 1)
        break
  bar.close()
  if writer:
    writer.close()
  ckpt.close()
  return unreplicate(state)
