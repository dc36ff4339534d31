"""Continuous-time views of the discrete noise schedules: ᾱ(t), log-SNR λ(t) and β(t) on t ∈ [0, 1].

The continuous samplers (DPM-Solver++, reverse SDE, predictor-corrector, probability-flow ODE) and the exact
likelihood need the forward process at any real t, while the networks of this project are trained on the
integer steps of a discrete `Schedule`. One object links the two:

  knots     t_k = k / T,  k = 0..T,   with  log ᾱ(t_0) = 0 (clean data)  and  log ᾱ(t_{i+1}) = log ᾱ_i,

so discrete step i is continuous time t = (i+1)/T, and between knots log ᾱ is linear in t. Hence
- the discrete tables are an exact view (`discrete_view` rebuilds the `Schedule` bit for bit, clipping included);
- β(t) := -d log ᾱ / dt is piecewise constant, T·(-log(1 - β_i)) ≈ T β_i on (i/T, (i+1)/T]: the DDPM chain's
  continuous limit of DESIGN §3c (`β(t) = T β_{tT}`), with the log making ∫β = -log ᾱ exact;
- λ(t) = log(ᾱ / (1 - ᾱ)) (the full log-SNR, as in VDM; DPM-Solver's λ is half of it) is strictly decreasing
  and inverted exactly (`t_from_log_snr`), since log ᾱ = log σ(λ) is piecewise linear in t.
Every named schedule (linear, cosine, sqrt) and any custom β table get this view the same way. For reference,
`analytic_alpha_bar` gives each named schedule's own closed-form continuous limit (the VP SDE with
β(t) = T(β_start + t(β_end - β_start)) for "linear"); the knots of cosine and sqrt coincide with it wherever β
was not clipped, and linear agrees up to O(β) per step.

Network time input (`network_time`). A model trained on integer steps is called at a continuous t by one of
two documented rules:
- "nearest" (default): the integer step whose knot is nearest, i = clip(round(tT) - 1, 0, T-1). The network
  only ever saw integer inputs and the `DenoiseFn` contract types t as int, so this is always safe; the noise
  level it assumes is off by at most half a discrete step, the resolution it was trained at. Interpolating two
  network outputs would double the cost per evaluation and is not the estimate at the intermediate level either.
- "fractional": the real step index s = clip(tT - 1, 0, T-1) as float32. For networks whose time embedding is a
  smooth function of real t (the project's Denoiser: sinusoidal features of float t) and for closed-form
  oracles; it makes the network's input continuous in t, which adaptive ODE solvers reward with fewer steps.
Samplers always use the exact ᾱ(t) of the continuous view in their update formulas.

Functions take `xp` (numpy, float64, for build-time coefficient tables; or jax.numpy, traceable, float32).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from ldlg.methods.gaussian.schedules import Schedule, get_schedule, schedule_from_betas

TIME_INPUTS = ("nearest", "fractional")
SPACINGS = ("time_uniform", "logsnr_uniform")


@dataclasses.dataclass(frozen=True, eq=False)
class ContinuousSchedule:
  """The continuous-time view of a T-step discrete schedule (see the module docstring).

  Attributes:
    log_alpha_bar_knots: float64 [T+1], log ᾱ at t = k/T; entry 0 is 0 (clean), entry i+1 is log ᾱ_i.
    name: the schedule's name.
  """
  log_alpha_bar_knots: np.ndarray
  name: str = "custom"

  @property
  def num_timesteps(self) -> int:
    """T, the number of discrete steps behind the view."""
    return int(self.log_alpha_bar_knots.shape[0]) - 1


def from_discrete(schedule: Schedule) -> ContinuousSchedule:
  """The continuous view of a discrete `Schedule` (log ᾱ from its β in float64, so 1 - ᾱ keeps precision)."""
  betas = np.asarray(schedule.betas, dtype=np.float64)
  knots = np.concatenate([[0.0], np.cumsum(np.log1p(-np.minimum(betas, 1.0 - 1e-12)))])
  return ContinuousSchedule(log_alpha_bar_knots=knots, name=schedule.name)


def continuous_schedule(name: str, num_timesteps: int = 1000, **kw: float) -> ContinuousSchedule:
  """The continuous view of the named discrete schedule `get_schedule(name, num_timesteps, **kw)`."""
  return from_discrete(get_schedule(name, num_timesteps, **kw))


def discrete_view(cs: ContinuousSchedule) -> Schedule:
  """The discrete `Schedule` whose step i is t = (i+1)/T: β_i = 1 - ᾱ((i+1)/T) / ᾱ(i/T)."""
  return schedule_from_betas(-np.expm1(np.diff(cs.log_alpha_bar_knots)), name=cs.name)


def _table(cs: ContinuousSchedule, xp) -> Any:
  return cs.log_alpha_bar_knots if xp is np else jnp.asarray(cs.log_alpha_bar_knots, jnp.float32)


def log_alpha_bar(cs: ContinuousSchedule, t, xp=jnp):
  """log ᾱ(t), piecewise linear between the knots t = k/T. t: any shape, in [0, 1] (clamped)."""
  T = cs.num_timesteps
  return xp.interp(xp.clip(t, 0.0, 1.0) * T, xp.arange(T + 1), _table(cs, xp))


def alpha_bar(cs: ContinuousSchedule, t, xp=jnp):
  """ᾱ(t), the signal fraction of the variance of z_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε; ᾱ(0) = 1."""
  return xp.exp(log_alpha_bar(cs, t, xp))


def log_snr(cs: ContinuousSchedule, t, xp=jnp):
  """λ(t) = log(ᾱ / (1 - ᾱ)), strictly decreasing; +inf at t = 0."""
  la = log_alpha_bar(cs, t, xp)
  return la - xp.log(-xp.expm1(la))


def beta(cs: ContinuousSchedule, t, xp=jnp):
  """β(t) = -d log ᾱ/dt of the VP SDE, constant on each segment (k/T, (k+1)/T] (t = 0 uses the first)."""
  T = cs.num_timesteps
  table = _table(cs, xp)
  k = xp.clip(xp.ceil(xp.clip(t, 0.0, 1.0) * T) - 1, 0, T - 1).astype(xp.int32 if xp is jnp else np.int64)
  return T * (table[k] - table[k + 1])


def t_from_log_snr(cs: ContinuousSchedule, lam, xp=jnp):
  """The inverse of `log_snr`: the t in [0, 1] with λ(t) = lam (clamped to the schedule's range)."""
  T = cs.num_timesteps
  table = _table(cs, xp)
  # log ᾱ = log sigmoid(λ) = -softplus(-λ); log ᾱ(t) is decreasing, so interpolate on its negation.
  target = xp.logaddexp(0.0, -xp.asarray(lam))
  return xp.interp(target, -table, xp.arange(T + 1) / T)


def network_time(cs: ContinuousSchedule, t, rule: str = "nearest"):
  """The network's time input at continuous t (traceable): see the module docstring for the two rules.

  Args:
    cs: the continuous schedule.
    t: continuous times in [0, 1], any shape.
    rule: "nearest" -> int32 step clip(round(tT) - 1, 0, T-1); "fractional" -> float32 clip(tT - 1, 0, T-1).

  Returns:
    Same shape as t.
  """
  T = cs.num_timesteps
  s = jnp.asarray(t, jnp.float32) * T - 1.0
  if rule == "nearest":
    return jnp.clip(jnp.round(s), 0, T - 1).astype(jnp.int32)
  if rule == "fractional":
    return jnp.clip(s, 0.0, T - 1.0)
  raise ValueError(f"unknown network time rule {rule!r}; choose one of {TIME_INPUTS}")


def time_grid(cs: ContinuousSchedule, num_points: int, spacing: str = "time_uniform",
              t_min: float | None = None) -> np.ndarray:
  """num_points decreasing evaluation times from t = 1 to t_min (float64 numpy, build time).

  Args:
    cs: the continuous schedule.
    num_points: N >= 1 (N = 1 gives [1]).
    spacing: "time_uniform": uniform in t and rounded to the knots, i.e. exactly DDIM's strided steps
      (`sampling_timesteps` + 1) / T when t_min = 1/T, so a network trained on integer steps is evaluated at
      noise levels it was trained at; "logsnr_uniform": uniform in λ(t) (DPM-Solver's choice), not rounded.
    t_min: the last time, default 1/T (the least noise the discrete model knows, ᾱ_0).

  Returns:
    float64 [N], strictly decreasing, first 1, last t_min.
  """
  T = cs.num_timesteps
  t_min = 1.0 / T if t_min is None else float(t_min)
  if not 0.0 < t_min < 1.0:
    raise ValueError(f"t_min must be in (0, 1), got {t_min}")
  if num_points < 1:
    raise ValueError(f"num_points must be >= 1, got {num_points}")
  if num_points == 1:
    return np.array([1.0])
  if spacing == "time_uniform":
    grid = np.linspace(1.0, t_min, num_points)
    snapped = np.round(grid * T) / T
    # Rounding keeps the grid strictly decreasing only while the spacing is at least one knot.
    if np.all(np.diff(snapped) < 0) and snapped[-1] > 0:
      grid = snapped
  elif spacing == "logsnr_uniform":
    lam = np.linspace(log_snr(cs, 1.0, np), log_snr(cs, t_min, np), num_points)
    grid = t_from_log_snr(cs, lam, np)
    grid[0], grid[-1] = 1.0, t_min
  else:
    raise ValueError(f"unknown time spacing {spacing!r}; choose one of {SPACINGS}")
  if not np.all(np.diff(grid) < 0):
    raise ValueError(f"{num_points} points are too many for spacing {spacing!r} on T={T} knots")
  return grid


def analytic_alpha_bar(name: str, t, num_timesteps: int = 1000, **kw: float) -> np.ndarray:
  """Each named schedule's own closed-form continuous ᾱ(t) (float64 numpy), without β clipping.

  "linear": the VP SDE exp(-T(β_start t + (β_end - β_start) t² / 2)) (Song et al. 2021, β_min = T β_start);
  "cosine": f(t)/f(0), f(u) = cos²((u + s)/(1 + s) π/2); "sqrt": (1 - sqrt(t + s)) / (1 - sqrt(s)) (< 0 near
  t = 1, where the discrete β is clipped).
  """
  t = np.asarray(t, np.float64)
  if name == "linear":
    b0, b1 = kw.get("beta_start", 1e-4), kw.get("beta_end", 0.02)
    return np.exp(-num_timesteps * (b0 * t + 0.5 * (b1 - b0) * t**2))
  if name == "cosine":
    s = kw.get("s", 0.008)
    f = lambda u: np.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
    return f(t) / f(0.0)
  if name == "sqrt":
    s = kw.get("s", 1e-4)
    return (1.0 - np.sqrt(t + s)) / (1.0 - np.sqrt(s))
  raise ValueError(f"unknown schedule {name!r}")
