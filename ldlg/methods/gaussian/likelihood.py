"""Likelihood of data latents: exact NLL through the probability-flow ODE, and the DDPM chain's variational bound.

`ode_nll` (Song et al. 2021, instantaneous change of variables; Chen et al. 2018): along the PF-ODE
dz/dλ = g(z, λ) = ½α(x̂0 - αz) of `pf_ode`, d log p(z_λ)/dλ = -div g, so integrating from the data at
λ_hi = λ(t_min) to λ_lo = λ(1) gives

  log p(x) = log N(z_lo; 0, I) + ∫_{λ_hi}^{λ_lo} div g dλ,   div g = ½α (div_z x̂0 - α n),

with n the number of valid entries. div_z x̂0 is the exact Jacobian trace (`trace="exact"`, one forward-mode
pass per entry: for small widths and tests) or Hutchinson's unbiased estimate vᵀ(∂x̂0/∂z)v with probes v fixed
along the path (`trace="hutchinson"`). It is the likelihood of the data *as a sample at t_min* (the least noise
the discrete model knows), which differs from log p_0 by O(1 - ᾱ(t_min)); the prior N(0, I) stands in for
p_1, off by O(ᾱ(1)).

`vlb_nll` is the discrete-time bound of the DDPM chain the samplers in `samplers.py` run (steps 0..T-1,
p(z_{T-1}) = N(0, I), reverse variance β̃_t, and a Gaussian decoder p(x | z_0) = N(x̂0(z_0), σ_dec²) with
σ_dec² = β_0 by default, DDPM's σ_1² = β_1):

  -log p(x) <= KL(q(z_{T-1}|x) || N(0,I)) + Σ_{t=1}^{T-1} E_q KL(q(z_{t-1}|z_t,x) || p(z_{t-1}|z_t))
               - E_q log p(x|z_0)

where each KL is c1_t² ||x - x̂0(z_t)||² / (2 β̃_t) (equal variances), one noise draw per term.

Both report nats: per example in total, per latent dimension (divided by the valid entries L_valid·D) and per
token (divided by L_valid); padded positions never enter. Padding and Hutchinson probes are drawn through
`noise.batch_normal`, so a batch split over devices gives the same numbers. Self-conditioning, if the model uses
it, is applied in two passes (`estimator.two_pass_x0`) so that x̂0 is a function of (z, t) alone.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ldlg.methods.gaussian import condition
from ldlg.methods.gaussian import continuous as ct
from ldlg.methods.gaussian import noise as noise_lib
from ldlg.methods.gaussian import pf_ode
from ldlg.methods.gaussian.denoise_fn import DenoiseFn
from ldlg.methods.gaussian.estimator import make_x0_estimator, two_pass_x0
from ldlg.methods.gaussian.schedules import Schedule

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
_LOG_2PI = float(np.log(2 * np.pi))


def _check(latents: jax.Array, mask: jax.Array) -> None:
  if latents.ndim != 3 or mask.shape != latents.shape[:2] or mask.dtype != jnp.bool_:
    raise ValueError(f"need latents [B, L, D] and a bool mask [B, L]; got {latents.shape}, {mask.dtype} "
                     f"{mask.shape}")


def _report(total_nll: jax.Array, mask: jax.Array, latent_dim: int, prefix: str) -> dict[str, jax.Array]:
  tokens = jnp.maximum(jnp.sum(mask, axis=1), 1).astype(jnp.float32)
  return {prefix: total_nll, f"{prefix}_per_token": total_nll / tokens,
          f"{prefix}_per_dim": total_nll / (tokens * latent_dim)}


def ode_nll(denoise_fn: DenoiseFn, schedule: Union[Schedule, ct.ContinuousSchedule], params: Any,
            rng: jax.Array, latents: jax.Array, mask: jax.Array, cond: Any = None, *,
            objective: str = "x0", self_condition: bool = True, time_input: str = "nearest",
            t_min: Optional[float] = None, trace: str = "hutchinson", num_probes: int = 1,
            probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5, solver: str = "tsit5",
            max_steps: int = 4096, example_offset=0, global_batch: Optional[int] = None) -> dict[str, jax.Array]:
  """NLL of latents under the model's probability-flow ODE (pure; jit it with the options static).

  Args:
    denoise_fn: the network.
    schedule: the training `Schedule` or a `ContinuousSchedule`.
    params: the network parameters.
    rng: key for the Hutchinson probes.
    latents: [B, L, D] data latents.
    mask: [B, L] bool, True = valid.
    cond: the conditioning (`condition.py`: [B] class ids, or a dict with class_id / source), or None.
    objective, self_condition, time_input: how the network is read (`estimator.make_x0_estimator`).
    t_min: where the data sits on the path, default 1/T.
    trace: "exact" or "hutchinson".
    num_probes: Hutchinson probes per example (averaged).
    probe: "rademacher" (lower variance) or "gaussian".
    rtol, atol, solver, max_steps: the adaptive solver's options (`pf_ode.solve`).
    example_offset, global_batch: this shard's place in a global batch (probe noise as in `noise.batch_normal`).

  Returns:
    {"nll", "nll_per_token", "nll_per_dim", "prior_logp", "delta_logp", "nfe"}, each [B]: nats; log N(z_1; 0, I);
    ∫ div g; network calls (nfe counts a forward pass with its trace as one call).
  """
  _check(latents, mask)
  if trace not in TRACES or probe not in PROBES:
    raise ValueError(f"trace must be one of {TRACES} and probe one of {PROBES}; got {trace!r}, {probe!r}")
  cs = schedule if isinstance(schedule, ct.ContinuousSchedule) else ct.from_discrete(schedule)
  t_min = 1.0 / cs.num_timesteps if t_min is None else float(t_min)
  x0_fn = two_pass_x0(make_x0_estimator(denoise_fn, cs, objective=objective, self_condition=self_condition,
                                        time_input=time_input), self_condition)
  batch, length, dim = latents.shape
  latents = jnp.where(mask[..., None], latents.astype(jnp.float32), 0.0)
  k_probe, k_net = jax.random.split(rng)
  probes = jnp.zeros((batch, 1, length, dim))
  if trace == "hutchinson":
    draws = noise_lib.batch_normal(k_probe, (batch, num_probes, length, dim), example_offset, global_batch)
    probes = jnp.sign(draws) if probe == "rademacher" else draws
    probes = jnp.where(mask[:, None, :, None], probes, 0.0)

  def one(x, mask_b, cond_b, probes_b):
    n_valid = jnp.sum(mask_b).astype(jnp.float32) * dim
    cond_1 = condition.add_batch_axis(cond_b)

    def x0_of(z, lam):
      t = ct.t_from_log_snr(cs, lam)
      return jnp.where(mask_b[:, None], x0_fn(params, z[None], t, mask_b[None], cond_1, k_net)[0], 0.0)

    def field(lam, state):
      z, _ = state
      alpha = jnp.sqrt(jax.nn.sigmoid(lam))
      f = lambda z: x0_of(z, lam)
      if trace == "exact":
        jac = jax.jacfwd(f)(z).reshape(length * dim, length * dim)
        x0, div_x0 = f(z), jnp.trace(jac)
      else:
        x0, jvps = jax.vmap(lambda v: jax.jvp(f, (z,), (v,)))(probes_b)
        x0, div_x0 = x0[0], jnp.mean(jnp.sum(probes_b * jvps, axis=(1, 2)))
      dz = jnp.where(mask_b[:, None], 0.5 * alpha * (x0 - alpha * z), 0.0)
      return dz, 0.5 * alpha * (div_x0 - alpha * n_valid)

    lam_hi, lam_lo = (jnp.float32(ct.log_snr(cs, t, np)) for t in (t_min, 1.0))
    (z1, delta), evals = pf_ode.solve(field, (x, jnp.float32(0.0)), lam_hi, lam_lo, rtol=rtol, atol=atol,
                                      solver=solver, max_steps=max_steps)
    prior = -0.5 * (jnp.sum(jnp.where(mask_b[:, None], z1 * z1, 0.0)) + n_valid * _LOG_2PI)
    return prior, delta, evals

  if cond is None:
    prior, delta, evals = jax.vmap(lambda a, b, p: one(a, b, None, p))(latents, mask, probes)
  else:
    prior, delta, evals = jax.vmap(one)(latents, mask, condition.check(cond, batch), probes)
  out = _report(-(prior + delta), mask, dim, "nll")
  out.update(prior_logp=prior, delta_logp=delta, nfe=evals * (2 if self_condition else 1))
  return out


def vlb_nll(denoise_fn: DenoiseFn, schedule: Schedule, params: Any, rng: jax.Array, latents: jax.Array,
            mask: jax.Array, cond: Any = None, *, objective: str = "x0",
            self_condition: bool = True, num_terms: Optional[int] = None,
            decoder_variance: Optional[float] = None, example_offset=0,
            global_batch: Optional[int] = None) -> dict[str, jax.Array]:
  """The DDPM chain's variational bound on -log p(latents) (pure; jit it with the options static).

  Args:
    denoise_fn: the network.
    schedule: the discrete training `Schedule` (T steps).
    params, rng, latents [B, L, D], mask [B, L], cond: as in `ode_nll`.
    objective, self_condition: how the network is read.
    num_terms: None sums all T-1 diffusion terms (T network calls); K draws, per example, one step uniformly
      from each of K equal strata of [1, T-1] weighted by the stratum's size: an unbiased estimate (K + 1 calls).
    decoder_variance: σ_dec² of p(x | z_0); default β_0.
    example_offset, global_batch: as in `noise.batch_normal`.

  Returns:
    {"vlb", "vlb_per_token", "vlb_per_dim", "prior", "diffusion", "decoder"}, each [B], nats.
  """
  _check(latents, mask)
  T = schedule.num_timesteps
  betas = np.asarray(schedule.betas, np.float64)
  ab = np.cumprod(1.0 - betas)
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
  # KL weight c1_t² / (2 β̃_t) of each term, t >= 1 (β̃_0 = 0: step 0 is the decoder's).
  weight = np.zeros(T)
  weight[1:] = (betas[1:] * np.sqrt(ab_prev[1:]) / (1.0 - ab[1:])) ** 2 / (2.0 * post_var[1:])
  dec_var = float(betas[0] if decoder_variance is None else decoder_variance)
  cs = ct.from_discrete(schedule)
  x0_fn = two_pass_x0(make_x0_estimator(denoise_fn, cs, objective=objective, self_condition=self_condition),
                      self_condition)
  batch, length, dim = latents.shape
  valid = mask[..., None]
  x = jnp.where(valid, latents.astype(jnp.float32), 0.0)
  sq_err_sum = lambda a: jnp.sum(jnp.where(valid, a * a, 0.0), axis=(1, 2))
  n_valid = jnp.sum(mask, axis=1).astype(jnp.float32) * dim
  k_terms, k_pick, k_net = jax.random.split(rng, 3)
  ab32 = jnp.asarray(ab, jnp.float32)
  w32 = jnp.asarray(weight, jnp.float32)

  def sq_err_at(t, fold):
    """||x - x̂0(z_t)||² over valid entries, with z_t ~ q(z_t | x); t: [] or [B] int steps. Returns [B]."""
    eps = noise_lib.batch_normal(jax.random.fold_in(k_terms, fold), x.shape, example_offset, global_batch)
    a = jnp.reshape(ab32[t], jnp.shape(t) + (1, 1))
    z = jnp.where(valid, jnp.sqrt(a) * x + jnp.sqrt(1.0 - a) * eps, 0.0)
    x0 = x0_fn(params, z, (t + 1.0) / T, mask, cond, jax.random.fold_in(k_net, fold))
    return sq_err_sum(x - x0)

  if num_terms is None:
    diffusion = jax.lax.scan(lambda acc, t: (acc + w32[t] * sq_err_at(t, t), None), jnp.zeros(batch),
                             jnp.arange(1, T))[0]
  else:
    # Per example, one step drawn uniformly from each of K equal strata of [1, T-1], weighted by the stratum's
    # size: unbiased, and far less variable than uniform draws (the terms at small t are orders of magnitude
    # larger than the rest). Drawn for the global batch and sliced, like the noise.
    if not 1 <= num_terms <= T - 1:
      raise ValueError(f"num_terms must be in [1, T-1={T - 1}] or None, got {num_terms}")
    edges = 1 + np.round(np.linspace(0, T - 1, int(num_terms) + 1)).astype(np.int64)
    lo, size = jnp.asarray(edges[:-1]), jnp.asarray(np.diff(edges))
    u = jax.random.uniform(k_pick, (global_batch or batch, int(num_terms)))
    u = jax.lax.dynamic_slice_in_dim(u, example_offset, batch, axis=0)
    ts = lo + jnp.minimum(jnp.floor(u * size).astype(jnp.int32), size - 1)  # [B, K]
    step = lambda acc, k: (acc + size[k] * w32[ts[:, k]] * sq_err_at(ts[:, k], k + 1), None)
    diffusion = jax.lax.scan(step, jnp.zeros(batch), jnp.arange(int(num_terms)))[0]
  a_last = float(ab[-1])
  prior = 0.5 * (a_last * sq_err_sum(x) + n_valid * ((1.0 - a_last) - 1.0 - np.log1p(-a_last)))
  decoder = 0.5 * (n_valid * (_LOG_2PI + np.log(dec_var)) + sq_err_at(jnp.int32(0), 0) / dec_var)
  out = _report(prior + diffusion + decoder, mask, dim, "vlb")
  out.update(prior=prior, diffusion=diffusion, decoder=decoder)
  return out
