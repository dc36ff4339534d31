"""Continuous-time samplers: DPM-Solver++(2M), reverse-SDE Euler–Maruyama, predictor–corrector, and the dispatcher.

All of them run on a decreasing grid of N evaluation times t_0 = 1 > ... > t_{N-1} = t_min (`continuous.time_grid`)
and make one network evaluation per grid point (predictor–corrector: 1 + n_corrector); the last evaluation's x̂0
is the sample, as in DDIM (the final "denoising" step of Song et al.). With α = sqrt(ᾱ(t)), σ = sqrt(1 - ᾱ(t)):

- DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, data prediction): with h_i = λ_{i+1} - λ_i in half-log-SNR
  λ = log(α/σ), r_i = h_{i-1}/h_i and D_i = (1 + 1/(2r_i)) x̂0_i - 1/(2r_i) x̂0_{i-1} (D_0 = x̂0_0),
    z ← (σ_{i+1}/σ_i) z - α_{i+1} (e^{-h_i} - 1) D_i.
  Its first-order form is DDIM (η = 0). The step into the last grid time is first order too (DPM-Solver's
  "lower_order_final"): it is the longest step in λ on time-uniform grids, where r is small and the 2M
  extrapolation overshoots (with the Gaussian oracle at 10 steps it doubled the sample variance); the final
  step to t = 0 returns x̂0.
- SDE-DPM-Solver++(2M) (Lu et al. 2022, the solver of the reverse diffusion SDE in data prediction; diffusers'
  `algorithm_type="sde-dpmsolver++"`): the same D_i, with fresh noise each step,
    z ← (σ_{i+1}/σ_i) e^{-h_i} z + α_{i+1} (1 - e^{-2h_i}) D_i + σ_{i+1} sqrt(1 - e^{-2h_i}) ε.
  Its first-order form is DDIM with η = 1 (the DDPM posterior q(z_{i+1} | z_i, x̂0)), the project's default
  sampler, so it is the second-order version of what LD4LG samples with; first-order first and last steps as above.
- Reverse-SDE Euler–Maruyama for dz = [-½β z - β ∇log p_t(z)] dt + sqrt(β) dw̄ with ∇log p_t(z) =
  -(z - α x̂0)/σ²: z ← z + (½β z + β ∇log p) Δ + sqrt(βΔ) ε, Δ = t_i - t_{i+1}. Needs hundreds of steps
  (the drift is stiff where σ² is small).
- Predictor–corrector (Song et al. 2021): Langevin corrector z ← z + s ∇log p + sqrt(2s) ε with
  s = 2 a (r ‖ε‖ / ‖∇log p‖)² (target SNR r, a = 1 - β of one discrete step at t; norms per example over
  its valid entries, so the result does not depend on the batch), then the reverse-diffusion predictor of the
  forward transition t_{i+1} → t_i with β_s = 1 - ᾱ(t_i)/ᾱ(t_{i+1}):
    z ← (2 - sqrt(1 - β_s)) z + β_s ∇log p + sqrt(β_s) ε.
Both DPM-Solver++ forms and Euler–Maruyama are affine in (x̂0_i, x̂0_{i-1}, z, ε) with coefficients precomputed in
float64 (`affine_coefficients`): z ← a x̂0_i + c x̂0_{i-1} + b z + σ ε.

Every sampler has `samplers.make_sampler`'s call signature, is one `lax.scan` inside `jax.jit` (one trace per
shape), carries the self-conditioning estimate (the previous x̂0) from evaluation to evaluation, applies
classifier-free guidance in one doubled batch, zeroes padded positions, and draws every noise array through
`noise.batch_normal`, so sampling a global batch split over devices equals sampling it whole.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ldlg.methods.gaussian import continuous as ct
from ldlg.methods.gaussian import noise as noise_lib
from ldlg.methods.gaussian.denoise_fn import DenoiseFn
from ldlg.methods.gaussian.estimator import check_sample_args, make_x0_estimator
from ldlg.methods.gaussian.schedules import Schedule

from ldlg.methods.gaussian.samplers import CONTINUOUS_SAMPLERS  # noqa: E402  (one list of names)
DEFAULT_SPACING = {"dpm_solver_pp_2m": "logsnr_uniform", "dpm_solver_pp_2m_sde": "logsnr_uniform",
                   "sde_euler": "time_uniform", "pc": "time_uniform"}
SampleFn = Callable[..., Any]


def as_continuous(schedule: Union[Schedule, ct.ContinuousSchedule]) -> ct.ContinuousSchedule:
  """A `ContinuousSchedule` from either a discrete `Schedule` (its continuous view) or itself."""
  return schedule if isinstance(schedule, ct.ContinuousSchedule) else ct.from_discrete(schedule)


def affine_coefficients(cs: ct.ContinuousSchedule, kind: str, ts: np.ndarray) -> dict[str, np.ndarray]:
  """Per-step z ← a x̂0_i + c x̂0_{i-1} + b z + σ ε coefficients on the grid ts (float64 numpy).

  Args:
    cs: the continuous schedule.
    kind: "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde" or "sde_euler".
    ts: [N] decreasing evaluation times.

  Returns:
    {"t", "a", "b", "c", "sigma"}, each [N]; the last step has a = 1 and b = c = σ = 0.
  """
  ab = ct.alpha_bar(cs, ts, np)
  alpha, sig = np.sqrt(ab), np.sqrt(1.0 - ab)
  n = len(ts)
  a, b, c, sigma = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
  if kind in ("dpm_solver_pp_2m", "dpm_solver_pp_2m_sde"):
    sde = kind == "dpm_solver_pp_2m_sde"
    lam = np.log(alpha) - np.log(sig)
    h = np.diff(lam)
    for i in range(n - 1):
      # gain: the weight of D_i; ODE α_{i+1} (1 - e^{-h}), SDE α_{i+1} (1 - e^{-2h}).
      gain = -alpha[i + 1] * np.expm1(-(2.0 if sde else 1.0) * h[i])
      b[i] = sig[i + 1] / sig[i] * (np.exp(-h[i]) if sde else 1.0)
      if sde:
        sigma[i] = sig[i + 1] * np.sqrt(-np.expm1(-2.0 * h[i]))
      if i == 0 or i == n - 2:  # first step; and lower-order final (see module docstring)
        a[i] = gain
      else:
        r = h[i - 1] / h[i]
        a[i] = gain * (1.0 + 0.5 / r)
        c[i] = -gain * 0.5 / r
  elif kind == "sde_euler":
    dt = -np.diff(ts)
    beta = ct.beta(cs, ts[:-1], np)
    var = 1.0 - ab[:-1]
    b[:-1] = 1.0 + 0.5 * beta * dt - beta * dt / var
    a[:-1] = beta * alpha[:-1] * dt / var
    sigma[:-1] = np.sqrt(beta * dt)
  else:
    raise ValueError(f"no affine coefficients for sampler kind {kind!r}")
  a[-1] = 1.0
  return {"t": ts, "a": a, "b": b, "c": c, "sigma": sigma}


def _make_sample(body: Callable[..., jax.Array]) -> SampleFn:
  """Wraps body(params, z, mask, cond, key, noise) -> x0 in the shared jitted `sample` signature."""

  @functools.partial(jax.jit, static_argnames=("latent_dim", "global_batch", "noise_length"))
  def sample(params, rng, mask, cond=None, latent_dim=None, example_offset=0, global_batch=None, noise_length=None):
    cond = check_sample_args(mask, cond, latent_dim, global_batch)
    shape = mask.shape + (latent_dim,)
    valid = mask[..., None]

    def noise(key):
      return jnp.where(valid, noise_lib.batch_normal(key, shape, example_offset, global_batch,
                                                     full_length=noise_length), 0.0)

    k_init, k_body = jax.random.split(rng)
    z = body(params, noise(k_init), mask, cond, k_body, noise)
    return jnp.where(valid, z, 0.0)

  return sample


def make_affine_sampler(x0_fn: Callable[..., jax.Array], coefs: dict[str, np.ndarray]) -> SampleFn:
  """The scan of z ← a x̂0_i + c x̂0_{i-1} + b z + σ ε (DPM-Solver++(2M), its SDE form, Euler–Maruyama)."""
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  xs = {"step": jnp.arange(len(coefs["t"])), "t": f32(coefs["t"]), "a": f32(coefs["a"]),
        "b": f32(coefs["b"]), "c": f32(coefs["c"]), "sigma": f32(coefs["sigma"])}
  stochastic = bool(np.any(coefs["sigma"] > 0))

  def body(params, z, mask, cond, key, noise):
    k_steps, k_net = jax.random.split(key)

    def step(carry, x):
      z, prev = carry  # prev: the previous x̂0, both the multistep history and the self-conditioning input
      x0 = x0_fn(params, z, x["t"], mask, prev, x["step"] > 0, cond, jax.random.fold_in(k_net, x["step"]))
      z = x["a"] * x0 + x["c"] * prev + x["b"] * z
      if stochastic:
        z = z + x["sigma"] * noise(jax.random.fold_in(k_steps, x["step"]))
      return (z, x0), None

    (z, _), _ = jax.lax.scan(step, (z, jnp.zeros_like(z)), xs)
    return z

  return _make_sample(body)


def make_pc_sampler(x0_fn: Callable[..., jax.Array], cs: ct.ContinuousSchedule, ts: np.ndarray, *,
                    num_corrector_steps: int = 1, snr: float = 0.16) -> SampleFn:
  """Predictor–corrector: n Langevin corrector steps, then the reverse-diffusion predictor, at each grid time."""
  if num_corrector_steps < 0 or snr <= 0:
    raise ValueError(f"need num_corrector_steps >= 0 and snr > 0, got {num_corrector_steps}, {snr}")
  ab = ct.alpha_bar(cs, ts, np)
  ab_next = np.concatenate([ab[1:], [1.0]])
  beta_s = 1.0 - ab / ab_next
  var = 1.0 - ab
  pred_a = beta_s * np.sqrt(ab) / var
  pred_b = 2.0 - np.sqrt(1.0 - beta_s) - beta_s / var
  pred_sigma = np.sqrt(beta_s)
  pred_a[-1], pred_b[-1], pred_sigma[-1] = 1.0, 0.0, 0.0
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  xs = {"step": jnp.arange(len(ts)), "t": f32(ts), "ab": f32(ab), "a": f32(pred_a), "b": f32(pred_b),
        "sigma": f32(pred_sigma),
        # Song et al.'s VP corrector scales the step by α_i = 1 - β_i of the discrete chain at t.
        "lang_alpha": f32(np.exp(-ct.beta(cs, ts, np) / cs.num_timesteps))}
  n_corr = int(num_corrector_steps)

  def body(params, z, mask, cond, key, noise):
    k_pred, k_corr, k_net = jax.random.split(key, 3)
    valid = mask[..., None]
    norm = lambda v: jnp.sqrt(jnp.sum(jnp.where(valid, v * v, 0.0), axis=(1, 2)))[:, None, None]

    def step(carry, x):
      z, estimate = carry
      net_key = lambda j: jax.random.fold_in(jax.random.fold_in(k_net, x["step"]), j)

      def corrector(j, carry):
        z, estimate = carry
        x0 = x0_fn(params, z, x["t"], mask, estimate, (x["step"] > 0) | (j > 0), cond, net_key(j))
        score = jnp.where(valid, -(z - jnp.sqrt(x["ab"]) * x0) / (1.0 - x["ab"]), 0.0)
        eps = noise(jax.random.fold_in(jax.random.fold_in(k_corr, x["step"]), j))
        g = norm(score)
        s = jnp.where(g > 0, 2.0 * x["lang_alpha"] * (snr * norm(eps) / jnp.maximum(g, 1e-30)) ** 2, 0.0)
        return z + s * score + jnp.sqrt(2.0 * s) * eps, x0

      z, estimate = jax.lax.fori_loop(0, n_corr, corrector, (z, estimate))
      x0 = x0_fn(params, z, x["t"], mask, estimate, (x["step"] > 0) | (n_corr > 0), cond, net_key(n_corr))
      z = x["a"] * x0 + x["b"] * z + x["sigma"] * noise(jax.random.fold_in(k_pred, x["step"]))
      return (z, x0), None

    (z, _), _ = jax.lax.scan(step, (z, jnp.zeros_like(z)), xs)
    return z

  return _make_sample(body)


def make_continuous_sampler(denoise_fn: DenoiseFn, schedule: Union[Schedule, ct.ContinuousSchedule], *,
                            kind: str, num_steps: int = 20, spacing: Optional[str] = None,
                            t_min: Optional[float] = None, guidance_scale: float = 1.0, objective: str = "x0",
                            self_condition: bool = True, clip_x0: Optional[float] = None,
                            num_classes: int = 0, time_input: str = "nearest",
                            num_corrector_steps: int = 1, snr: float = 0.16, rtol: float = 1e-5,
                            atol: float = 1e-5, solver: str = "tsit5", max_steps: int = 4096,
                            with_nfe: bool = False, source_conditioned: bool = False) -> SampleFn:
  """Builds a continuous-time sampler by name (the route for `config.sample.sampler`).

  Args:
    denoise_fn: the network as a `DenoiseFn`.
    schedule: the training `Schedule` (its continuous view is used) or a `ContinuousSchedule`.
    kind: "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde", "sde_euler", "pc" or "ode_adaptive".
    num_steps: N grid points (network evaluations; pc: N (1 + num_corrector_steps)); ignored by "ode_adaptive".
    spacing: "time_uniform" or "logsnr_uniform" (`continuous.time_grid`); None = the kind's default
      (logsnr_uniform for both DPM-Solver++ variants, time_uniform for Euler–Maruyama and pc).
    t_min: the last evaluation time, default 1/T (discrete step 0).
    guidance_scale, objective, self_condition, clip_x0, num_classes: as in `samplers.make_sampler`.
    time_input: the network time rule, "nearest" or "fractional" (`continuous.network_time`).
    num_corrector_steps, snr: the predictor–corrector's Langevin steps per grid time and target SNR.
    rtol, atol, solver, max_steps: the adaptive ODE solver's options (`pf_ode.make_ode_sampler`).
    with_nfe: return (x0, nfe [B] int32, network calls per example) from every kind; otherwise x0 alone.
    source_conditioned: the model reads a source (guidance then contrasts it with the null source).

  Returns:
    sample(params, rng, mask, cond=None, latent_dim=D, example_offset=0, global_batch=None, noise_length=None)
    -> x0 [B, L, D] (or (x0, nfe)), jitted with latent_dim, global_batch and noise_length static (see
    `samplers.make_sampler`); x0 is 0 at padded positions.
  """
  if kind not in CONTINUOUS_SAMPLERS:
    raise ValueError(f"unknown continuous sampler kind {kind!r}; choose one of {CONTINUOUS_SAMPLERS}")
  cs = as_continuous(schedule)
  x0_fn = make_x0_estimator(denoise_fn, cs, objective=objective, self_condition=self_condition,
                            guidance_scale=guidance_scale, num_classes=num_classes, clip_x0=clip_x0,
                            time_input=time_input, source_conditioned=source_conditioned)
  if kind == "ode_adaptive":
    from ldlg.methods.gaussian import pf_ode  # diffrax is imported only when the ODE sampler is asked for
    ode_sample = pf_ode.make_ode_sampler(x0_fn, cs, self_condition=self_condition, t_min=t_min, rtol=rtol,
                                         atol=atol, solver=solver, max_steps=max_steps)
    if with_nfe:
      return ode_sample
    return lambda *args, **kwargs: ode_sample(*args, **kwargs)[0]
  ts = ct.time_grid(cs, num_steps, spacing or DEFAULT_SPACING[kind], t_min)
  if kind == "pc":
    sample = make_pc_sampler(x0_fn, cs, ts, num_corrector_steps=num_corrector_steps, snr=snr)
    nfe = num_steps * (1 + num_corrector_steps)
  else:
    sample = make_affine_sampler(x0_fn, affine_coefficients(cs, kind, ts))
    nfe = num_steps
  if not with_nfe:
    return sample

  def sample_with_nfe(params, rng, mask, *args, **kwargs):
    return sample(params, rng, mask, *args, **kwargs), jnp.full(mask.shape[:1], nfe, jnp.int32)
  return sample_with_nfe
