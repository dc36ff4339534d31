"""Discrete-time noise schedules of the Gaussian forward process and the forward sampler `q_sample`.

Convention (as in DDPM's reference code): timesteps are integers `t ∈ [0, T)`; `t = 0` is the first
(least) noise level, with `ᾱ_0 = 1 - β_0`, and `ᾱ_{-1} := 1` is clean data. The forward marginal is

  z_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε,   ε ~ N(0, I),

and the posterior used by ancestral sampling is q(z_{t-1} | z_t, x0) = N(c1_t x0 + c2_t z_t, β̃_t) with
`β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)` (zero at t = 0).

All tables are computed in float64 with numpy and stored as float32 jax arrays, so they can be indexed
with traced timesteps inside jit. Build one schedule per run, from config, with `schedule_from_config`.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine", "sqrt")


@flax.struct.dataclass
class Schedule:
  """Per-timestep tables of a discrete noise schedule; every array field is float32 [T].

  Attributes:
    betas: β_t, the per-step noise variance.
    alphas: 1 - β_t.
    alphas_cumprod: ᾱ_t = ∏_{s<=t} (1 - β_s), the signal fraction of the variance at step t.
    alphas_cumprod_prev: ᾱ_{t-1}, with ᾱ_{-1} = 1.
    sqrt_alphas_cumprod: sqrt(ᾱ_t), the signal scale of z_t.
    sqrt_one_minus_alphas_cumprod: sqrt(1 - ᾱ_t), the noise scale of z_t.
    posterior_variance: β̃_t, the variance of q(z_{t-1} | z_t, x0); 0 at t = 0.
    posterior_log_variance_clipped: log β̃_t, with β̃_0 replaced by β̃_1 so the log is finite.
    posterior_mean_coef1: c1_t, the x0 coefficient of the posterior mean.
    posterior_mean_coef2: c2_t, the z_t coefficient of the posterior mean.
    name: the schedule's name ("linear", "cosine", "sqrt"); static.
  """
  betas: jax.Array
  alphas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array
  name: str = flax.struct.field(pytree_node=False, default="linear")

  @property
  def num_timesteps(self) -> int:
    """T, the number of discrete timesteps (a Python int: the tables' static length)."""
    return int(self.betas.shape[0])


def _betas_for_alpha_bar(num_timesteps: int, alpha_bar: Callable[[np.ndarray], np.ndarray],
                         max_beta: float) -> np.ndarray:
  """β_i = min(1 - ā((i+1)/T) / ā(i/T), max_beta), as in improved-diffusion and DiffuSeq.

  The clip keeps the last steps from having β = 1 (ᾱ = 0 exactly), which would make z_T carry no
  information but also make x0-from-ε conversions divide by zero.
  """
  t = np.arange(num_timesteps, dtype=np.float64)
  ratio = alpha_bar((t + 1) / num_timesteps) / alpha_bar(t / num_timesteps)
  return np.minimum(1.0 - ratio, max_beta)


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """DDPM's linear schedule: β evenly spaced from beta_start to beta_end (inclusive), float64 [T].

  No rescaling by 1000 / T is applied: the endpoints are exactly the given β values for any T.
  """
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal (2021) cosine schedule, ā(u) = cos²((u + s)/(1 + s) · π/2), float64 [T]."""
  def alpha_bar(u):
    return np.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
  return _betas_for_alpha_bar(num_timesteps, alpha_bar, max_beta)


def sqrt_betas(num_timesteps: int, s: float = 1e-4, max_beta: float = 0.999) -> np.ndarray:
  """DiffuSeq's square-root schedule, ā(u) = 1 - sqrt(u + s), float64 [T].

  It adds noise fast at small t (ᾱ_0 ≈ 0.977 for T = 1000), which DiffuSeq found better for
  discrete-token embeddings. ā(1) < 0, so the last β is clipped to max_beta.
  """
  def alpha_bar(u):
    return 1.0 - np.sqrt(u + s)
  return _betas_for_alpha_bar(num_timesteps, alpha_bar, max_beta)


_BETA_FNS = {"linear": linear_betas, "cosine": cosine_betas, "sqrt": sqrt_betas}
_BETA_KWARGS = {"linear": ("beta_start", "beta_end"), "cosine": ("s", "max_beta"), "sqrt": ("s", "max_beta")}


def schedule_from_betas(betas: np.ndarray, name: str = "custom") -> Schedule:
  """Builds every table of a `Schedule` from β (float64 math, float32 storage).

  Args:
    betas: [T] per-step variances, each in (0, 1].
    name: a label stored in the schedule.

  Returns:
    The `Schedule`.
  """
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.shape[0] < 2:
    raise ValueError(f"betas must be a 1-D array of at least 2 steps, got shape {betas.shape}")
  if not (np.all(betas > 0) and np.all(betas <= 1)):
    raise ValueError(f"every beta must lie in (0, 1]; got min {betas.min()}, max {betas.max()}")
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
  return Schedule(
      betas=f32(betas),
      alphas=f32(alphas),
      alphas_cumprod=f32(alphas_cumprod),
      alphas_cumprod_prev=f32(alphas_cumprod_prev),
      sqrt_alphas_cumprod=f32(np.sqrt(alphas_cumprod)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - alphas_cumprod)),
      posterior_variance=f32(posterior_variance),
      posterior_log_variance_clipped=f32(
          np.log(np.concatenate([posterior_variance[1:2], posterior_variance[1:]]))),
      posterior_mean_coef1=f32(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)),
      posterior_mean_coef2=f32((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)),
      name=name,
  )


def get_schedule(name: str, num_timesteps: int = 1000, **kw: float) -> Schedule:
  """Builds a named schedule.

  Args:
    name: "linear" (DDPM, β from `beta_start`=1e-4 to `beta_end`=0.02), "cosine" (Nichol & Dhariwal,
      `s`=0.008, β clipped to `max_beta`=0.999) or "sqrt" (DiffuSeq, ᾱ = 1 - sqrt(t/T + s), `s`=1e-4,
      β clipped to `max_beta`=0.999).
    num_timesteps: T, the number of discrete steps (>= 2).
    **kw: the schedule's own options, named above; any other keyword is an error.

  Returns:
    The `Schedule` with float32 [T] tables.
  """
  if name not in _BETA_FNS:
    raise ValueError(f"unknown noise schedule {name!r}; choose one of {SCHEDULES}")
  if int(num_timesteps) != num_timesteps or num_timesteps < 2:
    raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
  unknown = sorted(set(kw) - set(_BETA_KWARGS[name]))
  if unknown:
    raise ValueError(f"schedule {name!r} takes options {_BETA_KWARGS[name]}, not {unknown}")
  return schedule_from_betas(_BETA_FNS[name](int(num_timesteps), **kw), name=name)


def schedule_from_config(diffusion_cfg: Any) -> Schedule:
  """The one place a run builds its schedule: from `config.diffusion`.

  Reads `schedule` (name), `num_timesteps`, and for "linear" `beta_start` and `beta_end` when the
  config has them (otherwise the DDPM defaults).

  Args:
    diffusion_cfg: a ConfigDict (or any object with those attributes).

  Returns:
    The `Schedule`.
  """
  name = diffusion_cfg.schedule
  kw = {}
  if name == "linear":
    for field in ("beta_start", "beta_end"):
      value = getattr(diffusion_cfg, field, None)
      if value is not None:
        kw[field] = float(value)
  schedule = get_schedule(name, int(diffusion_cfg.num_timesteps), **kw)
  # Optional (absent = 1 = today's schedule exactly): the later version's latent scale factor.
  latent_scale = float(getattr(diffusion_cfg, "latent_scale", 1.0) or 1.0)
  if latent_scale != 1.0:
    schedule = scaled_schedule(schedule, latent_scale)
  return schedule


def broadcast_to_rank(a: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-example values a [B] to [B, 1, ..., 1] so they broadcast against x [B, ...]."""
  return jnp.reshape(a, a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Draws z_t ~ q(z_t | x0) given the noise: z_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε.

  Args:
    schedule: the noise schedule.
    x0: [B, ...] clean data.
    t: [B] int timesteps in [0, T).
    noise: ε, same shape as x0, standard normal.

  Returns:
    z_t, same shape and dtype as x0.
  """
  a = broadcast_to_rank(schedule.sqrt_alphas_cumprod[t], x0)
  b = broadcast_to_rank(schedule.sqrt_one_minus_alphas_cumprod[t], x0)
  return (a * x0 + b * noise).astype(x0.dtype)


def q_posterior_mean_variance(schedule: Schedule, x0: jax.Array, z_t: jax.Array,
                              t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of q(z_{t-1} | z_t, x0).

  Args:
    schedule: the noise schedule.
    x0: [B, ...] clean data (or an estimate of it).
    z_t: [B, ...] noisy data at step t.
    t: [B] int timesteps in [0, T).

  Returns:
    (mean [B, ...], variance [B, 1, ..., 1]); the variance is 0 at t = 0.
  """
  c1 = broadcast_to_rank(schedule.posterior_mean_coef1[t], x0)
  c2 = broadcast_to_rank(schedule.posterior_mean_coef2[t], x0)
  var = broadcast_to_rank(schedule.posterior_variance[t], x0)
  return c1 * x0 + c2 * z_t, var


# The later version (official code HEAD) clamps log-SNR to this range before shifting it.
LOG_SNR_CLAMP = 15.0


def log_snr(alphas_cumprod: np.ndarray, clamp: float = LOG_SNR_CLAMP) -> np.ndarray:
  """λ = log(ᾱ / (1 - ᾱ)), clamped to [-clamp, clamp] (float64 in, float64 out)."""
  ab = np.asarray(alphas_cumprod, np.float64)
  return np.clip(np.log(ab) - np.log1p(-ab), -clamp, clamp)


def shift_alphas_cumprod(alphas_cumprod: np.ndarray, scale: float,
                         clamp: float = LOG_SNR_CLAMP) -> np.ndarray:
  """ᾱ of data scaled by `scale`: sigmoid(clamp(λ) + 2 log scale) (Chen 2023; LD4LG's later version).

  Diffusing `scale · x` with ᾱ is, after renormalizing z_t to unit variance, diffusing x with the log-SNR
  shifted by 2 log(scale): scale < 1 means more noise at every step. scale = 1 only applies the clamp.

  Args:
    alphas_cumprod: [T] ᾱ_t in (0, 1).
    scale: the latent scale factor, > 0.
    clamp: |λ| limit applied before the shift.

  Returns:
    [T] float64 shifted ᾱ_t.
  """
  if scale <= 0:
    raise ValueError(f"latent_scale must be positive, got {scale}")
  shifted = log_snr(alphas_cumprod, clamp) + 2.0 * math.log(scale)
  return 1.0 / (1.0 + np.exp(-shifted))


def schedule_from_alphas_cumprod(alphas_cumprod: np.ndarray, name: str = "custom") -> Schedule:
  """A `Schedule` whose ᾱ is the given non-increasing table (β_t = 1 - ᾱ_t / ᾱ_{t-1}).

  Flat stretches (where a log-SNR clamp holds ᾱ constant) get β = 1e-12 instead of 0, so every table stays
  defined; ᾱ then differs from the given one by at most T · 1e-12 relatively.
  """
  ab = np.asarray(alphas_cumprod, np.float64)
  prev = np.concatenate([[1.0], ab[:-1]])
  return schedule_from_betas(np.clip(1.0 - ab / prev, 1e-12, 1.0), name=name)


def scaled_schedule(schedule: Schedule, scale: float) -> Schedule:
  """`schedule` with its log-SNR shifted by 2 log(scale) (see `shift_alphas_cumprod`); ᾱ in float64."""
  ab = np.cumprod(1.0 - np.asarray(schedule.betas, np.float64))
  return schedule_from_alphas_cumprod(shift_alphas_cumprod(ab, scale), name=f"{schedule.name}@scale{scale:g}")


def alphas_cumprod_table(name: str = "linear", num_timesteps: int = 1000, *, beta_start: float = 1e-4,
                         beta_end: float = 0.02, latent_scale: float = 1.0) -> np.ndarray:
  """ᾱ_t [T] (float64) of the schedule `schedule_from_config` builds from the same fields (equal to its
  float32 `alphas_cumprod` to float32 precision).

  For code that needs the noise level of a timestep without holding the `Schedule` (the denoiser's
  ᾱ / log-SNR time input): one computation, so network and loss always agree.
  """
  # Pure numpy (no Schedule of jax arrays): callable while a jit trace is running.
  if name not in _BETA_FNS:
    raise ValueError(f"unknown noise schedule {name!r}; choose one of {SCHEDULES}")
  kw = {"beta_start": beta_start, "beta_end": beta_end} if name == "linear" else {}
  ab = np.cumprod(1.0 - _BETA_FNS[name](int(num_timesteps), **kw))
  if latent_scale != 1.0:
    ab = shift_alphas_cumprod(ab, latent_scale)
  return ab
