"""Noise schedules, q_sample and the x0/ε/v conversions: closed forms, endpoints, round trips."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ldlg.methods.gaussian import parameterization as P
from ldlg.methods.gaussian.schedules import (SCHEDULES, get_schedule, q_posterior_mean_variance, q_sample,
                                      schedule_from_config)


@pytest.mark.parametrize("name", SCHEDULES)
def test_alpha_bar_decreasing_and_tables_consistent(name):
  s = get_schedule(name, 1000)
  ab = np.asarray(s.alphas_cumprod, np.float64)
  betas = np.asarray(s.betas, np.float64)
  assert s.num_timesteps == 1000 and s.name == name
  assert np.all(np.diff(ab) < 0), "ᾱ must be strictly decreasing"
  assert np.all(betas > 0) and np.all(betas <= 0.999 + 1e-7)
  # Tables are float64-computed then stored as float32: compare to float32 precision (β rounding makes
  # 1-β relatively inexact where β ≈ 0.999, hence the absolute floor).
  np.testing.assert_allclose(ab, np.cumprod(1 - betas), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
  assert float(s.alphas_cumprod_prev[0]) == 1.0
  np.testing.assert_allclose(np.square(s.sqrt_alphas_cumprod), ab, rtol=1e-6)
  np.testing.assert_allclose(np.square(s.sqrt_one_minus_alphas_cumprod), 1 - np.cumprod(1 - betas),
                             rtol=1e-4)
  # Posterior q(z_{t-1}|z_t, x0): β̃_t = β_t (1-ᾱ_{t-1})/(1-ᾱ_t), zero at t = 0, below β_t elsewhere.
  assert float(s.posterior_variance[0]) == 0.0
  assert np.all(np.asarray(s.posterior_variance[1:]) < betas[1:])
  assert np.all(np.isfinite(s.posterior_log_variance_clipped))


def test_linear_schedule_endpoints_exact():
  s = get_schedule("linear", 1000)
  assert float(s.betas[0]) == np.float32(1e-4) and float(s.betas[-1]) == np.float32(0.02)
  np.testing.assert_allclose(np.diff(np.asarray(s.betas, np.float64)), (0.02 - 1e-4) / 999, rtol=1e-3)
  assert abs(float(s.alphas_cumprod[0]) - (1 - 1e-4)) < 1e-7
  # ᾱ_T = ∏(1-β) ≈ exp(-Σβ - Σβ²/2) ≈ 4.0e-5 for DDPM's schedule: z_T is essentially pure noise.
  assert 3e-5 < float(s.alphas_cumprod[-1]) < 5e-5
  custom = get_schedule("linear", 10, beta_start=0.1, beta_end=0.2)
  np.testing.assert_allclose(custom.betas, np.linspace(0.1, 0.2, 10), rtol=1e-6)


def test_cosine_schedule_closed_form():
  T, s = 1000, 0.008
  sch = get_schedule("cosine", T)
  f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  # Away from the clipped last step, ᾱ_t = f((t+1)/T) / f(0).
  for t in (0, 10, 500, 900):
    np.testing.assert_allclose(float(sch.alphas_cumprod[t]), f((t + 1) / T) / f(0), rtol=1e-5)
  assert float(sch.alphas_cumprod[0]) > 0.9999
  assert float(sch.betas[-1]) == pytest.approx(0.999)  # the clip
  assert float(sch.alphas_cumprod[-1]) < 1e-7


def test_sqrt_schedule_closed_form():
  T, s = 2000, 1e-4
  sch = get_schedule("sqrt", T)
  f = lambda u: 1 - math.sqrt(u + s)
  for t in (0, 100, 1000, 1990):
    np.testing.assert_allclose(float(sch.alphas_cumprod[t]), f((t + 1) / T) / f(0), rtol=1e-4)
  # DiffuSeq's schedule noises fast at first: ᾱ_0 = (1 - sqrt(1/T + s)) / (1 - sqrt(s)).
  assert float(sch.alphas_cumprod[0]) == pytest.approx((1 - math.sqrt(1 / T + s)) / (1 - math.sqrt(s)),
                                                       rel=1e-6)
  assert 0.97 < float(sch.alphas_cumprod[0]) < 0.99
  assert float(sch.betas[-1]) == pytest.approx(0.999)
  assert float(sch.alphas_cumprod[-1]) < 1e-4


def test_bad_arguments_name_the_problem():
  with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
    get_schedule("quadratic", 1000)
  with pytest.raises(ValueError, match="takes options"):
    get_schedule("cosine", 1000, beta_start=0.1)
  with pytest.raises(ValueError, match="num_timesteps"):
    get_schedule("linear", 1)
  with pytest.raises(ValueError, match="unknown diffusion objective"):
    P.target_for_objective("score", jnp.zeros(1), jnp.zeros(1), jnp.ones(1))


def test_schedule_from_config():
  cfg = ml_collections.ConfigDict(dict(schedule="linear", num_timesteps=100, beta_start=1e-3,
                                       beta_end=0.05))
  s = schedule_from_config(cfg)
  assert s.num_timesteps == 100
  np.testing.assert_allclose([s.betas[0], s.betas[-1]], [1e-3, 0.05], rtol=1e-6)
  s = schedule_from_config(ml_collections.ConfigDict(dict(schedule="cosine", num_timesteps=50)))
  assert s.name == "cosine" and s.num_timesteps == 50


def test_q_sample_moments():
  """z_t over many noise draws has mean sqrt(ᾱ_t) x0 and variance 1 - ᾱ_t (to 5 standard errors)."""
  s = get_schedule("linear", 1000)
  n, d = 20000, 3
  x0 = jnp.broadcast_to(jnp.array([1.5, -0.5, 0.0]), (n, d))
  for t in (0, 300, 999):
    noise = jax.random.normal(jax.random.PRNGKey(t), (n, d))
    z = np.asarray(q_sample(s, x0, jnp.full((n,), t), noise), np.float64)
    ab = float(s.alphas_cumprod[t])
    var = 1 - ab
    np.testing.assert_allclose(z.mean(0), math.sqrt(ab) * np.asarray(x0[0]),
                               atol=5 * math.sqrt(var / n) + 1e-6)
    np.testing.assert_allclose(z.var(0), var, atol=5 * var * math.sqrt(2 / (n - 1)))


def test_posterior_matches_bayes():
  """q(z_{t-1}|z_t,x0) mean/var equal Bayes' rule on q(z_{t-1}|x0) and q(z_t|z_{t-1})."""
  s = get_schedule("cosine", 100)
  t = jnp.array([1, 30, 99])
  ab_prev = np.asarray(s.alphas_cumprod_prev[t], np.float64)
  beta = np.asarray(s.betas[t], np.float64)
  x0 = jnp.array([[0.7], [-1.2], [2.0]])
  z_t = jnp.array([[0.1], [0.5], [-0.3]])
  mean, var = q_posterior_mean_variance(s, x0, z_t, t)
  # Gaussian prior N(sqrt(ᾱ_{t-1}) x0, 1-ᾱ_{t-1}) on z_{t-1}, likelihood N(z_t; sqrt(1-β) z_{t-1}, β).
  prec = 1 / (1 - ab_prev) + (1 - beta) / beta
  m = (np.sqrt(ab_prev) * np.asarray(x0[:, 0]) / (1 - ab_prev)
       + np.sqrt(1 - beta) * np.asarray(z_t[:, 0]) / beta) / prec
  np.testing.assert_allclose(np.asarray(var[:, 0]), 1 / prec, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(mean[:, 0]), m, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", SCHEDULES)
def test_parameterization_round_trips(name):
  """x0 ↔ ε ↔ v round trips hold to 1e-5 wherever the conversion is well conditioned."""
  s = get_schedule(name, 1000)
  t = jnp.arange(0, 1000, 7)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  x0 = jax.random.normal(k1, (t.shape[0], 5, 4))
  eps = jax.random.normal(k2, x0.shape)
  ab = s.alphas_cumprod[t]
  z = q_sample(s, x0, t, eps)
  v = P.v_from_x0_eps(x0, eps, ab)
  # v-based conversions are orthogonal rotations of (z, v): well conditioned for every t.
  np.testing.assert_allclose(P.x0_from_v(z, v, ab), x0, atol=1e-5)
  np.testing.assert_allclose(P.eps_from_v(z, v, ab), eps, atol=1e-5)
  # x0 from ε divides by sqrt(ᾱ) and ε from x0 by sqrt(1-ᾱ): float32 rounding of z is amplified by those
  # factors, so the 1e-5 check covers the steps where both are >= 0.1 and a scaled bound the rest.
  x0_rt = P.x0_from_eps(z, P.eps_from_x0(z, x0, ab), ab)
  eps_rt = P.eps_from_x0(z, P.x0_from_eps(z, eps, ab), ab)
  ok = np.asarray((ab >= 0.01) & (ab <= 0.99))
  assert ok.sum() > 50
  np.testing.assert_allclose(np.asarray(x0_rt)[ok], np.asarray(x0)[ok], atol=1e-5)
  np.testing.assert_allclose(np.asarray(eps_rt)[ok], np.asarray(eps)[ok], atol=1e-5)
  np.testing.assert_allclose(np.asarray(P.v_from_x0(z, x0, ab))[ok], np.asarray(v)[ok], atol=1e-5)
  cond = np.asarray(1 / jnp.sqrt(ab * (1 - ab)))[:, None, None]
  assert np.all(np.abs(np.asarray(x0_rt) - np.asarray(x0)) <= 1e-6 * cond * 10)
  # Target and output conversion agree for every objective: output = target ⇒ x̂0 = x0.
  for objective in P.OBJECTIVES:
    target = P.target_for_objective(objective, x0, eps, ab)
    x0_hat = P.x0_from_output(objective, z, target, ab)
    np.testing.assert_allclose(np.asarray(x0_hat)[ok], np.asarray(x0)[ok], atol=1e-5)
