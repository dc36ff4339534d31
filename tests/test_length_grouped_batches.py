"""LengthGroupedOrder: batches of similar length, in random order, as a function of (seed, step) alone."""

import json
import shutil

import numpy as np
import pytest

from ldlg.data import step_batches
from ldlg.data.step_batches import LengthGroupedOrder

N, B, K = 1003, 16, 8  # 62 batches an epoch, 11 examples dropped; groups of 8 batches (the last one 6)


@pytest.fixture(scope="module")
def lengths():
  # E2E-like: a skewed spread of lengths, so a random batch's longest is far above its mean.
  return np.clip(np.random.default_rng(0).gamma(6.0, 4.0, size=N).astype(int) + 3, 3, 64)


def test_each_epoch_visits_every_kept_example_once_with_a_fresh_remainder(lengths):
  order = LengthGroupedOrder(lengths, B, seed=3, group_batches=K)
  assert order.steps_per_epoch == N // B == 62
  epochs = [np.concatenate([order.batch(e * 62 + j) for j in range(62)]) for e in range(2)]
  for e, seen in enumerate(epochs):
    assert len(seen) == len(set(seen.tolist())) == 62 * B
    # The kept examples are the first 62 x B of the epoch's permutation, the one `batch_indices` uses.
    assert set(seen.tolist()) == set(step_batches.epoch_permutation(3, e, N)[:62 * B].tolist())
  assert set(epochs[0].tolist()) != set(epochs[1].tolist())  # a different remainder dropped


def test_batches_are_length_sorted_slices_of_their_group(lengths):
  order = LengthGroupedOrder(lengths, B, seed=3, group_batches=K)
  perm = step_batches.epoch_permutation(3, 0, N)[:62 * B]
  batches = {tuple(order.batch(j).tolist()) for j in range(62)}
  for start in range(0, 62 * B, K * B):
    group = perm[start:start + K * B]
    ranked = group[np.argsort(lengths[group], kind="stable")]
    for j in range(0, len(group), B):
      assert tuple(ranked[j:j + B].tolist()) in batches


def test_padding_falls_and_order_is_random(lengths):
  grouped = LengthGroupedOrder(lengths, B, seed=1, group_batches=K)
  waste = lambda idx: 1 - lengths[idx].mean() / lengths[idx].max()
  plain = np.mean([waste(step_batches.batch_indices(s, N, B, 1)) for s in range(62)])
  tight = np.mean([waste(grouped.batch(s)) for s in range(62)])
  assert plain > 0.4 and tight < plain / 3, (plain, tight)
  # The visiting order is shuffled: successive batches' lengths are not monotone.
  means = np.array([lengths[grouped.batch(s)].mean() for s in range(62)])
  assert np.any(np.diff(means) > 0) and np.any(np.diff(means) < 0)


def test_one_batch_groups_keep_the_random_batches(lengths):
  order = LengthGroupedOrder(lengths, B, seed=2, group_batches=1)
  perm = step_batches.epoch_permutation(2, 0, N)
  random_sets = {frozenset(perm[j * B:(j + 1) * B].tolist()) for j in range(62)}
  assert {frozenset(order.batch(j).tolist()) for j in range(62)} == random_sets


def test_depends_on_seed_and_step_only(lengths):
  a = LengthGroupedOrder(lengths, B, seed=4, group_batches=K)
  b = LengthGroupedOrder(lengths, B, seed=4, group_batches=K)
  for step in (200, 0, 61, 62, 5):  # any order, across epochs: nothing depends on earlier calls
    np.testing.assert_array_equal(a.batch(step), b.batch(step))
  assert not np.array_equal(a.batch(0), LengthGroupedOrder(lengths, B, seed=5, group_batches=K).batch(0))


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="batch size 8 is larger than the 5 examples"):
    LengthGroupedOrder(np.ones(5), 8, seed=0, group_batches=2)
  with pytest.raises(ValueError, match="group_batches must be >= 1"):
    LengthGroupedOrder(np.ones(50), 8, seed=0, group_batches=0)
  with pytest.raises(ValueError, match="one length per example"):
    LengthGroupedOrder(np.ones((5, 2)), 2, seed=0, group_batches=1)
  with pytest.raises(ValueError, match="step must be >= 0"):
    LengthGroupedOrder(np.ones(50), 8, seed=0, group_batches=2).batch(-1)


def _tiny_benchmark(tiny_cli_run, tmp_path, data_dir, parts):
  from configs import tiny
  from ldlg.benchmarks import length_grouping
  from ldlg.engine.workdir import Workdir
  config = tiny.get_config()
  shutil.copytree(tiny_cli_run, tmp_path / "run", symlinks=True)
  epoch = 256 // config.train.batch_size
  result = length_grouping.run(config, Workdir(tmp_path / "run"), data_dir, group=4, steps=epoch, rounds=1,
                               calls=1, parts=parts, sample_steps=2)
  json.dumps(result)
  return config, epoch, result


def _check_loop(result, part, epoch):
  r = result[part]
  for order in ("random", "grouped"):
    assert sum(r[order]["width_counts"].values()) == epoch
    assert set(r[order]["width_counts"]) <= set(r["seconds_by_width"])
    assert r[order]["expected_seconds_per_step"] > 0
  assert r["ratio_grouped_to_random"] > 0


@pytest.mark.slow
def test_length_grouping_benchmark_on_a_tiny_run(tiny_cli_run, data_dir, tmp_path):
  """The benchmark reads the run's real lengths: over one epoch of the denoiser's batches the grouped order pads
  to no more positions than the random one (sorting within each group minimises every batch's longest member)."""
  from ldlg.benchmarks import length_grouping
  from ldlg.engine.workdir import Workdir
  config, epoch, result = _tiny_benchmark(tiny_cli_run, tmp_path, data_dir, ("denoiser", "sampler"))
  den = result["denoiser"]
  assert den["grouped"]["mean_width"] <= den["random"]["mean_width"]
  assert 0 < den["random"]["fill"] <= den["grouped"]["fill"] <= 1
  _check_loop(result, "denoiser", epoch)
  # The sample stage: every batch at model.max_len, against sorted lengths in 8-position buckets.
  smp, batches = result["sampler"], config.sample.num_samples // config.sample.batch_size
  assert smp["random"]["width_counts"] == {config.model.max_len: batches}
  assert sum(smp["grouped"]["width_counts"].values()) == batches
  assert all(w % 8 == 0 or w == config.model.max_len for w in smp["grouped"]["width_counts"])
  assert smp["grouped"]["mean_width"] <= smp["random"]["mean_width"]
  assert 0 < smp["random"]["fill"] <= smp["grouped"]["fill"] <= 1 and smp["ratio_grouped_to_random"] > 0
  with pytest.raises(ValueError, match="--group must be >= 1"):
    length_grouping.run(config, Workdir(tmp_path / "run"), data_dir, group=0, steps=2, rounds=1, calls=1)


@pytest.mark.slow
@pytest.mark.extended
def test_length_grouping_benchmark_bart_loop_on_a_tiny_run(tiny_cli_run, data_dir, tmp_path):
  """The BART pretraining loop's report: widths on the autoencoder's pad multiple. Extended, to keep CI under its
  budget: it compiles one BART train step per width. Its batching (`bart_widths`) is checked only here."""
  config, epoch, result = _tiny_benchmark(tiny_cli_run, tmp_path, data_dir, ("bart",))
  _check_loop(result, "bart", epoch)
  assert all(w % config.autoencoder.pad_multiple == 0 for w in result["bart"]["seconds_by_width"])
