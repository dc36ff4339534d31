"""The x0 estimate at a continuous time, shared by the continuous-time samplers and the likelihood.

One function turns a `DenoiseFn` into x̂0(z, t) at a real t ∈ (0, 1]: it maps t to the network's time input
(`continuous.network_time`), applies classifier-free guidance in one doubled batch, reads the output in the
training objective's parameterization with the exact ᾱ(t) of the continuous view, and zeroes padded positions
(so they never feed the network anything but zeros, and the returned latents are 0 there).

Also here: the argument checks of the sampler call signature shared with `samplers.make_sampler`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from ldlg.methods.gaussian import condition
from ldlg.methods.gaussian import continuous as ct
from ldlg.methods.gaussian import parameterization as param_lib
from ldlg.methods.gaussian.denoise_fn import DenoiseFn

X0Fn = Callable[..., jax.Array]


def make_x0_estimator(denoise_fn: DenoiseFn, cs: ct.ContinuousSchedule, *, objective: str = "x0",
                      self_condition: bool = True, guidance_scale: float = 1.0, num_classes: int = 0,
                      clip_x0: Optional[float] = None, time_input: str = "nearest",
                      source_conditioned: bool = False) -> X0Fn:
  """Builds x0_fn(params, z, t, mask, estimate, has_estimate, cond, rng) -> x̂0.

  Args:
    denoise_fn: the network.
    cs: the continuous schedule.
    objective: "x0", "eps" or "v": how to read the network output.
    self_condition: pass `estimate` to the network as its self-conditioning input.
    guidance_scale: w, out = w·f(cond) + (1-w)·f(null) from one call on the doubled batch (w = 1: no guidance).
    num_classes: C, the null class id (needed when guidance_scale != 1).
    clip_x0: clip x̂0 to [-clip_x0, clip_x0] when set.
    time_input: "nearest" or "fractional" (see `continuous.network_time`).
    source_conditioned: the model reads a source (guidance then contrasts it with the null source).

  Returns:
    x0_fn with z: [B, L, D]; t: continuous time, scalar or [B]; mask: [B, L] bool; estimate: [B, L, D]
    (ignored when self_condition is False); has_estimate: scalar bool; cond: the conditioning pytree
    (`condition.py`) or None; rng: key.
    Returns x̂0 [B, L, D] float32, 0 at padded positions.
  """
  param_lib.check_objective(objective)
  if time_input not in ct.TIME_INPUTS:
    raise ValueError(f"unknown time_input {time_input!r}; choose one of {ct.TIME_INPUTS}")
  condition.check_guidance(guidance_scale, num_classes, source_conditioned)
  if clip_x0 is not None and clip_x0 <= 0:
    raise ValueError(f"clip_x0 must be positive or None, got {clip_x0}")

  def x0_fn(params, z, t, mask, estimate, has_estimate, cond, rng):
    batch = z.shape[0]
    t_b = jnp.full((batch,), ct.network_time(cs, t, time_input))
    self_cond = estimate if self_condition else None
    has_sc = jnp.full((batch,), has_estimate) if self_condition else None
    out = condition.guided_output(denoise_fn, params, z, t_b, mask, self_cond, has_sc, cond, rng, guidance_scale,
                                  num_classes)
    ab = jnp.full((batch,), ct.alpha_bar(cs, t))
    x0 = param_lib.x0_from_output(objective, z, out.astype(jnp.float32), ab)
    if clip_x0 is not None:
      x0 = jnp.clip(x0, -clip_x0, clip_x0)
    return jnp.where(mask[..., None], x0, 0.0)

  return x0_fn


def two_pass_x0(x0_fn: X0Fn, self_condition: bool) -> X0Fn:
  """x̂0 as a function of (z, t) alone, for ODE solvers and likelihoods that cannot carry a previous step.

  With self-conditioning the network is called twice, first without an estimate and then with its own
  answer (as in training's self-conditioning pass), so each evaluation costs 2 network calls. Derivatives
  (the likelihood's divergence) flow through both passes: the field is the composite function of z.
  """
  def fn(params, z, t, mask, cond, rng):
    first = x0_fn(params, z, t, mask, jnp.zeros_like(z), False, cond, rng)
    if not self_condition:
      return first
    return x0_fn(params, z, t, mask, first, True, cond, rng)
  return fn


def check_sample_args(mask: jax.Array, cond: Any, latent_dim: Optional[int],
                      global_batch: Optional[int]) -> condition.Cond:
  """Validates the arguments of a `sample` call; returns cond as a dict (`condition.check`) or None."""
  if latent_dim is None:
    raise ValueError("sample() needs latent_dim (the width D of the latents, e.g. config.model.latent_dim)")
  if mask.ndim != 2 or mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be bool [B, L] (True = valid), got {mask.dtype} {mask.shape}; "
                     "build it with mask_from_lengths")
  if global_batch is not None and global_batch < mask.shape[0]:
    raise ValueError(f"global_batch={global_batch} is smaller than this shard's batch {mask.shape[0]}")
  return condition.check(cond, mask.shape[0])
