"""The probability-flow ODE, solved adaptively with diffrax: sampling, encoding and the likelihood's flow.

The PF-ODE of the VP SDE, dz/dt = -½β(t) (z + ∇log p_t(z)), written in the log-SNR λ = log(ᾱ/(1-ᾱ)) instead
of t, with ∇log p_t(z) = -(z - α x̂0)/σ² and dλ/dt = -β/σ², is

  dz/dλ = ½ α (x̂0(z, λ) - α z),        α = sqrt(sigmoid(λ)),

whatever the schedule: the schedule only maps λ back to the network's time input (`continuous.t_from_log_snr`).
Integrating in λ keeps the field smooth where β(t) is piecewise constant (every discrete view) and the state
O(1) (unlike the DDIM variable z/α), so an adaptive solver takes few steps. Each example is solved on its own
(`jax.vmap` over the batch), with its own step sizes and its own function-evaluation count, so results do not
depend on which examples share a batch. A solve that hits `max_steps` returns NaN rather than raising.

Function evaluations. diffrax does not count them; for its FSAL Runge–Kutta solvers (Tsit5, Dopri5: 7 stages)
a solve with automatic initial step costs 1 + 6 per attempted step (measured with a counting field in
diffrax 0.7.2, and checked by `tests/test_continuous_time.py`). With self-conditioning each
evaluation is two network calls (`estimator.two_pass_x0`); `nfe` counts network calls.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import diffrax
import jax
import jax.numpy as jnp

from ldlg.methods.gaussian import condition
from ldlg.methods.gaussian import continuous as ct
from ldlg.methods.gaussian import noise as noise_lib
from ldlg.methods.gaussian.estimator import check_sample_args, two_pass_x0

SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}
_NEW_STAGES_PER_STEP = 6  # both solvers: 7 stages, the first reused from the previous step (FSAL)


def evals_of_solve(num_steps: jax.Array) -> jax.Array:
  """Vector-field evaluations of one adaptive solve with `num_steps` attempted steps (see module docstring)."""
  return 1 + _NEW_STAGES_PER_STEP * num_steps


def solve(field: Callable[[jax.Array, Any], Any], y0: Any, lam0: jax.Array, lam1: jax.Array, *,
          rtol: float, atol: float, solver: str, max_steps: int) -> tuple[Any, jax.Array]:
  """Integrates dy/dλ = field(λ, y) from lam0 to lam1 (either direction) for ONE example.

  Args:
    field: (λ, y) -> dy/dλ, y any pytree.
    y0: the state at lam0.
    lam0, lam1: scalar log-SNRs.
    rtol, atol: the PID controller's tolerances.
    solver: "tsit5" or "dopri5".
    max_steps: the cap on attempted steps.

  Returns:
    (y at lam1 — NaN where the solve failed —, vector-field evaluations as int32 []).
  """
  if solver not in SOLVERS:
    raise ValueError(f"unknown ODE solver {solver!r}; choose one of {tuple(SOLVERS)}")
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(lambda lam, y, args: field(lam, y)), SOLVERS[solver](), lam0, lam1, dt0=None, y0=y0,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
      saveat=diffrax.SaveAt(t1=True), throw=False)
  ok = sol.result == diffrax.RESULTS.successful
  y1 = jax.tree.map(lambda y: jnp.where(ok, y[0], jnp.nan), sol.ys)
  return y1, evals_of_solve(sol.stats["num_steps"]).astype(jnp.int32)


def velocity(x0_fn2: Callable[..., jax.Array], cs: ct.ContinuousSchedule) -> Callable[..., jax.Array]:
  """field(params, λ, z, mask, cond, rng) -> dz/dλ for one example: z [L, D], mask [L], cond one example's
  conditioning (`condition.py`, no batch axis) or None."""
  def field(params, lam, z, mask, cond, rng):
    alpha = jnp.sqrt(jax.nn.sigmoid(lam))
    t = ct.t_from_log_snr(cs, lam)
    x0 = x0_fn2(params, z[None], t, mask[None], condition.add_batch_axis(cond), rng)[0]
    return jnp.where(mask[:, None], 0.5 * alpha * (x0 - alpha * z), 0.0)
  return field


def make_pf_ode_solver(x0_fn: Callable[..., jax.Array], cs: ct.ContinuousSchedule, *, self_condition: bool,
                       rtol: float = 1e-5, atol: float = 1e-5, solver: str = "tsit5",
                       max_steps: int = 4096) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """Builds solve_batch(params, z, mask, t_start, t_end, cond=None, rng=None) -> (z_end, nfe).

  t_start > t_end decodes (noise → data), t_start < t_end encodes. z: [B, L, D]; mask [B, L]; times: scalars in
  (0, 1], Python or traced (one compiled program serves both directions); cond as in samplers; returns z_end
  [B, L, D] (0 at padding) and nfe [B] int32 network calls per example. Not jitted: jit the caller.
  """
  calls_per_eval = 2 if self_condition else 1
  field = velocity(two_pass_x0(x0_fn, self_condition), cs)

  def solve_batch(params, z, mask, t_start, t_end, cond=None, rng=None):
    rng = jax.random.PRNGKey(0) if rng is None else rng
    lam0, lam1 = (ct.log_snr(cs, jnp.asarray(t, jnp.float32)) for t in (t_start, t_end))

    def one(z_b, mask_b, cond_b):
      return solve(lambda lam, y: field(params, lam, y, mask_b, cond_b, rng), z_b, lam0, lam1,
                   rtol=rtol, atol=atol, solver=solver, max_steps=max_steps)

    if cond is None:
      z_end, evals = jax.vmap(lambda a, b: one(a, b, None))(z, mask)
    else:
      z_end, evals = jax.vmap(one)(z, mask, condition.check(cond, z.shape[0]))
    return jnp.where(mask[..., None], z_end, 0.0), calls_per_eval * evals

  return solve_batch


def make_ode_sampler(x0_fn: Callable[..., jax.Array], cs: ct.ContinuousSchedule, *, self_condition: bool,
                     t_min: Optional[float] = None, rtol: float = 1e-5, atol: float = 1e-5,
                     solver: str = "tsit5", max_steps: int = 4096) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """The adaptive PF-ODE sampler: solve from t = 1 to t_min, then return x̂0 at t_min.

  Args:
    x0_fn: from `estimator.make_x0_estimator` (guidance, objective and time rule are set there).
    cs: the continuous schedule.
    self_condition: whether x0_fn uses self-conditioning (then two network calls per evaluation).
    t_min: the end time, default 1/T.
    rtol, atol, solver, max_steps: as in `solve`.

  Returns:
    sample(params, rng, mask, cond=None, latent_dim=D, example_offset=0, global_batch=None, noise_length=None)
    -> (x0 [B, L, D], nfe [B] int32 network calls), jitted with latent_dim, global_batch and noise_length static
    (see `samplers.make_sampler`).
  """
  t_min = 1.0 / cs.num_timesteps if t_min is None else float(t_min)
  ode = make_pf_ode_solver(x0_fn, cs, self_condition=self_condition, rtol=rtol, atol=atol, solver=solver,
                           max_steps=max_steps)
  final = two_pass_x0(x0_fn, self_condition)

  @functools.partial(jax.jit, static_argnames=("latent_dim", "global_batch", "noise_length"))
  def sample(params, rng, mask, cond=None, latent_dim=None, example_offset=0, global_batch=None, noise_length=None):
    cond = check_sample_args(mask, cond, latent_dim, global_batch)
    shape = mask.shape + (latent_dim,)
    k_init, k_net = jax.random.split(rng)
    z = jnp.where(mask[..., None], noise_lib.batch_normal(k_init, shape, example_offset, global_batch,
                                                          full_length=noise_length), 0.0)
    z, nfe = ode(params, z, mask, 1.0, t_min, cond, k_net)
    x0 = final(params, z, jnp.float32(t_min), mask, cond, k_net)
    return jnp.where(mask[..., None], x0, 0.0), nfe + (2 if self_condition else 1)

  return sample
