"""SUBS parameterization, masking schedules and low-discrepancy times of masked diffusion: closed-form facts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlg.methods.masked import MaskSchedule, antithetic_times, subs_log_probs

MASK = 4


def test_subs_zero_mask_probability_carry_over_and_normalised():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7)) * 3.0
  z_t = jnp.array([[MASK, 0, MASK, 6, 2], [1, MASK, MASK, MASK, 5]])
  log_probs = jax.jit(subs_log_probs, static_argnums=2)(logits, z_t, MASK)  # one compile, not one per op
  probs = np.asarray(jnp.exp(log_probs))
  # (1) the mask token has exactly zero probability everywhere.
  assert np.all(probs[..., MASK] == 0.0)
  # (2) unmasked inputs are copied exactly: a one-hot with log-probability 0 at the input token.
  unmasked = np.asarray(z_t != MASK)
  expected = np.eye(7)[np.asarray(z_t)]
  np.testing.assert_array_equal(probs[unmasked], expected[unmasked])
  np.testing.assert_array_equal(np.asarray(log_probs)[unmasked][expected[unmasked] == 1], 0.0)
  # (3) masked positions hold a proper distribution: the softmax of the other logits.
  np.testing.assert_allclose(probs[~unmasked].sum(-1), 1.0, rtol=1e-6)
  other = np.delete(np.asarray(logits)[~unmasked], MASK, axis=-1)
  softmax = np.exp(other - other.max(-1, keepdims=True))
  np.testing.assert_allclose(np.delete(probs[~unmasked], MASK, axis=-1), softmax / softmax.sum(-1, keepdims=True),
                             rtol=1e-5)


@pytest.mark.parametrize("kind,exponent", [("loglinear", 1.0), ("cosine", 1.0), ("poly", 2.0)])
def test_schedule_endpoints_and_derivative(kind, exponent):
  eps = 1e-3
  s = MaskSchedule(kind, eps, exponent)
  assert float(s.alpha(0.0)) == 1.0 and float(s.mask_prob(0.0)) == 0.0  # clean data at t = 0
  np.testing.assert_allclose(float(s.alpha(1.0)), eps, atol=1e-7)
  t = jnp.linspace(0.05, 0.95, 7)
  np.testing.assert_allclose(s.dalpha(t), jax.vmap(jax.grad(s.alpha))(t), rtol=1e-4)
  assert np.all(np.diff(np.asarray(s.alpha(t))) < 0)
  np.testing.assert_allclose(s.weight(t), -s.dalpha(t) / (1.0 - s.alpha(t)), rtol=1e-4)
  assert float(s.weight(0.0)) == 0.0  # nothing is masked at t = 0: finite, no 0 * inf


def test_loglinear_is_linear_alpha_with_weight_one_over_t():
  s = MaskSchedule("loglinear", eps=0.01)
  t = jnp.array([1e-4, 0.3, 1.0])
  np.testing.assert_allclose(s.alpha(t), 1.0 - 0.99 * t, rtol=1e-6)
  np.testing.assert_allclose(s.weight(t), 1.0 / t, rtol=1e-5)


def test_antithetic_times_one_per_bin():
  batch = 16
  for seed in range(3):
    u = jax.random.uniform(jax.random.PRNGKey(seed), ())
    t = np.asarray(antithetic_times(u, jnp.arange(batch), batch))
    assert np.all((t >= 0) & (t < 1))
    np.testing.assert_array_equal(np.sort(np.floor(t * batch)), np.arange(batch))
  # A device's share of the global batch gets the times the whole batch gives those indices.
  u = jnp.float32(0.37)
  np.testing.assert_array_equal(antithetic_times(u, jnp.arange(8, 16), batch),
                                antithetic_times(u, jnp.arange(batch), batch)[8:])
