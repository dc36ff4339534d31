"""Samplers driven by closed-form optimal denoisers: the samples must have the data's distribution.

For data x ~ N(μ, σ²) (per dimension) the optimal x0 denoiser is
  E[x0 | z_t] = μ + sqrt(ᾱ)σ²/(ᾱσ² + 1 - ᾱ) · (z_t - sqrt(ᾱ)μ),
so every sampler step is affine in z and the law of the output is Gaussian with moments that can be
propagated exactly (`exact_chain_moments`, written here from the DDPM/DDIM papers' formulas, not from the
sampler's coefficients). Those exact moments differ from (μ, σ²) by the samplers' own discretization
bias (e.g. DDPM's β̃ reverse variance and DDIM's step skipping shrink the variance, see Bao et al. 2022,
Analytic-DPM); the tests check (a) the samples match the exact chain to 5 standard errors and (b) the
samples match the data within that derived bias plus 5 standard errors.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ldlg.methods.gaussian import parameterization as P
from ldlg.methods.gaussian.samplers import (make_sampler, mask_from_lengths, sampler_from_config,
                                     sampling_timesteps, update_coefficients)
from ldlg.methods.gaussian.schedules import get_schedule

T = 1000
SCHEDULE = get_schedule("linear", T)
AB64 = np.cumprod(1 - np.asarray(SCHEDULE.betas, np.float64))
# (kind, num_steps, eta) under test.
SAMPLERS = [("ddpm", 1000, 1.0), ("ddim", 250, 1.0), ("ddim", 250, 0.0), ("ddim", 50, 1.0),
            ("ddim", 50, 0.0)]
B, L = 4096, 4  # 16384 independent samples per dimension


def gaussian_oracle(mu, s2):
  """E[x0 | z_t] for x0 ~ N(mu, diag s2); mu, s2: [D]. Ignores params and self-conditioning."""
  def denoise_fn(params, z, t, mask, *unused):
    ab = SCHEDULE.alphas_cumprod[t][:, None, None]
    return mu + jnp.sqrt(ab) * s2 / (ab * s2 + 1 - ab) * (z - jnp.sqrt(ab) * mu)
  return denoise_fn


def exact_chain_moments(kind, num_steps, eta, mu, s2, start=0, m0=None, v0=None):
  """Mean and variance of the sampler output under the Gaussian oracle, by exact propagation (float64).

  z_T ~ N(0, 1) (or, from step index `start`, z ~ N(m0, v0)); each step z' = A z + C + σ ε is affine because
  x̂0 is, and A, C are read off the step function evaluated at z = 0 and z = 1.
  """
  ts = np.round(np.linspace(0, T - 1, num_steps)).astype(int)[::-1]
  m = np.zeros_like(mu) if m0 is None else m0
  v = np.ones_like(mu) if v0 is None else v0
  for i, t in enumerate(ts):
    if i < start:
      continue
    ab = AB64[t]
    x0 = lambda z: mu + np.sqrt(ab) * s2 / (ab * s2 + 1 - ab) * (z - np.sqrt(ab) * mu)
    if kind == "ddpm":  # posterior q(z_{t-1} | z_t, x0) (DDPM eq. 6-7)
      ab_prev = AB64[t - 1] if t > 0 else 1.0
      beta = 1 - ab / ab_prev
      step = lambda z: (np.sqrt(ab_prev) * beta / (1 - ab) * x0(z)
                        + np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * z)
      sigma2 = beta * (1 - ab_prev) / (1 - ab)
    else:  # DDIM eq. 12 with σ_t(η) (eq. 16)
      ab_s = AB64[ts[i + 1]] if i + 1 < len(ts) else 1.0
      sigma2 = eta**2 * (1 - ab_s) / (1 - ab) * (1 - ab / ab_s)
      eps = lambda z: (z - np.sqrt(ab) * x0(z)) / np.sqrt(1 - ab)
      step = lambda z: np.sqrt(ab_s) * x0(z) + np.sqrt(max(1 - ab_s - sigma2, 0.0)) * eps(z)
    c = step(np.zeros_like(mu))
    a = step(np.ones_like(mu)) - c
    m, v = a * m + c, a * a * v + sigma2
  return m, v


@pytest.mark.parametrize("kind,num_steps,eta", SAMPLERS)
def test_gaussian_data_moments(kind, num_steps, eta):
  mu = np.array([0.5, -1.0, 2.0, 0.0])
  s2 = np.array([0.25, 4.0, 1.0, 0.5])
  sample = make_sampler(gaussian_oracle(jnp.asarray(mu, jnp.float32), jnp.asarray(s2, jnp.float32)),
                        SCHEDULE, kind=kind, num_steps=num_steps, eta=eta)
  x = np.asarray(sample(None, jax.random.PRNGKey(0), jnp.ones((B, L), bool), None, 4), np.float64)
  x = x.reshape(-1, 4)
  n = x.shape[0]
  mean, var = x.mean(0), x.var(0, ddof=1)
  m_exact, v_exact = exact_chain_moments(kind, num_steps, eta, mu, s2)
  se_mean, se_var = np.sqrt(v_exact / n), v_exact * math.sqrt(2 / (n - 1))
  # (a) the implementation: samples follow the exact discrete chain.
  np.testing.assert_array_less(np.abs(mean - m_exact), 5 * se_mean)
  np.testing.assert_array_less(np.abs(var - v_exact), 5 * se_var)
  # (b) the data: μ, σ² up to the chain's own (derived) discretization bias plus 5 standard errors.
  np.testing.assert_array_less(np.abs(mean - mu), np.abs(m_exact - mu) + 5 * se_mean)
  np.testing.assert_array_less(np.abs(var - s2), np.abs(v_exact - s2) + 5 * se_var)
  # The bias itself is small for the paper's settings (all T steps, or 250 strided steps).
  bias_bound = 0.06 if num_steps >= 250 else 0.25
  np.testing.assert_array_less(np.abs(v_exact / s2 - 1), bias_bound)
  np.testing.assert_array_less(np.abs(m_exact - mu), 0.02)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_starting_mid_grid_from_noised_data(eta):
  """Started at step k from z = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε (t the grid's k-th timestep, x0 ~ N(μ, σ²)), the
  output follows the exact chain run from that z's law N(sqrt(ᾱ)μ, ᾱσ² + 1 - ᾱ), which ends near the data."""
  mu, s2 = np.array([0.5, -1.0]), np.array([0.25, 2.0])
  num_steps, k = 50, 30
  t = sampling_timesteps(T, num_steps)[k]
  ab = AB64[t]
  rng = np.random.default_rng(0)
  x0 = mu + np.sqrt(s2) * rng.standard_normal((B, L, 2))
  z = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * rng.standard_normal((B, L, 2))
  sample = make_sampler(gaussian_oracle(jnp.asarray(mu, jnp.float32), jnp.asarray(s2, jnp.float32)), SCHEDULE,
                        num_steps=num_steps, eta=eta)
  x = np.asarray(sample(None, jax.random.PRNGKey(1), jnp.ones((B, L), bool), None, 2,
                        z_start=jnp.asarray(z, jnp.float32), start_step=k), np.float64).reshape(-1, 2)
  n = x.shape[0]
  m_exact, v_exact = exact_chain_moments("ddim", num_steps, eta, mu, s2, start=k, m0=np.sqrt(ab) * mu,
                                         v0=ab * s2 + 1 - ab)
  np.testing.assert_array_less(np.abs(x.mean(0) - m_exact), 5 * np.sqrt(v_exact / n))
  np.testing.assert_array_less(np.abs(x.var(0, ddof=1) - v_exact), 5 * v_exact * math.sqrt(2 / (n - 1)))
  np.testing.assert_array_less(np.abs(v_exact / s2 - 1), 0.25)
  if eta == 0.0:
    # Deterministic from there, the output is an increasing affine map of z: its correlation with the x0 it
    # was noised from is z's, sqrt(ᾱσ² / (ᾱσ² + 1 - ᾱ)).
    corr = np.array([np.corrcoef(x[:, d], x0.reshape(-1, 2)[:, d])[0, 1] for d in range(2)])
    expected = np.sqrt(ab * s2 / (ab * s2 + 1 - ab))
    np.testing.assert_array_less(np.abs(corr - expected), 5 * (1 - expected**2) / np.sqrt(n))


def test_start_step_self_conditioning_and_bad_arguments():
  """From step k of S, the first step taken has no estimate: the counting denoiser ends at S - k - 1."""
  def counter(params, z, t, mask, self_cond, has_self_cond, *unused):
    return jnp.where(has_self_cond[:, None, None], self_cond + 1.0, 0.0)

  mask = jnp.ones((2, 3), bool)
  sample = make_sampler(counter, SCHEDULE, num_steps=17, eta=0.0)
  x = sample(None, jax.random.PRNGKey(0), mask, None, 2, z_start=jnp.ones((2, 3, 2)), start_step=5)
  np.testing.assert_allclose(x, 17 - 5 - 1)
  with pytest.raises(ValueError, match="start_step"):
    sample(None, jax.random.PRNGKey(0), mask, None, 2, start_step=17)
  with pytest.raises(ValueError, match="z_start"):
    sample(None, jax.random.PRNGKey(0), mask, None, 2, z_start=jnp.ones((2, 4, 2)), start_step=5)


@pytest.mark.parametrize("kind,num_steps,eta", SAMPLERS)
def test_gaussian_mixture_weights_and_modes(kind, num_steps, eta):
  """1-D mixture 0.3·N(-2, 0.5²) + 0.7·N(1.5, 0.3²) with its closed-form posterior mean.

  Weights: within 5 SE + 0.015 and component means within 5 SE + 0.02 (allowances for discretization,
  which has no closed form here). Component standard deviations: within 5 SE plus the exact
  discretization bias of the same sampler on a single Gaussian of that σ (the components are resolved
  by the time the last steps set their widths).
  """
  pi, mu, sd = np.array([0.3, 0.7]), np.array([-2.0, 1.5]), np.array([0.5, 0.3])
  pi_j, mu_j, sd_j = (jnp.asarray(a, jnp.float32) for a in (pi, mu, sd))

  def mixture_oracle(params, z, t, mask, *unused):
    ab = SCHEDULE.alphas_cumprod[t][:, None, None, None]
    zk = z[..., None]
    var = ab * sd_j**2 + 1 - ab  # marginal variance of z_t under each component
    resp = jax.nn.softmax(jnp.log(pi_j) - 0.5 * jnp.log(var) - 0.5 * (zk - jnp.sqrt(ab) * mu_j)**2 / var,
                          axis=-1)
    means = mu_j + jnp.sqrt(ab) * sd_j**2 / var * (zk - jnp.sqrt(ab) * mu_j)
    return jnp.sum(resp * means, axis=-1)

  sample = make_sampler(mixture_oracle, SCHEDULE, kind=kind, num_steps=num_steps, eta=eta)
  x = np.asarray(sample(None, jax.random.PRNGKey(1), jnp.ones((B, L), bool), None, 1), np.float64).ravel()
  n = x.size
  first = x < (mu[0] * sd[1] + mu[1] * sd[0]) / (sd[0] + sd[1])  # where the two densities' z-scores meet
  w = first.mean()
  assert abs(w - pi[0]) < 5 * math.sqrt(pi[0] * (1 - pi[0]) / n) + 0.015
  for k, comp in enumerate((x[first], x[~first])):
    nk = comp.size
    assert abs(comp.mean() - mu[k]) < 5 * sd[k] / math.sqrt(nk) + 0.02
    _, v_exact = exact_chain_moments(kind, num_steps, eta, np.zeros(1), np.array([sd[k]**2]))
    sd_bias = abs(math.sqrt(v_exact[0]) / sd[k] - 1)
    assert abs(comp.std(ddof=1) / sd[k] - 1) < 5 / math.sqrt(2 * (nk - 1)) + sd_bias


def test_ddim_all_steps_eta_one_is_ddpm():
  ddpm = update_coefficients(SCHEDULE, "ddpm", T, 1.0)
  ddim = update_coefficients(SCHEDULE, "ddim", T, 1.0)
  for key in ("t", "a", "b", "sigma"):
    np.testing.assert_allclose(ddim[key], ddpm[key], rtol=1e-9, atol=1e-12)
  # The last step returns x̂0 itself: a = 1, b = σ = 0.
  assert (ddim["a"][-1], ddim["b"][-1], ddim["sigma"][-1]) == (1.0, 0.0, 0.0)
  ts = sampling_timesteps(T, 250)
  assert ts[0] == T - 1 and ts[-1] == 0 and np.all(np.diff(ts) < 0) and len(ts) == 250
  oracle = gaussian_oracle(jnp.zeros(2), jnp.full((2,), 0.5))
  mask = jnp.ones((8, 3), bool)
  x_ddpm = make_sampler(oracle, SCHEDULE, kind="ddpm", num_steps=T)(
      None, jax.random.PRNGKey(4), mask, None, 2)
  x_ddim = make_sampler(oracle, SCHEDULE, kind="ddim", num_steps=T, eta=1.0)(
      None, jax.random.PRNGKey(4), mask, None, 2)
  np.testing.assert_allclose(x_ddim, x_ddpm, atol=1e-5)


def test_traced_once_rng_and_padding():
  traces = []

  def counting_oracle(params, z, t, mask, *unused):
    traces.append(z.shape)
    return gaussian_oracle(jnp.ones(3), jnp.ones(3))(params, z, t, mask)

  sample = make_sampler(counting_oracle, SCHEDULE, num_steps=20)
  mask_a = mask_from_lengths(jnp.array([5, 2, 0, 3]), 5)
  mask_b = mask_from_lengths(jnp.array([1, 5, 4, 4]), 5)
  x1 = sample(None, jax.random.PRNGKey(0), mask_a, None, 3)
  x2 = sample(None, jax.random.PRNGKey(0), mask_a, None, 3)
  x3 = sample(None, jax.random.PRNGKey(1), mask_b, None, 3)
  assert len(traces) == 1, "the sampler must compile once per shape (the step loop is a lax.scan)"
  np.testing.assert_array_equal(x1, x2)
  both = np.asarray(mask_a & mask_b)
  assert np.all(np.abs(np.asarray(x1)[both] - np.asarray(x3)[both]) > 0)
  # Padded positions are exactly zero; valid ones are not.
  assert np.all(np.asarray(x3)[~np.asarray(mask_b)] == 0)
  assert np.all(np.asarray(x3)[np.asarray(mask_b)] != 0)


def test_self_conditioning_is_carried_step_to_step():
  """A denoiser that answers (previous estimate + 1), or 0 without one, counts the steps."""
  def counter(params, z, t, mask, self_cond, has_self_cond, *unused):
    if self_cond is None:
      return jnp.zeros_like(z)
    return jnp.where(has_self_cond[:, None, None], self_cond + 1.0, 0.0)

  mask = jnp.ones((2, 3), bool)
  x = make_sampler(counter, SCHEDULE, num_steps=17, eta=0.0)(None, jax.random.PRNGKey(0), mask, None, 2)
  np.testing.assert_allclose(x, 16.0)  # first step has no estimate → 0; 16 later steps add 1 each
  x = make_sampler(counter, SCHEDULE, num_steps=17, self_condition=False)(
      None, jax.random.PRNGKey(0), mask, None, 2)
  np.testing.assert_allclose(x, 0.0)


def test_classifier_free_guidance_in_one_batched_call():
  c = 3  # classes 0..2, null = 3
  calls = []

  def class_reporter(params, z, t, mask, self_cond, has_self_cond, cond, train, rng):
    calls.append(None if cond is None else cond["class_id"].shape)
    value = -1.0 if cond is None else cond["class_id"].astype(jnp.float32)
    return jnp.broadcast_to(jnp.reshape(value, (-1, 1, 1)), z.shape)

  mask = jnp.ones((4, 2), bool)
  ids = jnp.array([0, 1, 2, 1])
  for w in (1.0, 2.0, 3.5):
    calls.clear()
    x = make_sampler(class_reporter, SCHEDULE, num_steps=5, guidance_scale=w, num_classes=c)(
        None, jax.random.PRNGKey(0), mask, ids, 2)
    expected = w * np.asarray(ids, np.float64) + (1 - w) * c
    np.testing.assert_allclose(np.asarray(x)[:, 0, 0], expected, rtol=1e-6)
    assert calls == ([(4,)] if w == 1.0 else [(8,)])  # cond and null stacked into one call
  # Unconditional sampling passes cond=None (the network's null class), with no guidance.
  x = make_sampler(class_reporter, SCHEDULE, num_steps=5, guidance_scale=2.0, num_classes=c)(
      None, jax.random.PRNGKey(0), mask, None, 2)
  np.testing.assert_allclose(x, -1.0)


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_objectives_are_read_as_x0(objective):
  """The same oracle expressed as ε or v output gives the same samples as its x0 form (η = 0)."""
  mu, s2 = jnp.array([0.5, -1.0]), jnp.array([0.25, 2.0])
  x0_oracle = gaussian_oracle(mu, s2)

  def converted(params, z, t, mask, *unused):
    ab = SCHEDULE.alphas_cumprod[t]
    x0 = x0_oracle(params, z, t, mask)
    return P.eps_from_x0(z, x0, ab) if objective == "eps" else P.v_from_x0(z, x0, ab)

  mask = jnp.ones((64, 3), bool)
  ref = make_sampler(x0_oracle, SCHEDULE, num_steps=50, eta=0.0)(None, jax.random.PRNGKey(2), mask, None, 2)
  got = make_sampler(converted, SCHEDULE, num_steps=50, eta=0.0, objective=objective)(
      None, jax.random.PRNGKey(2), mask, None, 2)
  # ε → x0 divides by sqrt(ᾱ_T) ≈ 0.006 at the first step, so float32 rounding is amplified there.
  np.testing.assert_allclose(got, ref, atol=1e-3)


def test_trajectory_and_clipping():
  mu = jnp.array([1.0, -0.5])
  sample = make_sampler(gaussian_oracle(mu, jnp.full((2,), 0.3)), SCHEDULE, num_steps=20,
                        return_trajectory_at=(0, 10, 19))
  mask = mask_from_lengths(jnp.array([3, 1]), 3)
  x, traj = sample(None, jax.random.PRNGKey(0), mask, None, 2)
  assert traj.shape == (3, 2, 3, 2)
  np.testing.assert_array_equal(traj[-1], x)  # the last step's x̂0 is the sample
  valid = np.asarray(mask)
  # At the first step z is almost pure noise (ᾱ ≈ 4e-5), so the optimal x̂0 is almost exactly μ.
  np.testing.assert_allclose(np.asarray(traj[0])[valid], np.broadcast_to(mu, (valid.sum(), 2)), atol=0.05)
  assert np.all(np.asarray(traj)[:, ~valid] == 0)
  big = lambda params, z, *unused: jnp.full_like(z, 5.0)
  x = make_sampler(big, SCHEDULE, num_steps=4, clip_x0=1.0)(None, jax.random.PRNGKey(0), mask, None, 2)
  np.testing.assert_allclose(np.asarray(x)[valid], 1.0)


def test_sampler_from_config_matches_make_sampler():
  oracle = gaussian_oracle(jnp.zeros(2), jnp.ones(2))
  sample_cfg = ml_collections.ConfigDict(dict(sampler="ddim", num_steps=10, eta=0.5, guidance_scale=1.0))
  diffusion_cfg = ml_collections.ConfigDict(dict(objective="x0", self_condition_prob=0.5))
  mask = jnp.ones((3, 2), bool)
  a = sampler_from_config(oracle, SCHEDULE, sample_cfg, diffusion_cfg)(None, jax.random.PRNGKey(0), mask,
                                                                       None, 2)
  b = make_sampler(oracle, SCHEDULE, num_steps=10, eta=0.5)(None, jax.random.PRNGKey(0), mask, None, 2)
  np.testing.assert_array_equal(a, b)


def test_mask_and_bad_arguments():
  np.testing.assert_array_equal(mask_from_lengths(jnp.array([0, 2, 3]), 3),
                                [[False] * 3, [True, True, False], [True] * 3])
  with pytest.raises(ValueError, match="max_len=3"):
    mask_from_lengths(np.array([4]), 3)
  fn = lambda params, z, *unused: z
  with pytest.raises(ValueError, match="all T=1000 steps"):
    make_sampler(fn, SCHEDULE, kind="ddpm", num_steps=250)
  with pytest.raises(ValueError, match="unknown sampler kind"):
    make_sampler(fn, SCHEDULE, kind="euler")
  with pytest.raises(ValueError, match="return_trajectory_at"):
    make_sampler(fn, SCHEDULE, num_steps=10, return_trajectory_at=(10,))
  with pytest.raises(ValueError, match="num_classes"):
    make_sampler(fn, SCHEDULE, guidance_scale=2.0)
  with pytest.raises(ValueError, match="num_steps must be in"):
    make_sampler(fn, SCHEDULE, num_steps=2000)
  with pytest.raises(ValueError, match="needs latent_dim"):
    make_sampler(fn, SCHEDULE, num_steps=3)(None, jax.random.PRNGKey(0), jnp.ones((2, 3), bool))
  with pytest.raises(ValueError, match="mask must be bool"):
    make_sampler(fn, SCHEDULE, num_steps=3)(None, jax.random.PRNGKey(0), jnp.ones((2, 3)), None, 2)
