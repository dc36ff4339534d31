"""The LD4LG training loss: denoising regression with self-conditioning and label dropout.

`make_loss_fn` returns a pure `loss_fn(params, rng, batch) -> (loss, metrics)`. Every random choice
that concerns one example (its timestep, its noise, its self-conditioning coin and its label-dropout
coin) is drawn from that example's own key `fold_in(fold_in(rng, 0), example_index[i])`. A data-parallel
step that hands each device the same `rng` and the examples' *global* indices therefore draws exactly
what a single device would draw for the whole batch; since the loss is an equal-weight mean over
examples, `lax.pmean` of the per-device losses (and gradients) equals the global ones.

Self-conditioning costs an extra forward pass (the estimate) whenever it is used. `self_condition_mode` says
how the coins are drawn and when that pass runs:
- "per_example" (default): one coin per example; the estimate pass runs for the whole batch every step
  (2 forward + 1 backward passes per step).
- "per_batch": one coin per step, shared by every example and every device (drawn from the step key alone, as
  the reference PyTorch code draws one per batch); when it says no, `lax.cond` skips the estimate pass
  (1.5 forward + 1 backward passes per step on average at probability 0.5). Each example is still
  self-conditioned with the configured probability, but the examples of a batch are no longer independent.
- "skip_if_unused": per-example coins exactly as "per_example" (same draws, same loss and gradients), but the
  estimate pass is skipped when no example of the *global* batch uses it (the count is summed over devices,
  so every device takes the same branch). Only pays off when `batch × self_condition_prob` is small: at batch
  64 and probability 0.5 a skip happens once in 2^64 steps.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from ldlg.engine import parallel
from ldlg.methods.base import per_example_keys
from ldlg.methods.gaussian import condition
from ldlg.methods.gaussian import parameterization as param_lib
from ldlg.methods.gaussian.denoise_fn import DenoiseFn
from ldlg.methods.gaussian.schedules import Schedule, q_sample

LOSS_TYPES = ("l2", "l1")
SELF_CONDITION_MODES = ("per_example", "per_batch", "skip_if_unused")
LossFn = Callable[[Any, jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def masked_mean_per_example(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of values [B, L, D] over valid positions and all channels, per example -> [B].

  `jnp.where` (not multiplication) keeps non-finite values at padded positions out of the result and
  out of the gradient. An example with no valid position gets 0.
  """
  valid = mask[..., None]
  total = jnp.sum(jnp.where(valid, values, 0.0), axis=(1, 2))
  count = jnp.maximum(jnp.sum(mask, axis=1), 1) * values.shape[-1]
  return total / count


def _check_batch(batch: Mapping[str, jax.Array]) -> None:
  for key in ("latents", "mask"):
    if key not in batch:
      raise ValueError(f"the batch must hold {key!r}; got keys {sorted(batch)}")
  latents, mask = batch["latents"], batch["mask"]
  if latents.ndim != 3:
    raise ValueError(f"batch['latents'] must be [B, L, D], got shape {latents.shape}")
  if mask.shape != latents.shape[:2] or mask.dtype != jnp.bool_:
    raise ValueError(f"batch['mask'] must be bool [B, L] = {latents.shape[:2]} (True = valid), got "
                     f"{mask.dtype} {mask.shape}")


def make_loss_fn(denoise_fn: DenoiseFn, schedule: Schedule, *, objective: str = "x0",
                 loss_type: str = "l2", self_condition_prob: float = 0.5, label_dropout: float = 0.1,
                 num_classes: int = 0, train: bool = True,
                 self_condition_mode: str = "per_example", source_conditioned: bool = False,
                 source_dropout: float = 0.1) -> LossFn:
  """Builds the diffusion training loss.

  Args:
    denoise_fn: the network as a `DenoiseFn`; its output is in `objective`'s parameterization.
    schedule: the noise schedule (T steps; t is drawn uniformly from [0, T)).
    objective: "x0" (regress x0, the paper's choice), "eps" or "v".
    loss_type: "l2" (squared error, default) or "l1" (absolute error).
    self_condition_prob: probability that an example is trained with a self-conditioning estimate.
      0 skips the first (estimate) pass entirely.
    label_dropout: probability that an example's label is replaced by the null class `num_classes`.
    num_classes: C > 0 for a class-conditional model (the batch must then hold "label"); 0 for an
      unconditional one (any "label" in the batch is ignored; with no source either, cond=None is passed).
    train: passed to `denoise_fn` (dropout on/off); False for an evaluation loss.
    self_condition_mode: "per_example", "per_batch" or "skip_if_unused" (see the module docstring).
    source_conditioned: the model reads a source encoding (sequence-to-sequence LD4LG): the batch must then
      hold "source" [B, S, Ds] and "source_mask" [B, S].
    source_dropout: probability that an example's source is replaced by the null source (all of its
      source_mask False), which trains the unconditional model that classifier-free guidance needs.

  Returns:
    loss_fn(params, rng, batch) -> (loss, metrics), jit-able, where
      params: the network parameters;
      rng: a PRNG key (give every device of a data-parallel step the same key);
      batch: {"latents": [B, L, D] float, "mask": [B, L] bool, "label": [B] int (conditional models),
        "source" [B, S, Ds] and "source_mask" [B, S] (source-conditioned models),
        "example_index": [B] int global indices (default arange(B))};
      loss: scalar, per-element L2/L1 on the objective's target averaged over each example's valid
        positions and channels, then averaged over examples with equal weight;
      metrics: {"loss", "t_mean" (mean timestep), "self_cond_frac", "x0_mse" (squared error of the x0
        estimate, comparable across objectives), "null_label_frac" / "null_source_frac" (conditional models
        only)}, each a
        batch mean, so `lax.pmean` of per-device metrics gives the global values.
  """
  param_lib.check_objective(objective)
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
  if not 0.0 <= self_condition_prob <= 1.0:
    raise ValueError(f"self_condition_prob must be in [0, 1], got {self_condition_prob}")
  if not 0.0 <= label_dropout <= 1.0:
    raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
  if not 0.0 <= source_dropout <= 1.0:
    raise ValueError(f"source_dropout must be in [0, 1], got {source_dropout}")
  if num_classes < 0:
    raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")
  if self_condition_mode not in SELF_CONDITION_MODES:
    raise ValueError(f"unknown self_condition_mode {self_condition_mode!r}; choose one of {SELF_CONDITION_MODES}")
  num_timesteps = schedule.num_timesteps

  def loss_fn(params: Any, rng: jax.Array, batch: Mapping[str, jax.Array]):
    _check_batch(batch)
    x0 = batch["latents"].astype(jnp.float32)
    mask = batch["mask"]
    batch_size = x0.shape[0]
    example_index = batch.get("example_index")
    if example_index is None:
      example_index = jnp.arange(batch_size)
    # Stream 0: per-example draws; stream 1: the network's dropout. Disjoint roots, so no example key
    # can coincide with a dropout key.
    k_t, k_noise, k_sc, k_label = per_example_keys(jax.random.fold_in(rng, 0), example_index, 4)
    # Dropout cannot be per example (one key per network call); folding in the first global index gives
    # each device of a pmapped step its own dropout masks.
    k_drop1, k_drop2 = jax.random.split(
        jax.random.fold_in(jax.random.fold_in(rng, 1), example_index[0]))

    t = jax.vmap(lambda k: jax.random.randint(k, (), 0, num_timesteps))(k_t)
    noise = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], jnp.float32))(k_noise)
    z_t = q_sample(schedule, x0, t, noise)
    alpha_bar = schedule.alphas_cumprod[t]

    metrics = {}
    cond, dropped = {}, {}
    if num_classes > 0:
      if "label" not in batch:
        raise ValueError(f"num_classes={num_classes} (class-conditional) but the batch has no 'label'; "
                         "add labels to the batch or set num_classes=0 for an unconditional model")
      cond["class_id"] = batch["label"]
      dropped["class_id"] = jax.vmap(lambda k: jax.random.bernoulli(k, label_dropout))(k_label)
      metrics["null_label_frac"] = jnp.mean(dropped["class_id"].astype(jnp.float32))
    if source_conditioned:
      if "source" not in batch or "source_mask" not in batch:
        raise ValueError("the model reads a source (source-conditioned) but the batch has no 'source' / "
                         "'source_mask'; add the source encodings to the batch or build the model without one")
      cond.update(source=batch["source"], source_mask=batch["source_mask"])
      # A key derived from the label key, so adding a source leaves the label coins unchanged.
      k_source = jax.vmap(lambda k: jax.random.fold_in(k, 3))(k_label)
      dropped["source"] = jax.vmap(lambda k: jax.random.bernoulli(k, source_dropout))(k_source)
      metrics["null_source_frac"] = jnp.mean(dropped["source"].astype(jnp.float32))
    cond = condition.drop(cond, dropped, num_classes) if cond else None

    def estimate_pass(p):
      first = denoise_fn(p, z_t, t, mask, None, None, cond, train, k_drop1)
      # The estimate is an input, not a path for gradients (paper Sec. 4.2).
      return jax.lax.stop_gradient(param_lib.x0_from_output(objective, z_t, first, alpha_bar))

    def estimate_pass_if(run):
      # Only the estimate pass sits under lax.cond, on stop_gradient(params), so the cond is no part of the
      # differentiated program: a cond around a differentiated pass keeps both branches' residuals and costs
      # ~25% of a CPU step. Skipped, the estimate is zeros that no example reads (has_self_cond is False for
      # all), and the second pass then gives exactly what self_cond=None would.
      return jax.lax.cond(run, estimate_pass, lambda p: jnp.zeros_like(z_t), jax.lax.stop_gradient(params))

    if self_condition_prob == 0:
      use_sc = jnp.zeros((batch_size,), bool)
      output = denoise_fn(params, z_t, t, mask, None, None, cond, train, k_drop2)
    else:
      if self_condition_mode == "per_batch":
        # Stream 2 of the step key: the same coin on every device and for every example.
        coin = jax.random.bernoulli(jax.random.fold_in(rng, 2), self_condition_prob)
        use_sc = jnp.broadcast_to(coin, (batch_size,))
        estimate = estimate_pass_if(coin)
      else:
        use_sc = jax.vmap(lambda k: jax.random.bernoulli(k, self_condition_prob))(k_sc)
        if self_condition_mode == "skip_if_unused":
          # Summed over devices, so every device of a pmapped step takes the same branch.
          estimate = estimate_pass_if(parallel.global_sum(jnp.sum(use_sc.astype(jnp.int32))) > 0)
        else:
          estimate = estimate_pass(params)
      output = denoise_fn(params, z_t, t, mask, estimate, use_sc, cond, train, k_drop2)

    target = param_lib.target_for_objective(objective, x0, noise, alpha_bar)
    err = output.astype(jnp.float32) - target
    per_elem = jnp.square(err) if loss_type == "l2" else jnp.abs(err)
    loss = jnp.mean(masked_mean_per_example(per_elem, mask))

    x0_hat = param_lib.x0_from_output(objective, z_t, output.astype(jnp.float32), alpha_bar)
    metrics.update(
        loss=loss,
        t_mean=jnp.mean(t.astype(jnp.float32)),
        self_cond_frac=jnp.mean(use_sc.astype(jnp.float32)),
        x0_mse=jnp.mean(masked_mean_per_example(jnp.square(jax.lax.stop_gradient(x0_hat) - x0), mask)),
    )
    return loss, metrics

  return loss_fn


def loss_fn_from_config(denoise_fn: DenoiseFn, schedule: Schedule, diffusion_cfg: Any, *,
                        num_classes: int = 0, train: bool = True, source_conditioned: bool = False,
                        self_condition_mode: str = "per_example") -> LossFn:
  """The one place a run builds its loss: from `config.diffusion`.

  Reads `objective` ("x0"), `loss_type` ("l2"), `self_condition_prob` (0.5), `self_condition_mode`
  ("per_example"), `label_dropout` (0.1) and `source_dropout` (0.1); a missing field takes the default in
  brackets.

  Args:
    denoise_fn: the network as a `DenoiseFn`.
    schedule: the run's schedule (`schedule_from_config`).
    diffusion_cfg: a ConfigDict (or any object with those attributes).
    num_classes: the model's number of classes (0 = unconditional).
    train: dropout on (training loss) or off (evaluation loss).
    source_conditioned: the model reads a source encoding (config.model.source_dim > 0).

  Returns:
    The loss function of `make_loss_fn`.
  """
  get = lambda field, default: getattr(diffusion_cfg, field, default)
  return make_loss_fn(denoise_fn, schedule, objective=get("objective", "x0"),
                      loss_type=get("loss_type", "l2"),
                      self_condition_prob=float(get("self_condition_prob", 0.5)),
                      label_dropout=float(get("label_dropout", 0.1)), num_classes=int(num_classes),
                      train=train, self_condition_mode=get("self_condition_mode", "per_example"),
                      source_conditioned=source_conditioned, source_dropout=float(get("source_dropout", 0.1)))
