"""DiffuSeq's training objective: partial noising of [source ; target] embeddings, x0 regression, rounding.

One example is one sequence of token ids `[w_x ; sep ; w_y ; pad ...]` with `source_mask` True on the source
and separator. With `EMB` the learned embedding (trained jointly, tied to the rounding softmax):

  x_src = EMB(w_x)                                  the source part, always clean
  y0    = EMB(w_y) + sqrt(1 - ᾱ_0) ε'               the target's x0 (a little noise, as DiffuSeq's x_start)
  z_t   = [x_src ; sqrt(ᾱ_t) y0 + sqrt(1 - ᾱ_t) ε]  partial noising: only target positions are noised
  ŷ0    = f_θ(z_t, t)

  L = mean_tgt ||ŷ0 - y0||²           (at t = 0 the target is the clean EMB(w_y), as DiffuSeq's t0 term)
    + mean_tgt ||sqrt(ᾱ_{T-1}) y0||²  (the prior term at the last step: keeps the embedding norms in check)
    + mean_tgt -log softmax(y0 · EMBᵀ)[w_y]   (rounding NLL, tied to the embedding)

where mean_tgt is the mean over an example's target positions (and channels for the squared terms), and
the batch loss is the equal-weight mean over examples of w_i L_i (w_i = 1, or the importance weight
1 / (T p_t) when the batch carries "t_weight"; see `importance.py`).

Differences from the reference DiffuSeq code, and why:
- Source positions are bit-identical to EMB(w_x) in z_t (the reference adds the small ε' noise to the source
  too): the sampler anchors the source to the clean embedding, so training sees what sampling sees.
- All three terms are averaged over target positions only (the reference's squared terms average over the
  whole sequence); the network's output at source positions is never used.
- Padding: with `learn_padding` (the default, as DiffuSeq) the target region is every non-source position,
  padding included, and the pad token is a target like any other: the model learns where the text ends,
  and sampling needs no length. `mask` then only decides which ids are replaced by `pad_id` (ids at
  positions with mask False are ignored). With learn_padding=False the loss and the attention see only
  positions with mask True, and sampling must be given the target lengths.

Randomness is keyed per example on the global `example_index` (t, ε, ε'), so a step split over devices
equals the single-device step; dropout has one key per call, derived from the device's first example.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from ldlg.methods.base import per_example_keys
from ldlg.methods.gaussian.schedules import Schedule, broadcast_to_rank, q_sample
from ldlg.methods.seq2seq.network import Seq2SeqDenoiser

BATCH_FIELDS = ("input_ids", "source_mask", "mask")
PerExampleLossFn = Callable[[Any, jax.Array, Mapping[str, jax.Array]],
                            tuple[jax.Array, dict[str, jax.Array], jax.Array, jax.Array]]


def positions(source_mask: jax.Array, mask: jax.Array, learn_padding: bool) -> tuple[jax.Array, jax.Array]:
  """(active [B, L], target [B, L]) bool: positions in play, and the non-source ones among them."""
  active = jnp.ones_like(mask) if learn_padding else mask
  return active, active & ~source_mask


def partial_q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array,
                     source_mask: jax.Array, active: jax.Array | None = None) -> jax.Array:
  """z_t = [x0_src ; sqrt(ᾱ_t) x0_tgt + sqrt(1 - ᾱ_t) ε]: only non-source positions are noised.

  Args:
    schedule: the noise schedule.
    x0: [B, L, d] the clean sequence (source embeddings, target x0).
    t: [B] int timesteps.
    noise: [B, L, d] standard normal ε.
    source_mask: [B, L] bool, True on source positions (copied from x0 exactly, not recomputed).
    active: [B, L] bool positions in play (None = all); inactive non-source positions are 0.

  Returns:
    z_t [B, L, d], with z_t == x0 bit for bit at source positions.
  """
  noisy = q_sample(schedule, x0, t, noise)
  if active is not None:
    noisy = jnp.where(active[..., None], noisy, 0.0)
  return jnp.where(source_mask[..., None], x0, noisy)


def masked_mean(values: jax.Array, where: jax.Array) -> jax.Array:
  """Per-example mean of values [B, L] or [B, L, D] over positions where [B, L] (and all channels) -> [B]."""
  if values.ndim == 3:
    count = jnp.maximum(jnp.sum(where, axis=1), 1) * values.shape[-1]
    return jnp.sum(jnp.where(where[..., None], values, 0.0), axis=(1, 2)) / count
  return jnp.sum(jnp.where(where, values, 0.0), axis=1) / jnp.maximum(jnp.sum(where, axis=1), 1)


def check_batch(batch: Mapping[str, jax.Array]) -> None:
  """Static checks of a seq2seq batch, with messages that say what to pass."""
  for key in BATCH_FIELDS:
    if key not in batch:
      raise ValueError(f"a DiffuSeq batch needs {BATCH_FIELDS}; {key!r} is missing (got {sorted(batch)})")
  shape = batch["input_ids"].shape
  if len(shape) != 2:
    raise ValueError(f"input_ids must be [B, L] ints, got shape {shape}")
  for key in ("source_mask", "mask"):
    if batch[key].shape != shape or batch[key].dtype != jnp.bool_:
      raise ValueError(f"batch[{key!r}] must be bool [B, L] = {shape}, got {batch[key].dtype} {batch[key].shape}")


def make_per_example_loss_fn(network: Seq2SeqDenoiser, schedule: Schedule, *, pad_id: int,
                             learn_padding: bool = True, embed_noise: bool = True,
                             train: bool = True) -> PerExampleLossFn:
  """Builds the DiffuSeq objective with its per-example terms exposed.

  Args:
    network: the `Seq2SeqDenoiser` (its embedding is the `word_embedding` parameter).
    schedule: the noise schedule (DiffuSeq: "sqrt", T = 2000).
    pad_id: the codec's pad token, placed at every position with mask False.
    learn_padding: train on the pad positions of the target region (see the module docstring).
    embed_noise: y0 = EMB(w_y) + sqrt(1-ᾱ_0) ε' (DiffuSeq); False: y0 = EMB(w_y).
    train: dropout on.

  Returns:
    fn(params, rng, batch) -> (loss [], metrics {name: []}, per_example_loss [b], t [b]), where batch is
    {"input_ids" [b, L] int, "source_mask" [b, L] bool, "mask" [b, L] bool, "example_index" [b] int
    (default arange(b)), optional "t" [b] int (else uniform per example) and "t_weight" [b] float (else 1)};
    per_example_loss is the unweighted L_i (what the importance sampler records); loss is mean_i w_i L_i.
  """
  num_timesteps = schedule.num_timesteps
  sigma0 = schedule.sqrt_one_minus_alphas_cumprod[0]
  sqrt_ab_last = schedule.sqrt_alphas_cumprod[num_timesteps - 1]

  def fn(params: Any, rng: jax.Array, batch: Mapping[str, jax.Array]):
    check_batch(batch)
    source_mask, mask = batch["source_mask"], batch["mask"]
    ids = jnp.where(mask, batch["input_ids"], pad_id).astype(jnp.int32)
    b = ids.shape[0]
    example_index = batch.get("example_index")
    if example_index is None:
      example_index = jnp.arange(b)
    active, target = positions(source_mask, mask, learn_padding)
    variables = {"params": params}

    k_t, k_noise, k_embed = per_example_keys(jax.random.fold_in(rng, 0), example_index, 3)
    k_drop = jax.random.fold_in(jax.random.fold_in(rng, 1), example_index[0])
    if "t" in batch:
      t = batch["t"].astype(jnp.int32)
    else:
      t = jax.vmap(lambda k: jax.random.randint(k, (), 0, num_timesteps))(k_t)
    weight = batch["t_weight"].astype(jnp.float32) if "t_weight" in batch else jnp.ones((b,), jnp.float32)

    emb = network.apply(variables, ids, method=Seq2SeqDenoiser.embed)  # [b, L, d]
    normal = lambda keys: jax.vmap(lambda k: jax.random.normal(k, emb.shape[1:], jnp.float32))(keys)
    y0 = emb + sigma0 * normal(k_embed) if embed_noise else emb
    x0 = jnp.where(target[..., None], y0, emb)  # the source stays clean
    z_t = partial_q_sample(schedule, x0, t, normal(k_noise), source_mask, active)
    x0_hat = network.apply(variables, z_t, t, active, source_mask, train=train, rngs={"dropout": k_drop})

    mse_target = jnp.where(broadcast_to_rank(t == 0, x0), emb, x0)
    mse = masked_mean(jnp.square(x0_hat - mse_target), target)
    prior = masked_mean(jnp.square(sqrt_ab_last * x0), target)
    logits = network.apply(variables, x0, method=Seq2SeqDenoiser.logits)
    token_logp = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], axis=-1)[..., 0]
    nll = masked_mean(-token_logp, target)
    per_example = mse + prior + nll
    loss = jnp.mean(weight * per_example)

    hat_logits = network.apply(variables, jax.lax.stop_gradient(x0_hat), method=Seq2SeqDenoiser.logits)
    correct = (jnp.argmax(hat_logits, axis=-1) == ids).astype(jnp.float32)
    metrics = {"loss": loss, "mse": jnp.mean(mse), "prior": jnp.mean(prior), "nll": jnp.mean(nll),
               "t_mean": jnp.mean(t.astype(jnp.float32)),
               "x0_token_acc": jnp.mean(masked_mean(correct, target))}
    return loss, metrics, per_example, t

  return fn


def make_loss_fn(network: Seq2SeqDenoiser, schedule: Schedule, **kwargs: Any):
  """The `Method.loss_fn` contract: fn(params, rng, batch) -> (loss, metrics); kwargs as above."""
  per_example_fn = make_per_example_loss_fn(network, schedule, **kwargs)

  def loss_fn(params, rng, batch):
    loss, metrics, _, _ = per_example_fn(params, rng, batch)
    return loss, metrics

  return loss_fn
