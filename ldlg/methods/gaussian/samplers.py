"""Reverse-process samplers (DDPM ancestral, DDIM with η), each compiled as one XLA program.

Every sampler here is the same affine recursion over a decreasing list of timesteps τ_S > ... > τ_1:

  x̂0_i  = x0 estimate of the network at (z, τ_i)       (with self-conditioning and guidance)
  z     ← a_i x̂0_i + b_i z + σ_i ε_i,                  ε_i ~ N(0, I)

with (a_i, b_i, σ_i) precomputed in float64 from the schedule:
- DDIM (Song et al. 2021) with s = τ_{i-1} (ᾱ_s = 1 after the last step):
    σ_i = η sqrt((1-ᾱ_s)/(1-ᾱ_t)) sqrt(1 - ᾱ_t/ᾱ_s),  k_i = sqrt(1-ᾱ_s-σ_i²) / sqrt(1-ᾱ_t),
    a_i = sqrt(ᾱ_s) - k_i sqrt(ᾱ_t),  b_i = k_i          (ε̂ = (z - sqrt(ᾱ_t) x̂0)/sqrt(1-ᾱ_t) eliminated)
- DDPM ancestral (all T steps): the posterior q(z_{t-1} | z_t, x̂0): a = c1_t, b = c2_t, σ² = β̃_t.
DDIM with η = 1 over all T steps equals DDPM exactly. At the last step ᾱ_s = 1 gives a = 1, b = σ = 0,
so the sample is the final x̂0, as in the paper.

The loop is a `lax.scan` inside `jax.jit`: no host round-trip per step, one trace per input shape.

Padding: the start noise, the per-step noise and every x̂0 are zeroed at padded positions (mask False),
so padded positions of the returned latents (and trajectory) are exactly 0 and never feed the network
anything but zeros.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ldlg.methods.gaussian import condition
from ldlg.methods.gaussian import parameterization as param_lib
from ldlg.methods.gaussian.noise import batch_normal
from ldlg.methods.gaussian.denoise_fn import DenoiseFn
from ldlg.methods.gaussian.estimator import check_sample_args
from ldlg.methods.gaussian.schedules import Schedule

SAMPLERS = ("ddim", "ddpm")
# Continuous-time samplers (fast_samplers.py), routed by `sampler_from_config` under the same call signature.
CONTINUOUS_SAMPLERS = ("dpm_solver_pp_2m", "dpm_solver_pp_2m_sde", "sde_euler", "pc", "ode_adaptive")
ALL_SAMPLERS = SAMPLERS + CONTINUOUS_SAMPLERS
SampleFn = Callable[..., Any]


def mask_from_lengths(lengths: jax.Array, max_len: int) -> jax.Array:
  """Padding mask from sequence lengths.

  Args:
    lengths: [B] int, each in [0, max_len].
    max_len: L, the padded length.

  Returns:
    [B, L] bool, True at positions < length (valid).
  """
  if not isinstance(lengths, jax.core.Tracer):
    concrete = np.asarray(lengths)
    if concrete.ndim != 1:
      raise ValueError(f"lengths must be a 1-D [B] array, got shape {concrete.shape}")
    if concrete.size and (concrete.min() < 0 or concrete.max() > max_len):
      raise ValueError(f"lengths must lie in [0, max_len={max_len}], got min {concrete.min()}, max "
                       f"{concrete.max()}; raise max_len or clip the lengths")
  return jnp.arange(max_len)[None, :] < jnp.asarray(lengths)[:, None]


def sampling_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """num_steps timesteps evenly strided over [0, T-1], both ends included, in decreasing order.

  Args:
    num_timesteps: T of the schedule.
    num_steps: S <= T (S = T gives every step).

  Returns:
    int64 [S] array, strictly decreasing, first T-1, last 0.
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps must be in [1, T={num_timesteps}], got {num_steps}")
  if num_steps == 1:
    return np.array([num_timesteps - 1])
  steps = np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int64)
  # Rounding cannot merge neighbours when S <= T, since the spacing (T-1)/(S-1) is >= 1.
  return steps[::-1].copy()


def grid_size(num_timesteps: int, sample_cfg: Any) -> int:
  """S, the number of steps of a DDIM/DDPM sampling grid: T for "ddpm" (it runs every step), else num_steps."""
  return num_timesteps if sample_cfg.sampler == "ddpm" else int(sample_cfg.num_steps)


def _alphas_cumprod_f64(schedule: Schedule) -> np.ndarray:
  """ᾱ recomputed in float64 from the stored β, so 1 - ᾱ near t = 0 keeps its precision."""
  return np.cumprod(1.0 - np.asarray(schedule.betas, dtype=np.float64))


def update_coefficients(schedule: Schedule, kind: str, num_steps: int,
                        eta: float) -> dict[str, np.ndarray]:
  """The per-step coefficients of z ← a x̂0 + b z + σ ε, in sampling order (float64 numpy).

  Args:
    schedule: the noise schedule (concrete, not traced).
    kind: "ddim" or "ddpm" ("ddpm" requires num_steps == T).
    num_steps: S.
    eta: DDIM's η >= 0 (0 = deterministic); ignored by "ddpm".

  Returns:
    {"t": int [S], "alpha_bar": [S], "a": [S], "b": [S], "sigma": [S]}.
  """
  if kind not in SAMPLERS:
    raise ValueError(f"unknown sampler kind {kind!r}; choose one of {SAMPLERS}")
  T = schedule.num_timesteps
  if kind == "ddpm" and num_steps != T:
    raise ValueError(f"the DDPM ancestral sampler runs all T={T} steps, got num_steps={num_steps}; use "
                     "kind='ddim' (eta=1 matches DDPM's variance) to skip steps")
  if eta < 0:
    raise ValueError(f"eta must be >= 0, got {eta}")
  ts = sampling_timesteps(T, num_steps)
  ab_all = _alphas_cumprod_f64(schedule)
  ab_t = ab_all[ts]
  ab_s = np.concatenate([ab_all[ts[1:]], [1.0]])
  if kind == "ddpm":
    betas = np.asarray(schedule.betas, dtype=np.float64)[ts]
    a = betas * np.sqrt(ab_s) / (1.0 - ab_t)
    b = (1.0 - ab_s) * np.sqrt(1.0 - betas) / (1.0 - ab_t)
    sigma = np.sqrt(betas * (1.0 - ab_s) / (1.0 - ab_t))
  else:
    sigma = eta * np.sqrt((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s))
    k = np.sqrt(np.maximum(1.0 - ab_s - sigma**2, 0.0)) / np.sqrt(1.0 - ab_t)
    a = np.sqrt(ab_s) - k * np.sqrt(ab_t)
    b = k
  return {"t": ts, "alpha_bar": ab_t, "a": a, "b": b, "sigma": sigma}


def make_sampler(denoise_fn: DenoiseFn, schedule: Schedule, *, kind: str = "ddim",
                 num_steps: int = 250, eta: float = 1.0, guidance_scale: float = 1.0,
                 objective: str = "x0", self_condition: bool = True,
                 return_trajectory_at: Sequence[int] = (), clip_x0: Optional[float] = None,
                 num_classes: int = 0, source_conditioned: bool = False) -> SampleFn:
  """Builds a jitted sampler.

  Args:
    denoise_fn: the network as a `DenoiseFn` (output in `objective`'s parameterization).
    schedule: the training schedule (concrete).
    kind: "ddim" (strided steps, η) or "ddpm" (ancestral, all T steps).
    num_steps: S, the number of network evaluations (DDPM: must be T).
    eta: DDIM's η: 0 = deterministic, 1 = DDPM-like posterior variance.
    guidance_scale: w of classifier-free guidance, out = w·f(cond) + (1-w)·f(null) (both in one batched
      call). w = 1 is plain conditional sampling. Applied to the raw output, which is the same as
      guiding x̂0 (the conversions are affine in the output with weights that sum to one). Both halves
      see the same self-conditioning estimate: the previous step's guided x̂0.
    objective: "x0", "eps" or "v": how to read the network output.
    self_condition: feed each step the previous step's x̂0 (the first step gets none).
    return_trajectory_at: step indices in [0, S) (0 = first, noisiest step) at which to record x̂0.
    clip_x0: if set, clip x̂0 to [-clip_x0, clip_x0] (useful with "eps" at high noise); None = no clip.
    num_classes: the model's C (null class id = C); needed only when guidance_scale != 1.
    source_conditioned: the model reads a source (guidance then contrasts it with the null source).

  Returns:
    sample(params, rng, mask, cond=None, latent_dim=D) -> x0, or (x0, trajectory) when
    return_trajectory_at is non-empty, jitted with `latent_dim` static, where
      params: the network parameters;
      rng: PRNG key (start noise from one sub-key, step i's noise from fold_in(other, i));
      mask: [B, L] bool, True = valid (e.g. `mask_from_lengths`);
      cond: the conditioning (`condition.py`): a [B] int class-id array, a dict with class_id and/or
        source + source_mask, or None (unconditional: the denoiser's null class and source, no guidance);
      latent_dim: D (static);
      example_offset, global_batch: this call's rows are rows example_offset.. of a global batch of
        global_batch (static) drawn as one: a batch sharded over devices samples exactly what one call on the
        whole batch would (see noise.batch_normal); defaults: the call is the whole batch;
      noise_length: (static) the model's full length when mask is cut to a shorter length bucket: noise is
        drawn at that length and cut, so a row samples the same at any bucket width; None = mask's width;
      z_start, start_step: (start_step static) begin at step index start_step in [0, S) of the sampling grid
        from the given z_start [B, L, D] (a latent at noise level t = the grid's start_step-th timestep, e.g.
        `schedules.q_sample` of data) instead of from pure noise; the first step taken gets no self-conditioning
        estimate, and trajectory steps before start_step stay zero. Default (None, 0): pure noise, every step;
      x0: [B, L, D] float32 samples, 0 at padded positions;
      trajectory: [K, B, L, D] x̂0 at the requested steps, in the order given.
  """
  param_lib.check_objective(objective)
  coefs = update_coefficients(schedule, kind, num_steps, eta)
  traj_steps = np.asarray(tuple(return_trajectory_at), dtype=np.int64)
  if traj_steps.size and (traj_steps.min() < 0 or traj_steps.max() >= num_steps):
    raise ValueError(f"return_trajectory_at must hold step indices in [0, num_steps={num_steps}), got "
                     f"{tuple(return_trajectory_at)}")
  condition.check_guidance(guidance_scale, num_classes, source_conditioned)
  if clip_x0 is not None and clip_x0 <= 0:
    raise ValueError(f"clip_x0 must be positive or None, got {clip_x0}")
  f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
  xs = {"step": jnp.arange(num_steps), "t": jnp.asarray(coefs["t"], jnp.int32),
        "alpha_bar": f32(coefs["alpha_bar"]), "a": f32(coefs["a"]), "b": f32(coefs["b"]),
        "sigma": f32(coefs["sigma"])}

  def x0_estimate(params, z, t, mask, estimate, has_estimate, cond, alpha_bar, rng):
    """x̂0 [B, L, D] at one step, with guidance in one doubled batch when asked."""
    batch = z.shape[0]
    t_b = jnp.full((batch,), t, jnp.int32)
    self_cond = estimate if self_condition else None
    has_sc = jnp.full((batch,), has_estimate) if self_condition else None
    out = condition.guided_output(denoise_fn, params, z, t_b, mask, self_cond, has_sc, cond, rng, guidance_scale,
                        num_classes)
    x0 = param_lib.x0_from_output(objective, z, out.astype(jnp.float32),
                                  jnp.full((batch,), alpha_bar))
    if clip_x0 is not None:
      x0 = jnp.clip(x0, -clip_x0, clip_x0)
    return jnp.where(mask[..., None], x0, 0.0)

  @functools.partial(jax.jit, static_argnames=("latent_dim", "global_batch", "noise_length", "start_step"))
  def sample(params, rng, mask, cond=None, latent_dim=None, example_offset=0, global_batch=None, noise_length=None,
             z_start=None, start_step=0):
    cond = check_sample_args(mask, cond, latent_dim, global_batch)
    shape = mask.shape + (latent_dim,)
    if not 0 <= start_step < num_steps:
      raise ValueError(f"start_step must be a step index in [0, num_steps={num_steps}), got {start_step}")
    if z_start is not None and z_start.shape != shape:
      raise ValueError(f"z_start must have the samples' shape {shape} (mask's [B, L] + latent_dim), got "
                       f"{z_start.shape}")
    valid = mask[..., None]
    k_init, k_steps, k_net = jax.random.split(rng, 3)
    if z_start is None:
      z = batch_normal(k_init, shape, example_offset, global_batch, full_length=noise_length)
    else:
      z = jnp.asarray(z_start, jnp.float32)
    z = jnp.where(valid, z, 0.0)
    traj = jnp.zeros((len(traj_steps),) + shape, jnp.float32)

    def step(carry, x):
      z, estimate, traj = carry
      x0 = x0_estimate(params, z, x["t"], mask, estimate, x["step"] > start_step, cond, x["alpha_bar"],
                       jax.random.fold_in(k_net, x["step"]))
      noise = jnp.where(valid, batch_normal(jax.random.fold_in(k_steps, x["step"]), shape, example_offset,
                                            global_batch, full_length=noise_length), 0.0)
      z = x["a"] * x0 + x["b"] * z + x["sigma"] * noise
      if traj_steps.size:
        hit = jnp.asarray(traj_steps) == x["step"]
        traj = jnp.where(hit[:, None, None, None], x0[None], traj)
      return (z, x0, traj), None

    steps_taken = jax.tree.map(lambda a: a[start_step:], xs)
    (z, _, traj), _ = jax.lax.scan(step, (z, jnp.zeros(shape, jnp.float32), traj), steps_taken)
    z = jnp.where(valid, z, 0.0)
    return (z, traj) if traj_steps.size else z

  return sample


def sampler_from_config(denoise_fn: DenoiseFn, schedule: Schedule, sample_cfg: Any,
                        diffusion_cfg: Any, *, num_classes: int = 0, source_conditioned: bool = False,
                        return_trajectory_at: Sequence[int] = (), with_nfe: bool = False) -> SampleFn:
  """The one place a run builds its sampler: from `config.sample` and `config.diffusion`.

  Reads sample_cfg.`sampler` ("ddim"/"ddpm", or a continuous-time one: "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde",
  "sde_euler", "pc", "ode_adaptive", see fast_samplers.py, with optional `spacing`, `corrector_snr`,
  `corrector_steps`, and the ODE solver's `ode_rtol` / `ode_atol` (default 1e-5)), `num_steps`, `eta`,
  `guidance_scale`, and `clip_x0` if present (default None); diffusion_cfg.`objective` and `self_condition_prob`
  (self-conditioning is on when it is > 0). "ddpm" always runs all T steps, whatever num_steps says.

  Args:
    denoise_fn: the network as a `DenoiseFn`.
    schedule: the run's schedule (`schedule_from_config`).
    sample_cfg: `config.sample`.
    diffusion_cfg: `config.diffusion`.
    num_classes: the model's number of classes (needed for guidance).
    source_conditioned: the model reads a source (config.model.source_dim > 0; guidance may then be on).
    return_trajectory_at: as in `make_sampler`.
    with_nfe: the sampler returns (x0, nfe [B] int32), the network calls each example took (measured by the
      adaptive ODE solver; the fixed count of the others). Not with return_trajectory_at.

  Returns:
    The sampler of `make_sampler`.
  """
  if with_nfe and return_trajectory_at:
    raise ValueError("with_nfe and return_trajectory_at cannot be combined")
  kind = sample_cfg.sampler
  if kind in CONTINUOUS_SAMPLERS:
    if return_trajectory_at:
      raise ValueError(f"the {kind} sampler does not return a trajectory; use sampler='ddim' for that")
    from ldlg.methods.gaussian import fast_samplers  # pylint: disable=import-outside-toplevel
    get = lambda field, default: sample_cfg.get(field, default) if hasattr(sample_cfg, "get") else getattr(
        sample_cfg, field, default)
    return fast_samplers.make_continuous_sampler(
        denoise_fn, schedule, kind=kind, num_steps=int(sample_cfg.num_steps), spacing=get("spacing", None) or None,
        guidance_scale=float(get("guidance_scale", 1.0)), objective=getattr(diffusion_cfg, "objective", "x0"),
        self_condition=float(getattr(diffusion_cfg, "self_condition_prob", 0.5)) > 0,
        clip_x0=get("clip_x0", None), num_classes=int(num_classes), source_conditioned=source_conditioned,
        snr=float(get("corrector_snr", 0.16)),
        num_corrector_steps=int(get("corrector_steps", 1)), rtol=float(get("ode_rtol", 1e-5)),
        atol=float(get("ode_atol", 1e-5)), with_nfe=with_nfe)
  num_steps = grid_size(schedule.num_timesteps, sample_cfg)
  sample = make_sampler(
      denoise_fn, schedule, kind=kind, num_steps=num_steps, eta=float(getattr(sample_cfg, "eta", 1.0)),
      guidance_scale=float(getattr(sample_cfg, "guidance_scale", 1.0)),
      objective=getattr(diffusion_cfg, "objective", "x0"),
      self_condition=float(getattr(diffusion_cfg, "self_condition_prob", 0.5)) > 0,
      return_trajectory_at=tuple(return_trajectory_at), clip_x0=getattr(sample_cfg, "clip_x0", None),
      num_classes=int(num_classes), source_conditioned=source_conditioned)
  if not with_nfe:
    return sample

  def sample_with_nfe(params, rng, mask, *args, **kwargs):
    return sample(params, rng, mask, *args, **kwargs), jnp.full(mask.shape[:1], num_steps, jnp.int32)
  return sample_with_nfe
