"""Masked-diffusion samplers: invariants of the reverse process, exact marginals of oracles, cache = no cache."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from ldlg.methods.masked import MaskSchedule, logits_fn_from_module, make_sampler, make_semi_ar_sampler
from ldlg.methods.masked.samplers import inverse_cdf_sample
from ldlg.networks.token_transformer import TokenTransformer

MASK = 4
SCHEDULE = MaskSchedule("loglinear", eps=1e-3)


def factorized_oracle(params, z_t, t, mask, class_id, train, rng):
  """Predicts the per-position categorical params [C+1, L, V] (as logits) of the class; row C when None."""
  log_pi = jnp.log(params)
  row = jnp.full((z_t.shape[0],), log_pi.shape[0] - 1) if class_id is None else class_id
  return log_pi[row]


def within_binomial_error(samples, probs, num_se=4.5):
  """Per-position token frequencies of samples [N, L] match probs [L, V] within num_se standard errors."""
  n, length = samples.shape
  freq = np.stack([np.bincount(samples[:, l], minlength=probs.shape[1]) / n for l in range(length)])
  se = np.sqrt(probs * (1 - probs) / n) + 1e-3
  assert np.all(np.abs(freq - probs) < num_se * se), (freq, probs)


PI = np.array([[0.6, 0.3, 0.1, 0.0, 0.0],    # [L=3, V=5]; token 4 is the mask and has no mass
               [0.1, 0.2, 0.3, 0.4, 0.0],
               [0.2, 0.3, 0.05, 0.45, 0.0]])


def test_factorized_oracle_marginals_are_exact():
  sample = make_sampler(factorized_oracle, SCHEDULE, mask_id=MASK, length=3, num_steps=8)
  n = 4000
  out = sample(jnp.asarray(PI[None]), jax.random.PRNGKey(0), jnp.arange(n))
  tokens = np.asarray(out["tokens"])
  assert not np.any(tokens == MASK)
  within_binomial_error(tokens, PI)


def test_nucleus_keeps_the_top_mass_only():
  sample = make_sampler(factorized_oracle, SCHEDULE, mask_id=MASK, length=3, num_steps=4, top_p=0.7)
  tokens = np.asarray(sample(jnp.asarray(PI[None]), jax.random.PRNGKey(1), jnp.arange(3000))["tokens"])
  # The smallest top sets reaching 0.7: {0.6, 0.3}, {0.4, 0.3}, {0.45, 0.3}, renormalized.
  expected = np.array([[2 / 3, 1 / 3, 0, 0, 0], [0, 0, 3 / 7, 4 / 7, 0], [0, 0.4, 0, 0.6, 0]])
  within_binomial_error(tokens, expected)


def test_classifier_free_guidance_sharpens_toward_the_class():
  cond, null = PI[0], np.array([0.25, 0.25, 0.25, 0.25, 0.0])
  params = np.stack([np.tile(cond, (3, 1)), np.tile(PI[1], (3, 1)), np.tile(null, (3, 1))])  # classes 0, 1, null
  w = 2.0
  sample = make_sampler(factorized_oracle, SCHEDULE, mask_id=MASK, length=3, num_steps=4, guidance_scale=w,
                        num_classes=2)
  n = 3000
  tokens = np.asarray(sample(jnp.asarray(params), jax.random.PRNGKey(2), jnp.arange(n),
                             jnp.zeros((n,), jnp.int32))["tokens"])
  guided = np.where(null > 0, cond ** w * np.where(null > 0, null, 1.0) ** (1 - w), 0.0)
  within_binomial_error(tokens, np.tile(guided / guided.sum(), (3, 1)))


@pytest.fixture(scope="module")
def tiny_network():
  model = TokenTransformer(vocab_size=9, dim=16, num_layers=1, num_heads=2, ff_mult=2, max_len=8)

  # Random parameters from one normal draw over the init's structure (flax's init would run one random program
  # per parameter, each seconds of compile time on CPU); unlike the init, the output layer is not zero.
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  flat, unravel = jax.flatten_util.ravel_pytree(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes))
  params = unravel(0.5 * jax.random.normal(jax.random.PRNGKey(1), flat.shape))
  return logits_fn_from_module(model), params


@pytest.mark.slow
def test_reverse_process_invariants_and_cache_equals_plain(tiny_network):
  logits_fn, params = tiny_network
  num_steps, batch = 40, 3
  plain, cached = (make_sampler(logits_fn, SCHEDULE, mask_id=MASK, length=6, num_steps=num_steps, cache=cache,
                                return_trajectory=True) for cache in (False, True))
  out_plain = plain(params, jax.random.PRNGKey(3), jnp.arange(batch))
  out_cached = cached(params, jax.random.PRNGKey(3), jnp.arange(batch))
  # The cache changes nothing but the number of network calls.
  np.testing.assert_array_equal(out_cached["trajectory"], out_plain["trajectory"])
  assert int(out_plain["num_network_calls"]) == num_steps
  assert int(out_cached["num_network_calls"]) < num_steps

  traj = np.asarray(out_plain["trajectory"])  # [T, B, L]
  final = traj[-1]
  assert not np.any(final == MASK)
  num_masked = (traj == MASK).sum(-1)  # [T, B]
  assert np.all(np.diff(num_masked, axis=0) <= 0)  # non-increasing
  assert np.any(num_masked[0] > 0)  # the run did start from masks (40 steps for 6 tokens)
  # Once a position is unmasked it keeps its token to the end: never re-masked, never changed.
  unmasked = traj != MASK
  assert np.all(np.where(unmasked, traj == final[None], True))
  assert not np.any(unmasked[:-1] & ~unmasked[1:])
  # The cache called the network at the first step and after every step that revealed a token, and only then.
  before = np.concatenate([np.full_like(traj[:1], MASK), traj[:-1]])
  changed = np.any(traj != before, axis=(1, 2))  # [T]: did step j reveal anything?
  assert int(out_cached["num_network_calls"]) == 1 + int(changed[:-1].sum())


def test_semi_autoregressive_keeps_the_prefix_and_fills_every_block():
  window, overlap, total, num_steps = 8, 3, 21, 5
  table = np.tile(PI[1], (1, window, 1))  # [1, window, V]: the oracle's null row
  sample = make_semi_ar_sampler(factorized_oracle, SCHEDULE, mask_id=MASK, window=window, total_length=total,
                                overlap=overlap, num_steps=num_steps, cache=False)
  prefix = jnp.array([[0, 2, 2], [0, 3, 3]])
  out = sample(jnp.asarray(table), jax.random.PRNGKey(4), jnp.arange(2), prefix=prefix)
  tokens = np.asarray(out["tokens"])
  assert tokens.shape == (2, total)
  np.testing.assert_array_equal(tokens[:, :3], prefix)
  assert not np.any(tokens == MASK)
  # 1 + ceil((21 - 8) / (8 - 3)) = 4 windows of num_steps calls each.
  assert int(out["num_network_calls"]) == 4 * num_steps


def test_inverse_cdf_sample_never_picks_a_zero_probability_token():
  log_probs = jnp.log(jnp.array([0.5, 0.0, 0.5, 0.0]))
  v = jnp.array([0.0, 0.49, 0.51, 1.0 - 2.0 ** -24, 1.0])  # 1.0: the rounding fallback
  tokens = jax.jit(inverse_cdf_sample)(jnp.broadcast_to(log_probs, (5, 4)), v)
  np.testing.assert_array_equal(tokens, [0, 0, 2, 2, 2])
