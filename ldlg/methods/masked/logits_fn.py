"""The contract between the masked-diffusion math and the network: a pure `LogitsFn`.

Losses and samplers never import the model; they call a `LogitsFn`, so tests can swap in closed-form oracles
(an exact posterior over an enumerated data set, a factorized categorical). `logits_fn_from_module` adapts a
`ldlg.networks.token_transformer.TokenTransformer` (or any module with its call signature).
"""
from typing import Any, Optional, Protocol

import flax.linen as nn
import jax


class LogitsFn(Protocol):
  """f(params, z_t, t, mask, class_id, train, rng) -> raw logits (SUBS is applied by the caller).

  Args:
    params: the network parameters (anything for an oracle).
    z_t: [B, L] int token ids, the mask id where masked.
    t: [B] float times in [0, 1] (a model without time input ignores them).
    mask: [B, L] bool key padding mask, True = may be attended to.
    class_id: [B] int in [0, C] (C = null class), or None (unconditional / all null).
    train: dropout on.
    rng: PRNG key of the "dropout" stream.

  Returns:
    [B, L, V] float logits.
  """

  def __call__(self, params: Any, z_t: jax.Array, t: jax.Array, mask: jax.Array,
               class_id: Optional[jax.Array], train: bool, rng: jax.Array) -> jax.Array:
    ...


def logits_fn_from_module(model: nn.Module) -> LogitsFn:
  """Wraps `model.apply` (called as model(tokens, mask, t, class_id, train=)) as a `LogitsFn`."""
  def logits_fn(params, z_t, t, mask, class_id, train, rng):
    return model.apply({"params": params}, z_t, mask, t, class_id, train=train, rngs={"dropout": rng})
  return logits_fn
