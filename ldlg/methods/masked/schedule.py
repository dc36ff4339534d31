"""Masking schedules α_t of masked diffusion: the probability that a token is still itself at time t ∈ [0, 1].

Every schedule here is `α_t = ε + (1 - ε) a(t)` with `a(0) = 1`, `a(1) = 0` decreasing, so α_0 = 1 (clean data)
and α_1 = ε (almost everything masked):
- "loglinear" (MDLM's default): a(t) = 1 - t, so α_t = 1 - (1-ε) t. The name is MDLM's: the total noise
  σ(t) = -log α_t = -log(1 - (1-ε)t) is log-linear. The NELBO weight -α'_t/(1-α_t) is exactly 1/t.
- "cosine" (MD4): a(t) = 1 - cos(π/2 (1 - t)).
- "poly" (MD4's polynomial): a(t) = 1 - t^k, k = `exponent`.

ε keeps α_1 > 0 as MDLM does; 0 is allowed (α_1 = 0 exactly, the setting of the closed-form tests).
Plain functions of t (jnp, so they trace, vmap and differentiate); `dalpha` is written out, not autodiff.
"""
import dataclasses
import math

import jax.numpy as jnp

SCHEDULES = ("loglinear", "cosine", "poly")


@dataclasses.dataclass(frozen=True)
class MaskSchedule:
  """α_t = eps + (1 - eps) a(t) and its derivative.

  Attributes:
    kind: one of SCHEDULES.
    eps: α_1, in [0, 1).
    exponent: k of the "poly" schedule (ignored by the others).
  """
  kind: str = "loglinear"
  eps: float = 1e-3
  exponent: float = 1.0

  def __post_init__(self):
    if self.kind not in SCHEDULES:
      raise ValueError(f"unknown masking schedule {self.kind!r}; choose one of {SCHEDULES}")
    if not 0.0 <= self.eps < 1.0:
      raise ValueError(f"eps (= α_1) must be in [0, 1), got {self.eps}")
    if self.exponent <= 0:
      raise ValueError(f"the poly schedule's exponent must be > 0, got {self.exponent}")

  def _one_minus_a(self, t):
    # 1 - a(t) written out per kind, so 1 - α_t keeps full precision at small t (no 1 - (1 - x) rounding).
    if self.kind == "loglinear":
      return t
    if self.kind == "cosine":
      # float32 π/2 is a hair above π/2, so cos would give -4e-8 at t = 0; clip to keep 1 - α_0 = 0 exactly.
      return jnp.maximum(jnp.cos(0.5 * math.pi * (1.0 - t)), 0.0)
    return t ** self.exponent

  def _da(self, t):
    if self.kind == "loglinear":
      return -jnp.ones_like(t)
    if self.kind == "cosine":
      return -0.5 * math.pi * jnp.sin(0.5 * math.pi * (1.0 - t))
    return -self.exponent * t ** (self.exponent - 1.0)

  def alpha(self, t):
    """α_t for t in [0, 1] (any shape, float)."""
    t = jnp.asarray(t, jnp.float32)
    return 1.0 - self.mask_prob(t)

  def mask_prob(self, t):
    """1 - α_t: the probability that a token is masked at time t (computed without cancellation)."""
    t = jnp.asarray(t, jnp.float32)
    return (1.0 - self.eps) * self._one_minus_a(t)

  def dalpha(self, t):
    """α'_t = dα/dt (≤ 0), same shape as t."""
    t = jnp.asarray(t, jnp.float32)
    return (1.0 - self.eps) * self._da(t)

  def weight(self, t):
    """The continuous-time NELBO weight -α'_t / (1 - α_t) ≥ 0, and 0 where 1 - α_t = 0 (t = 0).

    At t = 0 no token is masked, so the weight multiplies nothing; returning 0 there (rather than inf) keeps
    0 * inf out of the loss and its gradient.
    """
    t = jnp.asarray(t, jnp.float32)
    one_minus = self.mask_prob(t)
    return jnp.where(one_minus > 0, -self.dalpha(t) / jnp.where(one_minus > 0, one_minus, 1.0), 0.0)
