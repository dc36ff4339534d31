"""The denoise-function contract between the diffusion math and the network.

Losses and samplers never import the model: they take a `DenoiseFn`, a pure function of
(params, arrays, rng). `denoise_fn_from_module` adapts any flax module with the Denoiser's call
signature (ldlg/models/denoiser.py) to it, so tests can swap in closed-form oracles.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol

import flax.linen as nn
import jax

from ldlg.methods.gaussian import condition


class DenoiseFn(Protocol):
  """f(params, z_t, t, mask, self_cond, has_self_cond, cond, train, rng) -> network output.

  Args:
    params: the network's parameter pytree (anything for an oracle).
    z_t: [B, L, D] noisy latents.
    t: [B] int timesteps in [0, T).
    mask: [B, L] bool, True = valid position.
    self_cond: [B, L, D] previous x0 estimate, or None (no example has one).
    has_self_cond: [B] bool, per example whether `self_cond` counts (False = as if None), or None.
    cond: the conditioning pytree (`condition.py`): None (unconditional), a [B] int class-id array, or a
      dict with "class_id" [B] and/or "source" [B, S, Ds] + "source_mask" [B, S].
    train: whether dropout is active.
    rng: PRNG key for dropout.

  Returns:
    [B, L, D] output in the objective's parameterization (x̂0 for the default "x0" objective).
  """

  def __call__(self, params: Any, z_t: jax.Array, t: jax.Array, mask: jax.Array,
               self_cond: Optional[jax.Array], has_self_cond: Optional[jax.Array],
               cond: Any, train: bool, rng: jax.Array) -> jax.Array:
    ...


def denoise_fn_from_module(model: nn.Module) -> DenoiseFn:
  """Wraps `model.apply` as a `DenoiseFn` (params = the 'params' collection; rng = 'dropout' stream).

  Args:
    model: a flax module called as model(z_t, t, mask, self_cond=, has_self_cond=, class_id=, source=,
      source_mask=, train=) (the fields of `cond` it is given; `condition.module_kwargs`).

  Returns:
    The denoise function.
  """
  def denoise_fn(params, z_t, t, mask, self_cond, has_self_cond, cond, train, rng):
    return model.apply({"params": params}, z_t, t, mask, self_cond=self_cond,
                       has_self_cond=has_self_cond, train=train, rngs={"dropout": rng},
                       **condition.module_kwargs(cond))
  return denoise_fn
