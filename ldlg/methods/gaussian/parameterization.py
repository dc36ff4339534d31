"""Conversions between the x0, ε and v parameterizations of a denoiser's output.

With z_t = sqrt(ᾱ) x0 + sqrt(1-ᾱ) ε and v := sqrt(ᾱ) ε - sqrt(1-ᾱ) x0 (Salimans & Ho, 2022), any one of
(x0, ε, v) together with z_t determines the other two. The training objective ("x0", the LD4LG default;
"eps"; or "v") is a config choice: the loss regresses the network output on that objective's target,
and samplers convert the output to an x0 estimate with `x0_from_output`.

Every function takes `alpha_bar` as ᾱ_t per example, shape [B] (or a scalar), and broadcasts it over
the trailing axes of the data ([B, L, D] here).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ldlg.methods.gaussian.schedules import broadcast_to_rank

OBJECTIVES = ("x0", "eps", "v")


def _scales(alpha_bar: jax.Array, like: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sqrt(ᾱ), sqrt(1-ᾱ)) broadcast against `like` [B, ...]."""
  alpha_bar = jnp.asarray(alpha_bar, dtype=like.dtype)
  a = broadcast_to_rank(alpha_bar, like) if alpha_bar.ndim else alpha_bar
  return jnp.sqrt(a), jnp.sqrt(1.0 - a)


def check_objective(objective: str) -> None:
  """Raises a ValueError naming the choices when `objective` is not one of OBJECTIVES."""
  if objective not in OBJECTIVES:
    raise ValueError(f"unknown diffusion objective {objective!r}; choose one of {OBJECTIVES}")


def x0_from_eps(z_t: jax.Array, eps: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """x0 = (z_t - sqrt(1-ᾱ) ε) / sqrt(ᾱ). Ill-conditioned where ᾱ → 0 (errors grow as 1/sqrt(ᾱ))."""
  sa, s1 = _scales(alpha_bar, z_t)
  return (z_t - s1 * eps) / sa


def eps_from_x0(z_t: jax.Array, x0: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """ε = (z_t - sqrt(ᾱ) x0) / sqrt(1-ᾱ). Ill-conditioned where ᾱ → 1 (the first steps)."""
  sa, s1 = _scales(alpha_bar, z_t)
  return (z_t - sa * x0) / s1


def v_from_x0_eps(x0: jax.Array, eps: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0."""
  sa, s1 = _scales(alpha_bar, x0)
  return sa * eps - s1 * x0


def x0_from_v(z_t: jax.Array, v: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """x0 = sqrt(ᾱ) z_t - sqrt(1-ᾱ) v (well conditioned for every ᾱ)."""
  sa, s1 = _scales(alpha_bar, z_t)
  return sa * z_t - s1 * v


def eps_from_v(z_t: jax.Array, v: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """ε = sqrt(1-ᾱ) z_t + sqrt(ᾱ) v (well conditioned for every ᾱ)."""
  sa, s1 = _scales(alpha_bar, z_t)
  return s1 * z_t + sa * v


def v_from_x0(z_t: jax.Array, x0: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """v from z_t and x0, through ε = eps_from_x0(z_t, x0)."""
  return v_from_x0_eps(x0, eps_from_x0(z_t, x0, alpha_bar), alpha_bar)


def target_for_objective(objective: str, x0: jax.Array, eps: jax.Array,
                         alpha_bar: jax.Array) -> jax.Array:
  """The regression target of the network output for `objective`.

  Args:
    objective: "x0", "eps" or "v".
    x0: [B, ...] clean data.
    eps: [B, ...] the noise that made z_t.
    alpha_bar: [B] ᾱ_t.

  Returns:
    [B, ...] x0, ε or v.
  """
  check_objective(objective)
  if objective == "x0":
    return x0
  if objective == "eps":
    return eps
  return v_from_x0_eps(x0, eps, alpha_bar)


def x0_from_output(objective: str, z_t: jax.Array, output: jax.Array,
                   alpha_bar: jax.Array) -> jax.Array:
  """Converts a network output in `objective`'s parameterization to an x0 estimate.

  Args:
    objective: "x0", "eps" or "v".
    z_t: [B, ...] the network input.
    output: [B, ...] the network output.
    alpha_bar: [B] ᾱ_t.

  Returns:
    [B, ...] x̂0.
  """
  check_objective(objective)
  if objective == "x0":
    return output
  if objective == "eps":
    return x0_from_eps(z_t, output, alpha_bar)
  return x0_from_v(z_t, output, alpha_bar)
