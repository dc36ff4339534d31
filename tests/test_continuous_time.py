"""Continuous-time schedules, fast samplers and the exact likelihood, checked against closed forms.

For data x0 ~ N(μ, Σ) (per token, over the D channels) every quantity is known in closed form: the optimal
denoiser E[x0 | z_t] = μ + α Σ (α² Σ + σ² I)⁻¹ (z_t - α μ) (α = sqrt(ᾱ), σ² = 1 - ᾱ), the marginals
N(α μ, α² Σ + σ² I), hence the probability-flow map between any two times (affine) and log p(x). With a
diagonal Σ every sampler step is affine in z, so the law of a sampler's output is Gaussian with moments that
are propagated exactly below from the papers' update formulas (DDIM eq. 12; DPM-Solver++ Algorithm 2 and its SDE
form; the DDPM posterior; Euler–Maruyama on the reverse SDE), independently of the samplers' coefficient tables.

The oracle takes the network's time input as a real step index (`time_input="fractional"`) and reads ᾱ by
interpolating log ᾱ of the discrete table, so it is exact at every continuous t.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlg.methods.gaussian import continuous as ct
from ldlg.methods.gaussian import likelihood
from ldlg.methods.gaussian.estimator import make_x0_estimator
from ldlg.methods.gaussian.fast_samplers import affine_coefficients, make_continuous_sampler
from ldlg.methods.gaussian.pf_ode import make_pf_ode_solver, solve
from ldlg.methods.gaussian.samplers import mask_from_lengths, sampler_from_config, sampling_timesteps
from ldlg.methods.gaussian.schedules import get_schedule

T = 1000
SCHEDULE = get_schedule("linear", T)
CS = ct.from_discrete(SCHEDULE)
KNOTS64 = np.concatenate([[0.0], np.cumsum(np.log1p(-np.asarray(SCHEDULE.betas, np.float64)))])
MU = np.array([0.5, -1.0, 2.0, 0.0])
S2 = np.array([0.25, 4.0, 1.0, 0.5])


def ab_cont(t):
  """ᾱ at continuous t (float64): log ᾱ linear between the knots k/T."""
  return np.exp(np.interp(np.asarray(t) * T, np.arange(T + 1), KNOTS64))


def gaussian_oracle(mu, cov):
  """E[x0 | z_t] for x0 ~ N(mu, cov) per token; mu [D], cov [D, D]; t a real step index (ᾱ interpolated)."""
  mu, cov = jnp.asarray(mu, jnp.float32), jnp.asarray(cov, jnp.float32)
  knots = jnp.asarray(KNOTS64, jnp.float32)

  def denoise_fn(params, z, t, mask, *unused):
    ab = jnp.exp(jnp.interp(jnp.asarray(t, jnp.float32) + 1.0, jnp.arange(T + 1.0), knots))
    eye = jnp.eye(mu.shape[0])
    gain = jax.vmap(lambda a: jnp.sqrt(a) * cov @ jnp.linalg.inv(a * cov + (1 - a) * eye))(ab)
    return mu + jnp.einsum("bij,blj->bli", gain, z - jnp.sqrt(ab)[:, None, None] * mu)
  return denoise_fn


def diagonal_oracle(mu, s2):
  """The same for a diagonal covariance, elementwise (cheaper to compile than the matrix inverse)."""
  mu, s2 = jnp.asarray(mu, jnp.float32), jnp.asarray(s2, jnp.float32)
  knots = jnp.asarray(KNOTS64, jnp.float32)

  def denoise_fn(params, z, t, mask, *unused):
    ab = jnp.exp(jnp.interp(jnp.asarray(t, jnp.float32) + 1.0, jnp.arange(T + 1.0), knots))[:, None, None]
    return mu + jnp.sqrt(ab) * s2 / (ab * s2 + 1 - ab) * (z - jnp.sqrt(ab) * mu)
  return denoise_fn


DIAG_ORACLE = diagonal_oracle(MU, S2)


def sample_moments(kind, num_steps, batch, length, seed=0, **kw):
  sample = make_continuous_sampler(DIAG_ORACLE, SCHEDULE, kind=kind, num_steps=num_steps,
                                   time_input="fractional", **kw)
  x = np.asarray(sample(None, jax.random.PRNGKey(seed), jnp.ones((batch, length), bool), None, 4), np.float64)
  x = x.reshape(-1, 4)
  return x.mean(0), x.var(0, ddof=1), x.shape[0]


# ---- exact moment propagation (per channel, diagonal Σ), written from the papers ----

def _denoiser_affine(ab):
  """x̂0(z) = k z + d for the diagonal Gaussian oracle at ᾱ = ab."""
  k = np.sqrt(ab) * S2 / (ab * S2 + 1 - ab)
  return k, MU - k * np.sqrt(ab) * MU


def ddim_exact(ts):
  """DDIM (η = 0) on times ts, last step to ᾱ = 1: mean and variance of the output."""
  A, C = np.ones(4), np.zeros(4)  # z = A z_T + C
  abs_ = list(ab_cont(ts)) + [1.0]
  for i in range(len(ts)):
    ab, ab_s = abs_[i], abs_[i + 1]
    k, d = _denoiser_affine(ab)
    x0 = (k * A, k * C + d)
    eps = ((A - np.sqrt(ab) * x0[0]) / np.sqrt(1 - ab), (C - np.sqrt(ab) * x0[1]) / np.sqrt(1 - ab))
    A, C = (np.sqrt(ab_s) * x0[j] + np.sqrt(1 - ab_s) * eps[j] for j in (0, 1))
  return C, A**2


def dpm_solver_pp_2m_exact(ts):
  """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) with first-order first and last steps, then x̂0."""
  ab = ab_cont(ts)
  alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
  lam = np.log(alpha / sigma)
  z, prev = (np.ones(4), np.zeros(4)), None
  n = len(ts)
  for i in range(n):
    k, d = _denoiser_affine(ab[i])
    x0 = (k * z[0], k * z[1] + d)
    if i == n - 1:
      return x0[1], x0[0]**2
    h = lam[i + 1] - lam[i]
    if prev is None or i == n - 2:
      D = x0
    else:
      r = (lam[i] - lam[i - 1]) / h
      D = tuple((1 + 1 / (2 * r)) * x0[j] - 1 / (2 * r) * prev[j] for j in (0, 1))
    z = tuple(sigma[i + 1] / sigma[i] * z[j] - alpha[i + 1] * np.expm1(-h) * D[j] for j in (0, 1))
    prev = x0


def ddpm_posterior_step(ab_t, ab_s):
  """q(z_s | z_t, x0) = N(cx x0 + cz z_t, var) (Ho et al. 2020, eq. 7, at any pair of times s < t)."""
  a_ts2 = ab_t / ab_s  # α²_{t|s}
  s_ts2 = (1 - ab_t) - a_ts2 * (1 - ab_s)  # σ²_{t|s}
  return np.sqrt(ab_s) * s_ts2 / (1 - ab_t), np.sqrt(a_ts2) * (1 - ab_s) / (1 - ab_t), s_ts2 * (1 - ab_s) / (1 - ab_t)


def ddpm_posterior_exact(ts):
  """Ancestral sampling through the posterior with x̂0 (DDIM η = 1) on times ts, then x̂0: output mean, variance."""
  ab = list(ab_cont(ts))
  m, v = np.zeros(4), np.ones(4)
  for i in range(len(ts) - 1):
    k, d = _denoiser_affine(ab[i])
    cx, cz, var = ddpm_posterior_step(ab[i], ab[i + 1])
    m, v = (cx * k + cz) * m + cx * d, (cx * k + cz)**2 * v + var
  k, d = _denoiser_affine(ab[-1])
  return k * m + d, k * k * v


def sde_dpm_solver_pp_2m_exact(ts):
  """SDE-DPM-Solver++(2M) in the midpoint form of diffusers' `sde-dpmsolver++`: D0 = x̂0_i,
  D1 = (x̂0_i - x̂0_{i-1}) / r, z ← (σ'/σ) e^{-h} z + α' (1 - e^{-2h}) (D0 + D1/2) + σ' sqrt(1 - e^{-2h}) ε;
  first-order first and last steps. Moments of (z_i, z_{i-1}) are carried jointly: x̂0_{i-1} depends on z_{i-1},
  which shares noise with z_i.
  """
  ab = ab_cont(ts)
  alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
  lam = np.log(alpha / sigma)
  m, v = np.zeros(4), np.ones(4)
  m_prev = v_prev = cov = np.zeros(4)  # z_{i-1}'s moments and Cov(z_i, z_{i-1})
  prev = (np.zeros(4), np.zeros(4))  # x̂0_{i-1} = k' z_{i-1} + d'
  n = len(ts)
  for i in range(n):
    k, d = _denoiser_affine(ab[i])
    if i == n - 1:
      return k * m + d, k * k * v
    h = lam[i + 1] - lam[i]
    g = alpha[i + 1] * (1 - np.exp(-2 * h))
    w = 0.0 if i in (0, n - 2) else 0.5 / ((lam[i] - lam[i - 1]) / h)  # D0 + D1/2 = (1 + w) x̂0_i - w x̂0_{i-1}
    P = g * (1 + w) * k + sigma[i + 1] / sigma[i] * np.exp(-h)  # z_{i+1} = P z_i + Q z_{i-1} + c + noise
    Q = -g * w * prev[0]
    c = g * (1 + w) * d - g * w * prev[1]
    m, v, cov, m_prev, v_prev = (P * m + Q * m_prev + c,
                                 P * P * v + Q * Q * v_prev + 2 * P * Q * cov + sigma[i + 1]**2 * (1 - np.exp(-2 * h)),
                                 P * v + Q * cov, m, v)
    prev = (k, d)


def euler_maruyama_exact(ts):
  """Reverse SDE dz = [-½β z - β ∇log p] dt + sqrt(β) dw̄, Euler–Maruyama from t_i to t_{i+1}, then x̂0."""
  m, v = np.zeros(4), np.ones(4)
  for i, t in enumerate(ts):
    ab = ab_cont(t)
    k, d = _denoiser_affine(ab)
    if i == len(ts) - 1:
      return k * m + d, k * k * v
    seg = min(max(math.ceil(t * T) - 1, 0), T - 1)
    beta = -T * math.log1p(-float(SCHEDULE.betas[seg]))
    dt = t - ts[i + 1]
    # score = -(z - sqrt(ab) x̂0) / (1 - ab), affine in z
    s_a, s_c = -(1 - np.sqrt(ab) * k) / (1 - ab), np.sqrt(ab) * d / (1 - ab)
    m, v = (1 + 0.5 * beta * dt + beta * dt * s_a) * m + beta * dt * s_c, \
        (1 + 0.5 * beta * dt + beta * dt * s_a)**2 * v + beta * dt


# ---- the continuous view ----

@pytest.mark.parametrize("name", ["linear", "cosine", "sqrt"])
def test_continuous_view_of_discrete_tables(name):
  sched = get_schedule(name, 200)
  cs = ct.from_discrete(sched)
  steps = np.arange(200)
  # Step i is t = (i+1)/T, and the discrete tables are an exact view of the continuous schedule.
  # (float32 tables: the stored ᾱ and the one rebuilt from the stored β differ by float32 rounding.)
  np.testing.assert_allclose(ct.alpha_bar(cs, (steps + 1) / 200, np), sched.alphas_cumprod, rtol=3e-5)
  view = ct.discrete_view(cs)
  for field in ("betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef1"):
    np.testing.assert_allclose(getattr(view, field), getattr(sched, field), rtol=1e-5, atol=1e-8)
  assert ct.alpha_bar(cs, 0.0, np) == 1.0
  # β(t) = -d log ᾱ/dt ≈ T β_i on step i's segment, and ∫_0^t β = -log ᾱ(t).
  betas = np.asarray(sched.betas, np.float64)
  mid = (steps + 0.5) / 200
  np.testing.assert_allclose(ct.beta(cs, mid, np), -200 * np.log1p(-betas), rtol=1e-9)
  np.testing.assert_allclose(ct.beta(cs, mid, np)[betas < 0.1], 200 * betas[betas < 0.1], rtol=0.06)
  fine = np.linspace(0, 1, 200 * 50 + 1)
  integral = np.concatenate([[0], np.cumsum(ct.beta(cs, (fine[1:] + fine[:-1]) / 2, np) * np.diff(fine))])
  np.testing.assert_allclose(-integral, ct.log_alpha_bar(cs, fine, np), rtol=1e-9, atol=1e-9)
  # log-SNR: strictly decreasing, and t_from_log_snr inverts it (numpy and traced).
  t = np.linspace(0.003, 1, 97)
  lam = ct.log_snr(cs, t, np)
  assert np.all(np.diff(lam) < 0)
  np.testing.assert_allclose(ct.t_from_log_snr(cs, lam, np), t, atol=1e-9)
  np.testing.assert_allclose(ct.t_from_log_snr(cs, jnp.asarray(lam, jnp.float32)), t, atol=2e-4)
  # Each named schedule's own continuous limit: exact at the knots for cosine and sqrt where β was not
  # clipped; the linear VP SDE's log ᾱ agrees with Σ log(1 - β) to O(T β²) (half a step, and log(1-β) ≈ -β).
  analytic = ct.analytic_alpha_bar(name, (steps + 1) / 200, 200)
  if name == "linear":
    np.testing.assert_allclose(np.log(analytic), knots_for(sched)[1:], atol=0.03)
  else:
    keep = betas < 0.999
    np.testing.assert_allclose(analytic[keep], np.asarray(sched.alphas_cumprod, np.float64)[keep], rtol=1e-5)


def knots_for(sched):
  """log ᾱ at the knots k/T of a discrete schedule (float64), entry 0 = 0."""
  return np.concatenate([[0.0], np.cumsum(np.log1p(-np.asarray(sched.betas, np.float64)))])


def test_network_time_and_grids():
  i = np.array([0, 5, 998, 999])
  np.testing.assert_array_equal(ct.network_time(CS, (i + 1) / T), i)
  np.testing.assert_array_equal(ct.network_time(CS, (i + 1.4) / T), np.minimum(i, T - 1))
  np.testing.assert_array_equal(ct.network_time(CS, (i + 0.6) / T), i)  # rounds to the nearest knot
  np.testing.assert_array_equal(ct.network_time(CS, jnp.array([0.0, 1.0])), [0, T - 1])
  assert ct.network_time(CS, jnp.array([0.5])).dtype == jnp.int32
  np.testing.assert_allclose(ct.network_time(CS, jnp.array([0.5004, 1.0]), "fractional"), [499.4, 999.0],
                             rtol=1e-6)
  # time_uniform is exactly DDIM's strided steps; logsnr_uniform is evenly spaced in λ; both from 1 to 1/T.
  for n in (2, 10, 250):
    np.testing.assert_allclose(ct.time_grid(CS, n, "time_uniform"), (sampling_timesteps(T, n) + 1) / T)
  grid = ct.time_grid(CS, 15, "logsnr_uniform")
  assert grid[0] == 1.0 and grid[-1] == 1.0 / T
  np.testing.assert_allclose(np.diff(ct.log_snr(CS, grid, np), 2), 0, atol=1e-9)
  with pytest.raises(ValueError, match="spacing"):
    ct.time_grid(CS, 10, "karras")


# ---- samplers ----

@pytest.mark.parametrize("num_steps", [10, 20])
def test_dpm_solver_matches_data_at_least_as_well_as_ddim(num_steps):
  for spacing in ("logsnr_uniform", "time_uniform"):
    ts = ct.time_grid(CS, num_steps, spacing)
    m_dpm, v_dpm = dpm_solver_pp_2m_exact(ts)
    m_ddim, v_ddim = ddim_exact(ct.time_grid(CS, num_steps, "time_uniform"))
    # The method: closer to the data's variance than DDIM on the same number of network evaluations.
    assert np.max(np.abs(v_dpm / S2 - 1)) <= np.max(np.abs(v_ddim / S2 - 1)), (spacing, v_dpm, v_ddim)
    # Both means are off by ~0.01 from starting at N(0, I) rather than the true N(sqrt(ᾱ(1)) μ, ...).
    assert np.max(np.abs(m_dpm - MU)) <= np.max(np.abs(m_ddim - MU)) + 0.005
  # The implementation: samples follow the exact chain (5 standard errors), here with log-SNR steps.
  mean, var, n = sample_moments("dpm_solver_pp_2m", num_steps, 2048, 4, spacing="logsnr_uniform")
  m_exact, v_exact = dpm_solver_pp_2m_exact(ct.time_grid(CS, num_steps, "logsnr_uniform"))
  np.testing.assert_array_less(np.abs(mean - m_exact), 5 * np.sqrt(v_exact / n))
  np.testing.assert_array_less(np.abs(var - v_exact), 5 * v_exact * math.sqrt(2 / (n - 1)))
  np.testing.assert_array_less(np.abs(v_exact / S2 - 1), 0.1 if num_steps == 10 else 0.05)


def test_sde_dpm_solver_first_order_step_is_the_ddpm_posterior():
  # Its first-order form (the first step, and the step into the last grid time) is DDIM with η = 1, the sampler
  # LD4LG uses: the coefficients of x̂0, z and ε equal the posterior's.
  ts = ct.time_grid(CS, 12, "logsnr_uniform")
  coefs = affine_coefficients(CS, "dpm_solver_pp_2m_sde", ts)
  ab = ab_cont(ts)
  for i in (0, len(ts) - 2):
    cx, cz, var = ddpm_posterior_step(ab[i], ab[i + 1])
    np.testing.assert_allclose([coefs["a"][i], coefs["b"][i], coefs["sigma"][i], coefs["c"][i]],
                               [cx, cz, math.sqrt(var), 0.0], rtol=1e-6, atol=1e-12)
  # The ODE form has no noise; the SDE form has noise on every step but the last evaluation.
  assert not np.any(affine_coefficients(CS, "dpm_solver_pp_2m", ts)["sigma"])
  assert np.all(coefs["sigma"][:-1] > 0) and coefs["sigma"][-1] == 0


@pytest.mark.parametrize("num_steps", [10, 20])
def test_sde_dpm_solver_matches_data_far_better_than_ddim_eta_one(num_steps):
  ts = ct.time_grid(CS, num_steps, "logsnr_uniform")
  m_exact, v_exact = sde_dpm_solver_pp_2m_exact(ts)
  _, v_ddpm = ddpm_posterior_exact(ts)
  # The method: on the same evaluations its variance error is a fraction of first-order ancestral sampling's
  # (exact chains: 7 % against 59 % at 10 steps, 7 % against 37 % at 20); it forgets the N(0, I) start.
  assert np.max(np.abs(v_exact / S2 - 1)) < 0.1
  assert np.max(np.abs(v_exact / S2 - 1)) < 0.25 * np.max(np.abs(v_ddpm / S2 - 1))
  np.testing.assert_array_less(np.abs(m_exact - MU), 1e-3)
  # The implementation: samples follow the exact chain (5 standard errors).
  mean, var, n = sample_moments("dpm_solver_pp_2m_sde", num_steps, 2048, 4)
  np.testing.assert_array_less(np.abs(mean - m_exact), 5 * np.sqrt(v_exact / n))
  np.testing.assert_array_less(np.abs(var - v_exact), 5 * v_exact * math.sqrt(2 / (n - 1)))


@pytest.mark.slow
def test_sde_and_pc_samplers_match_the_data():
  # Euler–Maruyama: samples follow the exact discretized chain; its bias at 200 steps is a few percent.
  ts = ct.time_grid(CS, 200, "time_uniform")
  m_exact, v_exact = euler_maruyama_exact(ts)
  mean, var, n = sample_moments("sde_euler", 200, 1024, 4)
  np.testing.assert_array_less(np.abs(mean - m_exact), 5 * np.sqrt(v_exact / n))
  np.testing.assert_array_less(np.abs(var - v_exact), 5 * v_exact * math.sqrt(2 / (n - 1)))
  np.testing.assert_array_less(np.abs(v_exact / S2 - 1), 0.05)
  np.testing.assert_array_less(np.abs(m_exact - MU), 0.02)
  # Predictor–corrector (no closed form: the Langevin step depends on the sample's norms). Its per-example
  # step-size rule needs many entries per example, as real latents have (L·D in the thousands): L = 64 here.
  mean, var, n = sample_moments("pc", 200, 128, 64, num_corrector_steps=1, snr=0.16)
  np.testing.assert_array_less(np.abs(mean - MU), 5 * np.sqrt(S2 / n) + 0.02)
  np.testing.assert_array_less(np.abs(var / S2 - 1), 0.1)


@pytest.mark.slow
def test_pf_ode_maps_noise_to_data_and_is_invertible():
  full = make_pf_ode_solver(make_x0_estimator(DIAG_ORACLE, CS, time_input="fractional", self_condition=False),
                            CS, self_condition=False, rtol=1e-6, atol=1e-6)
  flow = jax.jit(full)  # times traced: one program decodes and encodes
  t_min = 1.0 / T
  z1 = jax.random.normal(jax.random.PRNGKey(0), (32, 4, 4))
  mask = jnp.ones((32, 4), bool)
  x, nfe = flow(None, z1, mask, 1.0, t_min)
  # The exact flow map between marginals N(α μ, α² σ² + 1 - α²) at t = 1 and t = t_min (affine per channel).
  (a1, am) = ab_cont(1.0), ab_cont(t_min)
  v1, vm = a1 * S2 + 1 - a1, am * S2 + 1 - am
  expected = np.sqrt(am) * MU + np.sqrt(vm / v1) * (np.asarray(z1) - np.sqrt(a1) * MU)
  np.testing.assert_allclose(x, expected, atol=2e-4, rtol=1e-4)
  # Encoding the result returns the start (the ODE is invertible).
  back, _ = flow(None, x, mask, t_min, 1.0)
  np.testing.assert_allclose(back, z1, atol=2e-4)
  assert np.all(np.asarray(nfe) > 7)


def test_ode_function_evaluation_count():
  """`nfe` equals the vector-field evaluations a counting field observes."""
  count = []

  def field(lam, y):
    jax.debug.callback(lambda: count.append(1))
    return -y * jnp.sin(lam) + 0.1 * y * y

  for rtol in (1e-4,):
    count.clear()
    _, nfe = jax.jit(lambda y0: solve(field, y0, jnp.float32(-5.0), jnp.float32(4.0), rtol=rtol, atol=rtol,
                                      solver="tsit5", max_steps=1000))(jnp.ones(3))
    assert int(nfe) == len(count) > 7


# ---- likelihood ----

COV = np.array([[1.0, 0.6, 0.0], [0.6, 2.0, -0.5], [0.0, -0.5, 0.5]])
MU3 = np.array([0.3, -0.2, 0.1])
FULL_ORACLE = gaussian_oracle(MU3, COV)


def model_log_likelihood(x, t_min):
  """log p of the oracle's flow: log N(z_1; 0, I) + log|det ∂z_1/∂x| with the exact affine map t_min → 1."""
  def marginal(t):
    a = ab_cont(t)
    return np.sqrt(a) * MU3, a * COV + (1 - a) * np.eye(3)
  (m1, c1), (mm, cm) = marginal(1.0), marginal(t_min)
  # The PF-ODE map between Gaussian marginals is z_1 = m1 + c1^{1/2} cm^{-1/2} (x - mm) (they commute: both
  # are polynomials in COV).
  def sqrtm(c, power):
    w, u = np.linalg.eigh(c)
    return (u * w**power) @ u.T
  a_map = sqrtm(c1, 0.5) @ sqrtm(cm, -0.5)
  z1 = m1 + (x - mm) @ a_map.T
  log_det = np.linalg.slogdet(a_map)[1]
  return -0.5 * np.sum(z1**2 + np.log(2 * np.pi), axis=-1) + log_det


def data_log_likelihood(x):
  diff = x - MU3
  return -0.5 * (np.einsum("...i,ij,...j->...", diff, np.linalg.inv(COV), diff)
                 + np.linalg.slogdet(2 * np.pi * COV)[1])


@pytest.mark.slow
def test_ode_likelihood_with_exact_trace_is_the_closed_form():
  lengths = jnp.array([3, 1, 2, 3])
  mask = mask_from_lengths(lengths, 3)
  x = MU3 + jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3)) @ jnp.asarray(np.linalg.cholesky(COV).T)
  x = jnp.where(mask[..., None], x, 7.0)  # padding must not count
  nll = jax.jit(lambda x, m: likelihood.ode_nll(FULL_ORACLE, SCHEDULE, None, jax.random.PRNGKey(1), x, m,
                                                self_condition=False, time_input="fractional", trace="exact",
                                                rtol=1e-6, atol=1e-6))(x, mask)
  valid = np.asarray(mask)
  xn = np.asarray(x, np.float64)
  model = np.array([model_log_likelihood(xn[b][valid[b]], 1.0 / T).sum() for b in range(4)])
  data = np.array([data_log_likelihood(xn[b][valid[b]]).sum() for b in range(4)])
  got = -np.asarray(nll["nll"], np.float64)
  np.testing.assert_array_less(np.abs(got - model), 2e-3 * np.asarray(lengths))
  # The model's density is the data's up to t_min's noise and the N(0, I) prior at t = 1 (ᾱ(1) ≈ 4e-5).
  np.testing.assert_array_less(np.abs(got - data), 0.02 * np.asarray(lengths))
  np.testing.assert_allclose(nll["nll_per_token"], np.asarray(nll["nll"]) / np.asarray(lengths), rtol=1e-6)
  np.testing.assert_allclose(nll["nll_per_dim"], np.asarray(nll["nll"]) / (3 * np.asarray(lengths)), rtol=1e-6)


@pytest.mark.slow
def test_hutchinson_estimate_is_unbiased():
  """Same example repeated with independent Rademacher probes: the mean is the closed form within 4 SE."""
  x = jnp.broadcast_to(jnp.asarray([[0.9, -1.2, 0.4], [0.0, 1.5, -0.3]]), (256, 2, 3))
  run = lambda trace, x: jax.jit(lambda x: likelihood.ode_nll(
      FULL_ORACLE, SCHEDULE, None, jax.random.PRNGKey(3), x, x[..., 0] == x[..., 0], self_condition=False,
      time_input="fractional", trace=trace, rtol=1e-5, atol=1e-5))(x)
  exact = -model_log_likelihood(np.asarray(x[0], np.float64), 1.0 / T).sum()
  est = np.asarray(run("hutchinson", x)["nll"], np.float64)
  assert est.std() > 1e-3  # the full covariance makes single probes noisy
  assert abs(est.mean() - exact) < 4 * est.std(ddof=1) / math.sqrt(est.size) + 2e-3


@pytest.mark.slow
def test_vlb_matches_its_closed_form_expectation():
  """E_ε of the DDPM bound under the diagonal Gaussian oracle has a closed form per term."""
  x1 = jnp.asarray([[0.9, -2.0, 3.1, 0.5], [0.2, 1.0, 1.5, -0.4]])
  x = jnp.broadcast_to(x1, (64, 2, 4))
  mask = jnp.ones((64, 2), bool)
  out = jax.jit(lambda x: likelihood.vlb_nll(DIAG_ORACLE, SCHEDULE, None, jax.random.PRNGKey(0), x, mask,
                                             self_condition=False))(x)
  betas = np.asarray(SCHEDULE.betas, np.float64)
  ab = np.cumprod(1 - betas)
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  x1n = np.asarray(x1, np.float64)

  def expected_sq_err(t):  # E_ε ||x - x̂0(z_t)||², z_t = sqrt(ab) x + sqrt(1-ab) ε
    k, _ = _denoiser_affine(ab[t])
    return np.sum((1 - k * np.sqrt(ab[t]))**2 * (x1n - MU)**2 + k**2 * (1 - ab[t]))

  post_var = betas * (1 - ab_prev) / (1 - ab)
  c1 = betas * np.sqrt(ab_prev) / (1 - ab)
  diffusion = sum(c1[t]**2 / (2 * post_var[t]) * expected_sq_err(t) for t in range(1, T))
  prior = 0.5 * np.sum(ab[-1] * x1n**2 + (1 - ab[-1]) - 1 - np.log(1 - ab[-1]))
  decoder = 0.5 * (8 * np.log(2 * np.pi * betas[0]) + expected_sq_err(0) / betas[0])
  vlb = np.asarray(out["vlb"], np.float64)
  assert abs(vlb.mean() - (prior + diffusion + decoder)) < 4 * vlb.std(ddof=1) / math.sqrt(vlb.size) + 1e-3
  np.testing.assert_allclose(out["prior"], prior, rtol=1e-4)
  # The bound sits above the data's own NLL (the oracle's chain is close to the data).
  true_nll = -np.sum(-0.5 * np.log(2 * np.pi * S2) - 0.5 * (x1n - MU)**2 / S2)
  assert vlb.mean() > true_nll
  # A stratified Monte Carlo subset of the terms estimates the same sum.
  sub = jax.jit(lambda x: likelihood.vlb_nll(DIAG_ORACLE, SCHEDULE, None, jax.random.PRNGKey(1), x, mask,
                                             self_condition=False, num_terms=100))(x)
  assert abs(float(np.mean(sub["vlb"])) - vlb.mean()) < 0.15 * abs(diffusion)


# ---- contracts shared with make_sampler ----

KINDS = [("sde_euler", 6), ("pc", 4),  # both DPM-Solver++ forms share the scan of sde_euler
         pytest.param("ode_adaptive", 0, marks=pytest.mark.slow)]


@pytest.mark.parametrize("kind,num_steps", KINDS)
def test_traced_once_padding_and_device_split(kind, num_steps):
  traces = []

  def counting(params, z, t, mask, *unused):
    traces.append(z.shape)
    return DIAG_ORACLE(params, z, t, mask)

  # A class-conditional call with guidance (the oracle ignores the class, so the law is unchanged): the
  # guided path, and for the ODE the per-example class ids through its vmap, are what run here.
  guided = make_continuous_sampler(counting, SCHEDULE, kind=kind, num_steps=max(num_steps, 2),
                                   time_input="fractional", rtol=1e-3, atol=1e-3, guidance_scale=2.0,
                                   num_classes=3)
  ids = jnp.array([0, 1, 2, 1])
  sample = lambda params, rng, mask, _, dim, **kw: guided(params, rng, mask, ids[kw.get("example_offset", 0):][
      :mask.shape[0]], dim, **kw)
  mask_a = mask_from_lengths(jnp.array([5, 2, 0, 3]), 5)
  mask_b = mask_from_lengths(jnp.array([1, 5, 4, 4]), 5)
  x1 = sample(None, jax.random.PRNGKey(0), mask_a, None, 4)
  n_traces = len(traces)
  x2 = sample(None, jax.random.PRNGKey(0), mask_a, None, 4)
  x3 = sample(None, jax.random.PRNGKey(1), mask_b, None, 4)
  assert len(traces) == n_traces, "one trace per shape"
  np.testing.assert_array_equal(x1, x2)
  assert np.all(np.asarray(x3)[~np.asarray(mask_b)] == 0)
  assert np.all(np.asarray(x3)[np.asarray(mask_b)] != 0)
  # Two halves of a global batch (example_offset, global_batch) equal one full-batch call.
  halves = [sample(None, jax.random.PRNGKey(1), mask_b[o:o + 2], None, 4, example_offset=o, global_batch=4)
            for o in (0, 2)]
  np.testing.assert_allclose(np.concatenate(halves), x3, atol=1e-6)


def test_self_conditioning_is_carried_and_guidance_is_one_batched_call():
  """A denoiser answering (previous estimate + 1) counts the evaluations; guidance mixes in one doubled call."""
  def counter(params, z, t, mask, self_cond, has_self_cond, *unused):
    if self_cond is None:
      return jnp.zeros_like(z)
    return jnp.where(has_self_cond[:, None, None], self_cond + 1.0, 0.0)

  mask = jnp.ones((2, 3), bool)
  for kind, steps, evals in (("dpm_solver_pp_2m", 7, 7), ("sde_euler", 7, 7), ("pc", 4, 8)):
    x = make_continuous_sampler(counter, SCHEDULE, kind=kind, num_steps=steps, num_corrector_steps=1)(
        None, jax.random.PRNGKey(0), mask, None, 2)
    np.testing.assert_allclose(x, evals - 1)  # the first evaluation has no estimate
  x = make_continuous_sampler(counter, SCHEDULE, kind="dpm_solver_pp_2m", num_steps=5, self_condition=False)(
      None, jax.random.PRNGKey(0), mask, None, 2)
  np.testing.assert_allclose(x, 0.0)

  calls = []

  def class_reporter(params, z, t, mask, self_cond, has_self_cond, cond, train, rng):
    calls.append(None if cond is None else cond["class_id"].shape)
    value = -1.0 if cond is None else cond["class_id"].astype(jnp.float32)
    return jnp.broadcast_to(jnp.reshape(value, (-1, 1, 1)), z.shape)

  ids = jnp.array([0, 2])
  for w in (1.0, 3.0):
    calls.clear()
    x = make_continuous_sampler(class_reporter, SCHEDULE, kind="dpm_solver_pp_2m", num_steps=3, guidance_scale=w,
                                num_classes=3)(None, jax.random.PRNGKey(0), mask, ids, 2)
    np.testing.assert_allclose(np.asarray(x)[:, 0, 0], w * np.array([0.0, 2.0]) + (1 - w) * 3, rtol=1e-5)
    assert calls == [(2,)] if w == 1.0 else [(4,)]  # cond + null stacked in one call


def test_dispatcher_options_and_errors():
  mask = jnp.ones((3, 2), bool)
  x, nfe = make_continuous_sampler(DIAG_ORACLE, SCHEDULE, kind="pc", num_steps=5, num_corrector_steps=2,
                                   with_nfe=True)(None, jax.random.PRNGKey(0), mask, None, 4)
  assert x.shape == (3, 2, 4)
  np.testing.assert_array_equal(nfe, [15, 15, 15])
  with pytest.raises(ValueError, match="unknown continuous sampler"):
    make_continuous_sampler(DIAG_ORACLE, SCHEDULE, kind="euler")
  with pytest.raises(ValueError, match="num_classes"):
    make_continuous_sampler(DIAG_ORACLE, SCHEDULE, kind="sde_euler", guidance_scale=2.0)
  with pytest.raises(ValueError, match="time_input"):
    make_continuous_sampler(DIAG_ORACLE, SCHEDULE, kind="sde_euler", time_input="linear")
  with pytest.raises(ValueError, match="needs latent_dim"):
    make_continuous_sampler(DIAG_ORACLE, SCHEDULE, kind="sde_euler", num_steps=3)(
        None, jax.random.PRNGKey(0), mask)


def test_config_route_reports_nfe_and_passes_the_ode_tolerance():
  """`sampler_from_config(with_nfe=True)`: the fixed count for DDIM and DPM-Solver++, the solver's own count for
  the adaptive ODE, where the config's looser tolerance takes fewer evaluations."""
  import ml_collections
  mask = jnp.ones((2, 3), bool)
  diffusion = ml_collections.ConfigDict({"objective": "x0", "self_condition_prob": 0.0})

  def nfe_of(**sample):
    cfg = ml_collections.ConfigDict({"eta": 0.0, "guidance_scale": 1.0, **sample})
    fn = sampler_from_config(DIAG_ORACLE, SCHEDULE, cfg, diffusion, with_nfe=True)
    x, nfe = fn(None, jax.random.PRNGKey(0), mask, None, latent_dim=4)
    assert x.shape == (2, 3, 4)
    return np.asarray(nfe)

  np.testing.assert_array_equal(nfe_of(sampler="ddim", num_steps=7), [7, 7])
  np.testing.assert_array_equal(nfe_of(sampler="dpm_solver_pp_2m", num_steps=5), [5, 5])
  loose = nfe_of(sampler="ode_adaptive", num_steps=1, ode_rtol=1e-2, ode_atol=1e-2)
  tight = nfe_of(sampler="ode_adaptive", num_steps=1, ode_rtol=1e-6, ode_atol=1e-6)
  assert 0 < loose.mean() < tight.mean()
  with pytest.raises(ValueError, match="cannot be combined"):
    sampler_from_config(DIAG_ORACLE, SCHEDULE, ml_collections.ConfigDict({"sampler": "ddim", "num_steps": 3}),
                        diffusion, with_nfe=True, return_trajectory_at=(1,))
