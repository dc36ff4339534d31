"""SourceLengthModel: the empirical P(target length | source length) that seq2seq LD4LG draws its lengths from."""

import numpy as np
import pytest

from ldlg.data.conditional_lengths import SourceLengthModel


def test_a_length_fixed_by_the_source_is_drawn_exactly():
  source = np.repeat(np.arange(3, 11), 20)
  model = SourceLengthModel(source, 2 * source + 1, max_length=32, min_count=1)
  rng = np.random.default_rng(0)
  queries = np.arange(3, 11).repeat(50)
  np.testing.assert_array_equal(model.sample(rng, queries), 2 * queries + 1)
  assert [model.mean(s) for s in range(3, 11)] == [2.0 * s + 1 for s in range(3, 11)]
  assert (model.window[3:] == 0).all()


def test_a_well_populated_row_is_its_own_histogram_and_a_sparse_one_pools_the_nearest_lengths():
  rng = np.random.default_rng(1)
  source = np.concatenate([np.full(50, 4), np.full(1, 5), np.full(50, 6), np.full(200, 9)])
  target = rng.integers(1, 17, size=source.size)
  model = SourceLengthModel(source, target, max_length=16, min_count=60)
  np.testing.assert_array_equal(model.probs[9], np.bincount(target[source == 9], minlength=17) / 200)
  # Length 5 holds 1 pair: the window 4..6 holds 101 >= 60.
  assert model.window[5] == 1
  np.testing.assert_array_equal(model.probs[5], np.bincount(target[source <= 6], minlength=17) / 101)
  # Length 7 holds none; 6..8 holds 50, 5..9 holds 251.
  assert model.window[7] == 2
  np.testing.assert_array_equal(model.probs[7], np.bincount(target[source >= 5], minlength=17) / 251)
  # Longer sources than any seen use the longest's row; every row is a distribution with no mass at length 0.
  np.testing.assert_array_equal(model.row(40), model.probs[9])
  np.testing.assert_allclose(model.probs.sum(axis=1), 1.0)
  assert (model.probs[:, 0] == 0).all()


def test_a_min_count_above_the_data_gives_the_marginal_histogram_in_every_row():
  rng = np.random.default_rng(2)
  source, target = rng.integers(0, 30, 500), rng.integers(1, 25, 500)
  model = SourceLengthModel(source, target, max_length=24, min_count=10_000)
  marginal = np.bincount(target, minlength=25) / 500
  for s in range(model.longest_source + 1):
    np.testing.assert_allclose(model.probs[s], marginal, atol=1e-15)


def test_draws_follow_the_row_and_repeat_for_a_seed():
  rng = np.random.default_rng(3)
  source, target = rng.integers(5, 8, 3000), rng.integers(1, 9, 3000)
  model = SourceLengthModel(source, target, max_length=8, min_count=100)
  n = 40_000
  draws = model.sample(np.random.default_rng(4), np.full(n, 6))
  assert draws.min() >= 1 and draws.max() <= 8
  p = model.probs[6]
  freq = np.bincount(draws, minlength=9) / n
  se = np.sqrt(p * (1 - p) / n)
  assert (np.abs(freq - p) <= 4 * se + 1e-12).all()
  np.testing.assert_array_equal(model.sample(np.random.default_rng(4), np.full(n, 6)), draws)


@pytest.mark.parametrize("source,target,kwargs,match", [
    ([], [], {}, "at least one pair"),
    ([1, 2], [3], {}, "one source length per target length"),
    ([1, 2], [3, 40], {}, r"\[1, max_length=32\].*raise max_length"),
    ([1, 2], [0, 4], {}, r"\[1, max_length=32\]"),
    ([-1, 2], [3, 4], {}, "source lengths must be >= 0"),
    ([1, 2], [3, 4], {"min_count": 0}, "min_count must be >= 1"),
])
def test_bad_input_is_refused_with_the_fix(source, target, kwargs, match):
  with pytest.raises(ValueError, match=match):
    SourceLengthModel(source, target, max_length=32, **kwargs)
