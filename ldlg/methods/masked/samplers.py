"""Masked-diffusion samplers, each one compiled program (a `lax.scan` inside `jax.jit`).

Ancestral sampling over T steps t_k = k/T, k = T..1, from the all-mask sequence at t = 1. At step t -> s = t - 1/T
every still-masked token is unmasked with probability (α_s - α_t)/(1 - α_t) and then takes a token drawn from
x_θ(z_t); this is the reverse step q(z_s | z_t, x_θ) = Cat(((1-α_s) m + (α_s - α_t) x_θ) / (1-α_t)) of MDLM
(α_0 = 1, so the last step unmasks everything). Unmasked tokens are never changed or re-masked: SUBS carries them
over (x_θ is their one-hot), and only masked positions are ever written.

- Caching (`cache=True`, MDLM's ddpm_cache): a model without time input gives the same x_θ for the same z, so
  when no token of the batch changed in a step the next step reuses x_θ instead of calling the network
  (`lax.cond` inside the scan). What is kept is x_θ's draw table (its CDF, built once per call), so a skipped step
  costs a binary search per position, O(L log V), not O(L V). Random draws are the same as without the cache, so
  the tokens are identical; the count of network calls is returned. With T much larger than B·L most steps
  change nothing; the skip is per batch, so a large batch skips few (about B·L/T positions are revealed a step).
- Nucleus (`top_p < 1`): each position's x_θ is cut to its smallest set of tokens of mass >= top_p.
- Classes: `class_id` [B]; classifier-free guidance with `guidance_scale` w combines the log-probabilities,
  log x_w ∝ w log x_θ(·|c) + (1-w) log x_θ(·|∅), in one network call on the doubled batch (counted as one call).
  Network logits are finite; an oracle giving -inf unconditionally where the conditional is finite would make
  (1-w)(-inf) = +inf for w > 1.
- Semi-autoregressive (`make_semi_ar_sampler`): texts longer than the model's window are generated block by
  block; each block's window starts with the last `overlap` tokens of what is already there (a clean prefix,
  kept by carry-over), the rest masked. An optional `prefix` starts the text.

Randomness: step j uses fold_in(rng, j) (in window b of the semi-autoregressive sampler, rng = fold_in(rng, b)),
folded with each example's `example_index`, so a batch split over devices draws what one device would.
"""
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ldlg.methods.masked.logits_fn import LogitsFn
from ldlg.methods.masked.schedule import MaskSchedule
from ldlg.methods.masked.subs import carry_over, denoiser_log_probs

SampleFn = Callable[..., dict]


def nucleus_filter(log_probs: jax.Array, top_p: float) -> jax.Array:
  """Keeps, per row, the most likely tokens whose mass reaches top_p (the top token always); the rest -inf.

  A token is kept when the mass of the tokens ranked above it is < top_p. Not renormalized: sampling with
  `jax.random.categorical` normalizes.

  Args:
    log_probs: [..., V].
    top_p: in (0, 1]; 1 keeps everything.

  Returns:
    [..., V] with the tail set to -inf.
  """
  if top_p >= 1.0:
    return log_probs
  order = jnp.argsort(-log_probs, axis=-1)
  sorted_probs = jnp.exp(jnp.take_along_axis(log_probs, order, axis=-1))
  mass_above = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  keep_sorted = (mass_above < top_p).at[..., 0].set(True)
  # Scatter back to vocabulary order: the inverse permutation of `order`.
  keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
  return jnp.where(keep, log_probs, -jnp.inf)


def draw_table(log_probs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """What `draw_from_table` needs to draw from softmax(log_probs): the unnormalized CDF and a fallback token.

  Built once per network call; the caching sampler keeps it across the steps that skip the network, so those
  steps cost O(L log V) per sample (a binary search) instead of O(L V).

  Args:
    log_probs: [..., V] log-probabilities (-inf allowed; need not be normalized).

  Returns:
    (cdf [..., V] float32, a running sum of nonnegative terms; last [...] int32, the last token of positive
    probability).
  """
  probs = jnp.exp(log_probs - jnp.max(log_probs, axis=-1, keepdims=True))
  cdf = jnp.cumsum(probs, axis=-1)
  last = probs.shape[-1] - 1 - jnp.argmax((probs > 0)[..., ::-1], axis=-1)
  return cdf, last.astype(jnp.int32)


def draw_from_table(cdf: jax.Array, last: jax.Array, v: jax.Array) -> jax.Array:
  """The token whose CDF interval holds v (see `draw_table`); [...] int32 ids for v [...] in [0, 1)."""
  vocab = cdf.shape[-1]
  target = v * cdf[..., -1]
  rows, flat_target = cdf.reshape(-1, vocab), target.reshape(-1)
  # The first index whose CDF exceeds the target; V when rounding puts the target at the total.
  index = jax.vmap(lambda c, x: jnp.searchsorted(c, x, side="right"))(rows, flat_target).reshape(v.shape)
  return jnp.where(index < vocab, index, last).astype(jnp.int32)


def inverse_cdf_sample(log_probs: jax.Array, v: jax.Array) -> jax.Array:
  """The token whose CDF interval holds v: a draw from softmax(log_probs) when v ~ U[0, 1).

  Args:
    log_probs: [..., V] log-probabilities (-inf allowed; need not be normalized).
    v: [...] uniforms in [0, 1).

  Returns:
    [...] int32 ids, never a token of zero probability.
  """
  return draw_from_table(*draw_table(log_probs), v)


def unmask_probabilities(schedule: MaskSchedule, num_steps: int) -> np.ndarray:
  """(α_s - α_t) / (1 - α_t) for the steps t = k/T -> s = (k-1)/T, k = T..1 (sampling order); the last is 1.

  Returns:
    float32 [num_steps].
  """
  t = jnp.arange(num_steps, 0, -1, dtype=jnp.float32) / num_steps
  p_t = np.asarray(schedule.mask_prob(t), np.float64)
  p_s = np.asarray(schedule.mask_prob(t - 1.0 / num_steps), np.float64)
  probs = (p_t - p_s) / p_t
  probs[-1] = 1.0  # α_0 = 1: everything still masked is revealed at the last step, whatever the rounding.
  return probs.astype(np.float32)


def _check_options(num_steps, top_p, guidance_scale, num_classes, cache, time_conditioning):
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1] (1 = the full distribution), got {top_p}")
  if guidance_scale != 1.0 and num_classes <= 0:
    raise ValueError(f"guidance_scale={guidance_scale} needs a class-conditional model (num_classes > 0); "
                     "set guidance_scale=1")
  if cache and time_conditioning:
    raise ValueError("the caching sampler reuses x_θ across steps, which is only exact for a model without "
                     "time input; use cache=False for a time-conditioned model")


def _make_window_fn(logits_fn: LogitsFn, schedule: MaskSchedule, *, mask_id: int, num_steps: int, cache: bool,
                    top_p: float, guidance_scale: float, num_classes: int, return_trajectory: bool):
  """The ancestral loop over one window: fill(params, rng, z0, key_mask, example_index, class_id)."""
  probs = jnp.asarray(unmask_probabilities(schedule, num_steps))
  times = jnp.arange(num_steps, 0, -1, dtype=jnp.float32) / num_steps

  def log_x_theta(params, z, t, key_mask, class_id, rng):
    """Sampling log-probabilities [B, L, V]: guided, SUBS-substituted, nucleus-cut (rng: unused dropout key)."""
    batch = z.shape[0]
    t_b = jnp.full((batch,), t, jnp.float32)
    if guidance_scale != 1.0 and class_id is not None:
      two = lambda x: jnp.concatenate([x, x], axis=0)
      ids = jnp.concatenate([class_id, jnp.full_like(class_id, num_classes)])
      lp = denoiser_log_probs(logits_fn(params, two(z), two(t_b), two(key_mask), ids, False, rng), mask_id)
      is_mask_col = jnp.arange(lp.shape[-1]) == mask_id
      finite = lambda x: jnp.where(is_mask_col, 0.0, x)  # keep -inf * (1 - w) out of the mix
      mixed = guidance_scale * finite(lp[:batch]) + (1.0 - guidance_scale) * finite(lp[batch:])
      lp = jax.nn.log_softmax(jnp.where(is_mask_col, -jnp.inf, mixed), axis=-1)
    else:
      lp = denoiser_log_probs(logits_fn(params, z, t_b, key_mask, class_id, False, rng), mask_id)
    return nucleus_filter(carry_over(lp, z, mask_id), top_p)

  def table(params, z, t, key_mask, class_id, rng):
    return draw_table(log_x_theta(params, z, t, key_mask, class_id, rng))

  def fill(params, rng, z0, key_mask, example_index, class_id):
    def step(carry, x):
      z, cached, need_call, calls = carry
      j, t, p_unmask = x
      if cache:
        # Without a time input the network's output changes only when z does: keep its draw table otherwise.
        tab = jax.lax.cond(need_call, lambda: table(params, z, t, key_mask, class_id, rng), lambda: cached)
        calls = calls + need_call.astype(jnp.int32)
      else:
        tab = table(params, z, t, key_mask, class_id, rng)
        calls = calls + 1
      # Two uniforms per position: the reveal coin and an inverse-CDF token draw. (Gumbel-max would need V
      # random numbers per position and step, which would dominate the cost of the steps the cache skips.)
      step_key = jax.random.fold_in(rng, j)
      keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(example_index)
      draws = jax.vmap(lambda k: jax.random.uniform(k, z.shape[1:] + (2,)))(keys)  # [B, L, 2]
      u = draws[..., 0]
      tokens = draw_from_table(*tab, draws[..., 1])
      reveal = (z == mask_id) & (u < p_unmask)
      z_new = jnp.where(reveal, tokens.astype(z.dtype), z)
      return (z_new, tab, jnp.any(reveal), calls), (z_new if return_trajectory else None)

    # The cache's initial value only fixes the carry's shape; need_call=True means it is never read.
    init_tab = jax.eval_shape(lambda: table(params, z0, 1.0, key_mask, class_id, rng))
    carry = (z0, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), init_tab), jnp.bool_(True), jnp.int32(0))
    (z, _, _, calls), traj = jax.lax.scan(step, carry, (jnp.arange(num_steps), times, probs))
    return z, calls, traj

  return fill


def make_sampler(logits_fn: LogitsFn, schedule: MaskSchedule, *, mask_id: int, length: int, num_steps: int,
                 cache: bool = True, top_p: float = 1.0, guidance_scale: float = 1.0, num_classes: int = 0,
                 time_conditioning: bool = False, pad_id: Optional[int] = None,
                 return_trajectory: bool = False) -> SampleFn:
  """Ancestral sampling of `length` tokens in `num_steps` steps (with the cache when `cache`).

  Args:
    logits_fn: the network (see `LogitsFn`); called with dropout off.
    schedule: the training schedule α_t.
    mask_id: the mask token id.
    length: L, tokens per sample (at most the model's max_len).
    num_steps: T.
    cache: skip the network when nothing changed in the previous step (model without time input only).
    top_p: nucleus cut in (0, 1]; 1 = plain ancestral sampling.
    guidance_scale: classifier-free guidance w (1 = plain conditional sampling).
    num_classes: the model's C (null class id = C).
    time_conditioning: whether the model reads t (forbids the cache).
    pad_id: written at positions outside `mask` (needed only when sample() is given a mask).
    return_trajectory: also return the tokens after every step.

  Returns:
    sample(params, rng, example_index, class_id=None, init_tokens=None, mask=None) -> dict, jitted, where
      example_index: [B] int global indices of the samples (jnp.arange(B) for a single batch);
      class_id: [B] int in [0, C], or None (null class, no guidance);
      init_tokens: [B, L] int, mask_id at positions to generate, other tokens kept (infilling, prefixes);
        None = all mask;
      mask: [B, L] bool, generate and attend only where True, pad_id elsewhere (for models trained with
        pad_in_loss=False, which need the lengths); None = all True;
    and the dict holds "tokens" [B, L] int32 (no mask token left), "num_network_calls" [] int32, and
    "trajectory" [T, B, L] when asked.
  """
  _check_options(num_steps, top_p, guidance_scale, num_classes, cache, time_conditioning)
  fill = _make_window_fn(logits_fn, schedule, mask_id=mask_id, num_steps=num_steps, cache=cache, top_p=top_p,
                         guidance_scale=guidance_scale, num_classes=num_classes,
                         return_trajectory=return_trajectory)

  @jax.jit
  def sample(params: Any, rng: jax.Array, example_index: jax.Array, class_id=None, init_tokens=None, mask=None):
    batch = example_index.shape[0]
    z0 = jnp.full((batch, length), mask_id, jnp.int32) if init_tokens is None else init_tokens.astype(jnp.int32)
    if z0.shape != (batch, length):
      raise ValueError(f"init_tokens must be [B, L] = {(batch, length)}, got {z0.shape}")
    key_mask = jnp.ones((batch, length), bool)
    if mask is not None:
      if pad_id is None:
        raise ValueError("sample() was given a mask but the sampler has no pad_id; build it with pad_id")
      key_mask = mask
      z0 = jnp.where(mask, z0, pad_id)
    if class_id is not None:
      class_id = class_id.astype(jnp.int32)
    z, calls, traj = fill(params, rng, z0, key_mask, example_index, class_id)
    out = {"tokens": z, "num_network_calls": calls}
    if return_trajectory:
      out["trajectory"] = traj
    return out

  return sample


def make_semi_ar_sampler(logits_fn: LogitsFn, schedule: MaskSchedule, *, mask_id: int, window: int,
                         total_length: int, overlap: int, num_steps: int, cache: bool = True, top_p: float = 1.0,
                         guidance_scale: float = 1.0, num_classes: int = 0,
                         time_conditioning: bool = False) -> SampleFn:
  """Semi-autoregressive sampling of `total_length` tokens, `window` at a time.

  Block b fills the window starting at b * (window - overlap): its first `overlap` tokens were written by the
  previous block (or the prefix) and are kept; the rest are generated by `num_steps` ancestral steps. The number
  of blocks is 1 + ceil((total_length - window) / (window - overlap)).

  Args:
    window: the model's length (tokens per network call), <= max_len.
    total_length: tokens per returned sample.
    overlap: clean tokens carried into each next window, in [0, window).
    Others: as in `make_sampler`.

  Returns:
    sample(params, rng, example_index, class_id=None, prefix=None) -> {"tokens" [B, total_length] int32,
    "num_network_calls" [] int32 (over all blocks)}, jitted; `prefix` [B, P] int (P <= total_length) starts
    every sample and is kept as given.
  """
  _check_options(num_steps, top_p, guidance_scale, num_classes, cache, time_conditioning)
  if not 0 <= overlap < window:
    raise ValueError(f"overlap must be in [0, window={window}), got {overlap}")
  if total_length < 1:
    raise ValueError(f"total_length must be >= 1, got {total_length}")
  stride = window - overlap
  num_blocks = 1 + math.ceil(max(total_length - window, 0) / stride)
  buffer_length = window + (num_blocks - 1) * stride
  fill = _make_window_fn(logits_fn, schedule, mask_id=mask_id, num_steps=num_steps, cache=cache, top_p=top_p,
                         guidance_scale=guidance_scale, num_classes=num_classes, return_trajectory=False)

  @jax.jit
  def sample(params: Any, rng: jax.Array, example_index: jax.Array, class_id=None, prefix=None):
    batch = example_index.shape[0]
    buffer = jnp.full((batch, buffer_length), mask_id, jnp.int32)
    if prefix is not None:
      if prefix.ndim != 2 or prefix.shape[0] != batch or prefix.shape[1] > total_length:
        raise ValueError(f"prefix must be [B={batch}, P <= {total_length}], got {prefix.shape}")
      buffer = buffer.at[:, :prefix.shape[1]].set(prefix.astype(jnp.int32))
    if class_id is not None:
      class_id = class_id.astype(jnp.int32)
    key_mask = jnp.ones((batch, window), bool)

    def block(carry, b):
      buffer, calls = carry
      start = b * stride
      z0 = jax.lax.dynamic_slice_in_dim(buffer, start, window, axis=1)
      z, block_calls, _ = fill(params, jax.random.fold_in(rng, b), z0, key_mask, example_index, class_id)
      return (jax.lax.dynamic_update_slice_in_dim(buffer, z, start, axis=1), calls + block_calls), None

    (buffer, calls), _ = jax.lax.scan(block, (buffer, jnp.int32(0)), jnp.arange(num_blocks))
    return {"tokens": buffer[:, :total_length], "num_network_calls": calls}

  return sample
