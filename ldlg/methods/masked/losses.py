"""The masked-diffusion training loss: the Rao-Blackwellized NELBO of MDLM as a weighted masked-LM loss.

For a sequence x of L tokens, with z_t drawn by masking each token independently with probability 1 - α_t:

  continuous time:  NELBO(x) = ∫_0^1 w(t) E_q [ Σ_{ℓ: z_t^ℓ = m} -log x_θ^ℓ(z_t)[x^ℓ] ] dt,
                    w(t) = -α'_t / (1-α_t)
  T steps:          NELBO_T(x) = Σ_{i=1}^T w_i E_q(z_{t_i}) [ same sum ],
                    t_i = i/T,   w_i = (α_{t_{i-1}} - α_{t_i}) / (1-α_{t_i})

(x_θ with SUBS: unmasked positions contribute log 1 = 0 exactly, so the sum may run over every position.)
Estimated with one (t, z_t) per example. Times are low-discrepancy: t_i = (u + i/B) mod 1 for the example of
global index i in a global batch of B, with u ~ U[0, 1) drawn from the step key and so the same on every device;
the B times then fall one in each bin [k/B, (k+1)/B). Continuous time uses t ∈ [t_min, 1] (t = t_min + (1-t_min)
t_raw, estimating ∫_{t_min}^1; MDLM's sampling_eps): the weight 1/t makes draws near 0 rare but huge, and the
part left out is about t_min of the total. The T-step loss maps t_raw to step ⌊t_raw T⌋ + 1, weighted by T.

Padding (sentence data). `pad_in_loss=True` (the default): pad positions are tokens of the modelled sequence,
masked and predicted like any other and counted in the NELBO, so the model learns where text ends and a sampler
gets lengths for free. The NELBO of the padded sequence bounds -log p(text) too (the padding is a function of the
text), so nothing is lost as a bound. `pad_in_loss=False`: pad positions are never masked, hidden from attention
and cost nothing; a sampler then needs the lengths. Either way the per-token NELBO divides by the number of *real*
tokens (batch["mask"]), not counting a `bos_id` token: those are the AR baseline's targets (text and </s>; it is
given <s>), so exp(NELBO per token) is an upper bound on the perplexity directly comparable with its perplexity.

Data parallel: every per-example draw is keyed on `example_index`; the loss on a device is its share
(Σ_local NELBO) / (global token count) × (number of devices), so the mean over devices is the global per-token
NELBO, and `lax.pmean` of the per-device gradients is the global gradient (pmap = single device).
"""
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from ldlg.engine.parallel import global_sum
from ldlg.methods.masked.logits_fn import LogitsFn
from ldlg.methods.masked.schedule import MaskSchedule
from ldlg.methods.masked.subs import subs_log_probs

LossFn = Callable[[Any, jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def antithetic_times(u: jax.Array, example_index: jax.Array, global_batch) -> jax.Array:
  """Low-discrepancy times t_i = (u + i / B) mod 1 in [0, 1).

  Args:
    u: [] uniform in [0, 1), shared by the whole global batch.
    example_index: [b] int global indices i in [0, B).
    global_batch: B (int or traced scalar).

  Returns:
    [b] float32; over the whole global batch, exactly one time in each [k/B, (k+1)/B).
  """
  t = u + example_index.astype(jnp.float32) / jnp.asarray(global_batch, jnp.float32)
  return jnp.mod(t, 1.0)


def _check_batch(batch: Mapping[str, jax.Array], num_classes: int) -> None:
  for key in ("input_ids", "mask"):
    if key not in batch:
      raise ValueError(f"the batch must hold {key!r}; got keys {sorted(batch)}")
  ids, mask = batch["input_ids"], batch["mask"]
  if ids.ndim != 2:
    raise ValueError(f"batch['input_ids'] must be [b, L] int, got shape {ids.shape}")
  if mask.shape != ids.shape or mask.dtype != jnp.bool_:
    raise ValueError(f"batch['mask'] must be bool [b, L] = {ids.shape} (True = real token), got "
                     f"{mask.dtype} {mask.shape}")
  if num_classes > 0 and "label" not in batch:
    raise ValueError(f"num_classes={num_classes} (class-conditional) but the batch has no 'label'; add the "
                     "labels or build the method with num_classes=0")


def nelbo_terms(logits_fn: LogitsFn, schedule: MaskSchedule, params: Any, rng: jax.Array,
                batch: Mapping[str, jax.Array], *, mask_id: int, num_timesteps: int = 0, t_min: float = 1e-3,
                pad_in_loss: bool = True, bos_id: Optional[int] = None, num_classes: int = 0,
                label_dropout: float = 0.0, train: bool = False) -> dict[str, jax.Array]:
  """One-sample NELBO estimate per example (the terms the loss and the evaluation sum).

  Args:
    logits_fn: the network (see `LogitsFn`).
    schedule: α_t.
    params: network parameters.
    rng: the step key, the same on every device.
    batch: {"input_ids" [b, L] int, "mask" [b, L] bool (True = real token), "label" [b] int (class-conditional),
      "example_index" [b] int global indices (default arange(b))}. Data must not contain the mask token.
    mask_id: the mask token's id.
    num_timesteps: 0 = continuous-time NELBO; T > 0 = the T-step NELBO.
    t_min: continuous time is drawn from [t_min, 1].
    pad_in_loss: see the module docstring.
    bos_id: a token not counted in the per-token denominator (the AR baseline is given it); None counts all.
    num_classes: C > 0 for a class-conditional model.
    label_dropout: probability of replacing an example's label by the null class C.
    train: dropout on.

  Returns:
    {"nelbo" [b] (nats per sequence), "num_tokens" [b] (tokens counted per sequence), "t" [b] (continuous
     time; i/T for the T-step loss), "num_masked" [b], "masked_nll" [b] (Σ -log x_θ over masked positions,
     unweighted), "nelbo_padding" [b] (the part of "nelbo" paid at padding positions: 0 unless pad_in_loss),
     "null_label" [b] bool (class-conditional only)}.
  """
  _check_batch(batch, num_classes)
  ids = batch["input_ids"].astype(jnp.int32)
  real = batch["mask"]
  b, length = ids.shape
  example_index = batch.get("example_index")
  if example_index is None:
    example_index = jnp.arange(b)
  global_batch = global_sum(jnp.asarray(b, jnp.float32))

  # Disjoint roots: the shared u, the per-example draws, the network's dropout. Each example draws its L masking
  # uniforms and its label-dropout coin in one call from fold_in(root, example_index): one random-bits program
  # (each one costs seconds of XLA compile time on CPU).
  u = jax.random.uniform(jax.random.fold_in(rng, 0), ())
  example_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(rng, 1), i))(example_index)
  draws = jax.vmap(lambda k: jax.random.uniform(k, (length + 1,)))(example_keys)  # [b, L + 1]
  # Dropout masks cannot be per example (one key per call); the first global index gives each device its own.
  k_drop = jax.random.fold_in(jax.random.fold_in(rng, 2), example_index[0])

  t_raw = antithetic_times(u, example_index, global_batch)
  if num_timesteps > 0:
    step = jnp.minimum(jnp.floor(t_raw * num_timesteps), num_timesteps - 1) + 1.0
    t = step / num_timesteps
    p_t, p_s = schedule.mask_prob(t), schedule.mask_prob((step - 1.0) / num_timesteps)
    weight = num_timesteps * (p_t - p_s) / p_t  # (α_s - α_t) / (1 - α_t); p_t > 0 for t >= 1/T.
  else:
    t = t_min + (1.0 - t_min) * t_raw
    weight = (1.0 - t_min) * schedule.weight(t)

  masked = draws[:, :length] < schedule.mask_prob(t)[:, None]
  if not pad_in_loss:
    masked = masked & real
  z_t = jnp.where(masked, mask_id, ids)
  key_mask = jnp.ones_like(real) if pad_in_loss else real

  out = {}
  class_id = None
  if num_classes > 0:
    drop = draws[:, length] < label_dropout
    class_id = jnp.where(drop, num_classes, batch["label"].astype(jnp.int32))
    out["null_label"] = drop

  logits = logits_fn(params, z_t, t, key_mask, class_id, train, k_drop)
  log_probs = subs_log_probs(logits, z_t, mask_id)
  # Carry-over makes the unmasked positions' terms exactly log 1 = 0, so no extra masking is needed here.
  nll = -jnp.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]  # [b, L]
  masked_nll = jnp.sum(nll, axis=1)
  counted = real if bos_id is None else real & (ids != bos_id)
  out.update(nelbo=weight * masked_nll, num_tokens=jnp.sum(counted, axis=1).astype(jnp.float32), t=t,
             num_masked=jnp.sum(masked, axis=1).astype(jnp.float32), masked_nll=masked_nll,
             nelbo_padding=weight * jnp.sum(jnp.where(real, 0.0, nll), axis=1))
  return out


def _share(local_sum: jax.Array, global_count: jax.Array) -> jax.Array:
  """This device's share of a global ratio: local_sum / global_count × num_devices (mean over devices = ratio)."""
  return local_sum / jnp.maximum(global_count, 1.0) * global_sum(jnp.float32(1.0))


def make_loss_fn(logits_fn: LogitsFn, schedule: MaskSchedule, *, mask_id: int, num_timesteps: int = 0,
                 t_min: float = 1e-3, pad_in_loss: bool = True, bos_id: Optional[int] = None,
                 num_classes: int = 0, label_dropout: float = 0.1, train: bool = True) -> LossFn:
  """The per-token NELBO as a training loss (see `nelbo_terms` for the arguments).

  Returns:
    loss_fn(params, rng, batch) -> (loss, metrics), jit-able, where loss is this device's share of the global
    per-token NELBO (Σ NELBO / Σ tokens over the global batch), and metrics (each a share, so `lax.pmean` gives
    the global value) are {"loss", "nelbo_per_token" (= loss), "masked_ce" (mean -log x_θ over masked
    positions, the unweighted masked-LM loss), "masked_frac" (over all positions), "t_mean",
    "null_label_frac" (class-conditional only)}.
  """
  if num_timesteps < 0:
    raise ValueError(f"num_timesteps must be 0 (continuous time) or a positive T, got {num_timesteps}")
  if not 0.0 <= t_min < 1.0:
    raise ValueError(f"t_min must be in [0, 1), got {t_min}")
  if not 0.0 <= label_dropout <= 1.0:
    raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
  if num_classes < 0:
    raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")

  def loss_fn(params: Any, rng: jax.Array, batch: Mapping[str, jax.Array]):
    terms = nelbo_terms(logits_fn, schedule, params, rng, batch, mask_id=mask_id, num_timesteps=num_timesteps,
                        t_min=t_min, pad_in_loss=pad_in_loss, bos_id=bos_id, num_classes=num_classes,
                        label_dropout=label_dropout, train=train)
    b, length = batch["input_ids"].shape
    num_examples = global_sum(jnp.float32(b))
    loss = _share(jnp.sum(terms["nelbo"]), global_sum(jnp.sum(terms["num_tokens"])))
    num_masked = jnp.sum(terms["num_masked"])
    metrics = {
        "loss": loss,
        "nelbo_per_token": loss,
        "masked_ce": _share(jax.lax.stop_gradient(jnp.sum(terms["masked_nll"])), global_sum(num_masked)),
        "masked_frac": _share(num_masked, num_examples * length),
        "t_mean": _share(jnp.sum(terms["t"]), num_examples),
    }
    if num_classes > 0:
      metrics["null_label_frac"] = _share(jnp.sum(terms["null_label"].astype(jnp.float32)), num_examples)
    return loss, metrics

  return loss_fn
