"""The masked-diffusion NELBO against exact likelihoods of toy distributions.

Data: sequences of L = 4 tokens over {0, 1, 2}; token 3 is the mask. The NELBO (ε = 0, log-linear α_t = 1 - t)
of a denoiser that ignores t is, by enumerating the masked sets S (|S| = k, each with probability t^k (1-t)^(L-k)),

  continuous, t in [t_min, 1]:  Σ_S Σ_{ℓ∈S} CE_ℓ(S) ∫_{t_min}^1 t^(k-1) (1-t)^(L-k) dt
  T steps:                      Σ_S Σ_{ℓ∈S} CE_ℓ(S) Σ_{i=1}^T (1/T) t_i^(k-1) (1-t_i)^(L-k),  t_i = i/T

where CE_ℓ(S) = -log x_θ^ℓ[x^ℓ] given the tokens outside S. The loss's Monte Carlo estimates (one (t, z_t) per
example, antithetic times) must match these within standard errors; the closed forms themselves must equal the
exact NLL (continuous, t_min = 0, exact conditionals) or bound it from above.
"""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from ldlg.methods.masked import MaskSchedule, make_loss_fn, nelbo_terms

MASK, V, L = 3, 4, 4
SCHEDULE = MaskSchedule("loglinear", eps=0.0)
T_MIN = 0.01  # continuous time in [T_MIN, 1]: the weight 1/t has infinite variance down to t = 0
# A correlated distribution over a few sequences (not a product of per-position marginals).
SEQS = np.array([[0, 0, 1, 2], [0, 1, 1, 2], [2, 2, 0, 0], [1, 0, 2, 1], [2, 2, 2, 0], [0, 0, 0, 0]])
PROBS = np.array([0.3, 0.1, 0.25, 0.15, 0.1, 0.1])
ALL_SEQS = np.array(list(itertools.product(range(3), repeat=L)))  # every sequence, for the oracle's table


def table_probs(seqs, probs):
  """The probabilities of ALL_SEQS under a distribution given on `seqs` (zero elsewhere)."""
  index = {tuple(x): i for i, x in enumerate(ALL_SEQS)}
  table = np.zeros(len(ALL_SEQS))
  for x, p in zip(seqs, probs):
    table[index[tuple(x)]] += p
  return table


def product_probs(pi):
  """ALL_SEQS probabilities of the product of per-position categoricals pi [L, 3]."""
  return np.prod(pi[np.arange(L), ALL_SEQS], axis=1)


def exact_conditional_oracle(params, z_t, t, mask, class_id, train, rng):
  """log p(x^ℓ | unmasked tokens of z_t) for the distribution params [len(ALL_SEQS)] over ALL_SEQS.

  The ideal denoiser of that distribution; for a product distribution it is the per-position categorical.
  One function for every test (the distribution is a parameter), so the loss compiles once per setting.
  """
  del t, mask, class_id, train, rng
  seqs = jnp.asarray(ALL_SEQS)
  consistent = jnp.all((z_t[:, None, :] == MASK) | (z_t[:, None, :] == seqs[None]), axis=-1)  # [B, N]
  weights = consistent * params
  marginal = jnp.einsum("bn,nlv->blv", weights, jax.nn.one_hot(seqs, V)) / weights.sum(-1)[:, None, None]
  return jnp.log(marginal)


@functools.lru_cache(maxsize=None)
def _batched_loss(num_timesteps):
  loss_fn = make_loss_fn(exact_conditional_oracle, SCHEDULE, mask_id=MASK, num_timesteps=num_timesteps,
                         t_min=T_MIN, train=False)
  return jax.jit(lambda p, k, b: loss_fn(p, k, b)[0])


def mc_loss(table, ids, *, num_timesteps=0, num_keys=16):
  """Per-token loss of the oracle of `table` on `ids` for num_keys independent keys: (mean, standard error)."""
  batch = {"input_ids": jnp.asarray(ids), "mask": jnp.ones(ids.shape, bool), "example_index": jnp.arange(len(ids))}
  loss = _batched_loss(num_timesteps)
  table = jnp.asarray(table, jnp.float32)
  # A Python loop of one compiled call: a vmap over keys would double the compile time for no gain.
  losses = np.array([loss(table, jax.random.PRNGKey(i), batch) for i in range(num_keys)], np.float64)
  return losses.mean(), losses.std(ddof=1) / math.sqrt(num_keys)


def exact_conditional_ce(x):
  """{masked set S (tuple): [L] CE_ℓ(S) of the exact conditionals (0 outside S)} for one sequence x."""
  out = {}
  for k in range(1, L + 1):
    for s in itertools.combinations(range(L), k):
      keep = [l for l in range(L) if l not in s]
      consistent = np.all(SEQS[:, keep] == x[keep], axis=1)
      w = PROBS * consistent
      ce = np.zeros(L)
      for l in s:
        ce[l] = -math.log(w[SEQS[:, l] == x[l]].sum() / w.sum())
      out[s] = ce
  return out


def closed_form_nelbo(ce_by_set, *, num_timesteps=0, t_min=0.0):
  """The enumerated NELBO of one sequence (see the module docstring)."""
  total = 0.0
  for s, ce in ce_by_set.items():
    k = len(s)
    if num_timesteps:
      t = np.arange(1, num_timesteps + 1) / num_timesteps
      factor = np.sum(t ** (k - 1) * (1 - t) ** (L - k)) / num_timesteps
    else:
      factor = scipy.special.beta(k, L - k + 1) * (1 - scipy.special.betainc(k, L - k + 1, t_min))
    total += factor * ce.sum()
  return total


def data_sample(n, seed=0):
  """(ids [n, L] drawn from (SEQS, PROBS), their exact NLL per token)."""
  which = np.random.default_rng(seed).choice(len(SEQS), size=n, p=PROBS)
  return SEQS[which], -np.mean(np.log(PROBS[which])) / L


def test_factorized_data_nelbo_equals_nll():
  rng = np.random.default_rng(1)
  pi = rng.dirichlet(np.ones(3), size=L)  # [L, 3]
  ids = np.stack([rng.choice(3, size=512, p=pi[l]) for l in range(L)], axis=1)
  nll_per_token = -np.mean(np.log(pi[np.arange(L), ids]))
  # Continuous time estimates ∫_{t_min}^1 -α'_t dt × NLL = (1 - t_min) NLL; T steps give NLL exactly (Σ w = 1).
  mean, se = mc_loss(product_probs(pi), ids)
  assert se < 0.03 * nll_per_token  # the check below has power
  assert abs(mean - (1 - T_MIN) * nll_per_token) < 4 * se
  mean, se = mc_loss(product_probs(pi), ids, num_timesteps=2)
  assert abs(mean - nll_per_token) < 4 * se


def test_exact_denoiser_nelbo_is_tight_in_continuous_time_and_converges_from_above_in_t_steps():
  for i, x in enumerate(SEQS):
    ce = exact_conditional_ce(x)
    nll = -math.log(PROBS[i])
    # The continuous-time NELBO of the ideal denoiser is the exact NLL (the any-order chain rule).
    np.testing.assert_allclose(closed_form_nelbo(ce), nll, rtol=1e-10)
    # T steps unmask several tokens at once from independent marginals: an upper bound that closes as T grows.
    gaps = [closed_form_nelbo(ce, num_timesteps=T) - nll for T in (1, 2, 4, 16, 256, 4096)]
    assert all(g > -1e-12 for g in gaps)
    assert all(a >= b - 1e-12 for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-3 * max(nll, 1.0)
  assert max(closed_form_nelbo(exact_conditional_ce(x), num_timesteps=2) + math.log(p)
             for x, p in zip(SEQS, PROBS)) > 0.05  # correlated data: the few-step bound is visibly loose


def test_loss_monte_carlo_matches_closed_form_nelbo_of_exact_denoiser():
  ids, nll = data_sample(512)
  ce = {tuple(x): exact_conditional_ce(x) for x in SEQS}
  table = table_probs(SEQS, PROBS)
  for num_timesteps, t_min in ((0, T_MIN), (2, 0.0)):
    exact = np.mean([closed_form_nelbo(ce[tuple(x)], num_timesteps=num_timesteps, t_min=t_min) for x in ids]) / L
    mean, se = mc_loss(table, ids, num_timesteps=num_timesteps)
    assert se < 0.02 * exact
    assert abs(mean - exact) < 4 * se, (num_timesteps, mean, exact, se)
  # The 2-step NELBO bounds the NLL from above by many standard errors.
  assert mean - nll > 10 * se


def test_misspecified_factorized_denoiser_upper_bounds_nll_of_correlated_data():
  ids, nll = data_sample(512, seed=2)
  pi = np.array([[PROBS[SEQS[:, l] == v].sum() for v in range(3)] for l in range(L)])
  # The product of the marginals: its NELBO is its cross-entropy, (1 - t_min) × Σ_ℓ -log pi_ℓ(x_ℓ).
  cross_entropy = -np.mean(np.log(pi[np.arange(L), ids]))
  mean, se = mc_loss(product_probs(pi), ids)
  assert abs(mean - (1 - T_MIN) * cross_entropy) < 4 * se
  assert mean - nll > 10 * se


def test_padding_is_modelled_or_left_clean():
  # T = 1 and ε = 0: t = 1, so every modelled position is masked. With pad_in_loss the pads are modelled tokens
  # (all L positions masked, every key visible); without, pads stay clean and are hidden from attention.
  seen = {}

  def uniform_oracle(params, z_t, t, mask, class_id, train, rng):
    seen["z_t"], seen["key_mask"] = z_t, mask
    return jnp.zeros(z_t.shape + (V,))

  ids = jnp.array([[0, 1, 2, 2], [1, 1, 2, 2]])  # token 2 plays the pad here
  real = ids != 2
  for pad_in_loss in (True, False):
    @jax.jit
    def run(batch):
      terms = nelbo_terms(uniform_oracle, SCHEDULE, None, jax.random.PRNGKey(0), batch, mask_id=MASK,
                          num_timesteps=1, pad_in_loss=pad_in_loss)
      return terms, dict(seen)  # what the network was given, from the same trace

    terms, seen_now = run({"input_ids": ids, "mask": real})
    seen.update(seen_now)
    modelled = np.ones(ids.shape, bool) if pad_in_loss else np.asarray(real)
    np.testing.assert_array_equal(seen["z_t"], np.where(modelled, MASK, ids))
    np.testing.assert_array_equal(seen["key_mask"], modelled)
    # Each masked position costs log 3 (uniform over the 3 non-mask tokens); the count is the real tokens.
    np.testing.assert_allclose(terms["nelbo"], modelled.sum(1) * math.log(3), rtol=1e-6)
    np.testing.assert_array_equal(terms["num_tokens"], [2, 2])
