"""Length-bucketed LD4LG sampling: a batch cut to its length bucket samples what the full width would, the runner
never computes a batch larger than what it has left, and the text sampler groups drawn lengths into batches."""

import jax
import ml_collections
import numpy as np
import pytest

from configs import tiny
from ldlg.engine import sample_runner
from ldlg.engine.workdir import Workdir
from ldlg.methods.gaussian.method import GaussianDiffusion
from ldlg.methods.gaussian.noise import batch_normal
from ldlg.methods.gaussian.text_sampler import TextSampler
from tests.helpers.denoiser_params import perturbed


def test_noise_cut_from_the_full_length_is_the_full_draw_at_those_positions():
  key = jax.random.PRNGKey(3)
  full = batch_normal(key, (6, 32, 4))
  np.testing.assert_array_equal(batch_normal(key, (6, 32, 4), full_length=32), full)
  np.testing.assert_array_equal(batch_normal(key, (6, 8, 4), full_length=32), full[:, :8])
  # A device's shard of a bucketed global batch: the same rows and positions of the one full draw.
  np.testing.assert_array_equal(batch_normal(key, (2, 16, 4), 4, 6, full_length=32), full[4:6, :16])
  with pytest.raises(ValueError, match="shorter than the batch's width"):
    batch_normal(key, (6, 40, 4), full_length=32)


@pytest.fixture(scope="module")
def tiny_method():
  config = tiny.get_config()
  method = GaussianDiffusion.from_config(config)
  return config, method, perturbed(method.init_params(jax.random.PRNGKey(0)), scale=0.1)


@pytest.mark.parametrize("kind", ["ddim", "dpm_solver_pp_2m", "sde_euler", "pc"])
def test_a_batch_cut_to_its_length_bucket_samples_what_the_full_width_does(tiny_method, kind):
  """The denoiser masks padding everywhere (attention keys, the loss), and the sampler's noise is drawn at
  model.max_len and cut: the rows of a batch at width 16 equal the same rows sampled at the full 32."""
  config, method, params = tiny_method
  sample_cfg = ml_collections.ConfigDict(dict(config.sample.to_dict(), sampler=kind, num_steps=6))
  sample = method.make_sampler(sample_cfg)
  lengths = np.array([3, 16, 9, 1])
  full_mask = np.arange(config.model.max_len)[None, :] < lengths[:, None]
  key = jax.random.PRNGKey(7)
  full = np.asarray(sample(params, key, full_mask))
  cut = np.asarray(sample(params, key, full_mask[:, :16]))
  assert cut.shape == (4, 16, config.model.latent_dim) and np.abs(full[:, 16:]).max() == 0
  assert np.abs(full).max() > 0.1  # Not a trivially zero sample.
  np.testing.assert_allclose(cut, full[:, :16], atol=2e-5)


def test_a_source_conditioned_batch_cut_to_its_bucket_samples_what_the_full_width_does():
  """Sequence-to-sequence LD4LG: the target is cut, the source (cross-attended memory) is not; with guidance."""
  from ldlg.methods.gaussian.seq2seq_method import SourceConditionedDiffusion
  config = tiny.get_config("ld4lg_seq2seq")
  method = SourceConditionedDiffusion.from_config(config)
  params = perturbed(method.init_params(jax.random.PRNGKey(0)), scale=0.1)
  sample_cfg = ml_collections.ConfigDict(dict(config.sample.to_dict(), sampler="ddim", num_steps=4))
  assert sample_cfg.guidance_scale > 1
  sample = method.make_sampler(sample_cfg)
  lengths, source_lengths = np.array([3, 16, 9]), np.array([5, 12, 1])
  full_mask = np.arange(config.model.max_len)[None, :] < lengths[:, None]
  cond = {"source": np.asarray(jax.random.normal(jax.random.PRNGKey(2), (3, 12, config.model.source_dim))),
          "source_mask": np.arange(12)[None, :] < source_lengths[:, None]}
  key = jax.random.PRNGKey(7)
  full = np.asarray(sample(params, key, full_mask, cond))
  cut = np.asarray(sample(params, key, full_mask[:, :16], cond))
  assert np.abs(full).max() > 0.1 and np.abs(full[:, 16:]).max() == 0
  np.testing.assert_allclose(cut, full[:, :16], atol=2e-5)


def _recording_runner(decode_empty=lambda round_, rows: set()):
  """A runner whose 'sampler' echoes each row's condition and whose decoder records the batches it was given."""
  calls = []

  def device_fn(params, rng, inputs, example_offset, global_batch):
    del params, rng, example_offset, global_batch
    return inputs["cond"]

  def make_inputs(rng_np, batch_size, cond):
    rng_np.random(batch_size)  # Host draws advance per batch, as a real method's do.
    return {"cond": np.asarray(cond, np.int32)}, [{} for _ in range(batch_size)]

  def decode(outputs, inputs):
    rows = [int(c) for c in np.asarray(outputs)]
    calls.append(rows)
    empty = decode_empty(len(calls), rows)
    return ["" if r in empty else f"row {r}" for r in rows]

  return sample_runner.SampleRunner(device_fn, make_inputs, decode, devices=jax.local_devices()[:1]), calls


def test_the_runner_never_pads_a_batch_beyond_what_is_left():
  runner, calls = _recording_runner()
  records = runner.sample(None, num_samples=3, seed=0, batch_size=8, conditions=np.arange(3))
  assert calls == [[0, 1, 2]] and runner.batch_rows == [3]  # Not a batch of 8 with 5 padded rows.
  assert [r["text"] for r in records] == ["row 0", "row 1", "row 2"]

  # Round 0 decodes rows 1 and 4 empty: the re-draw round is one batch of those 2 rows, not of 4.
  runner, calls = _recording_runner(lambda call, rows: {1, 4} if call <= 2 else set())
  records = runner.sample(None, num_samples=6, seed=0, batch_size=4, conditions=np.arange(6))
  assert calls == [[0, 1, 2, 3], [4, 5, 0, 0], [1, 4]]
  assert [r["round"] for r in records] == [0, 1, 0, 0, 1, 0] and runner.last_empty_count == 2
  assert runner.seconds_per_row() is not None


def test_the_runner_batches_in_the_given_order_and_returns_index_order():
  runner, calls = _recording_runner()
  order = [4, 0, 3, 1, 2]
  records = runner.sample(None, num_samples=5, seed=0, batch_size=2, conditions=np.arange(5), order=order)
  assert calls == [[4, 0], [3, 1], [2, 0]]
  assert [r["index"] for r in records] == [0, 1, 2, 3, 4] and [r["text"] for r in records] == [
      f"row {i}" for i in range(5)]
  with pytest.raises(ValueError, match="permutation"):
    runner.sample(None, num_samples=3, seed=0, batch_size=2, order=[0, 0, 1])


class _SumCodec:
  """Decodes each latent row to 'length:sum' (the sum of its valid positions) and records the decoder's widths."""
  latent_dim = tiny.get_config().model.latent_dim

  def __init__(self):
    self.widths = []

  def decode(self, latents, mask):
    self.widths.append(latents.shape[1])
    return [f"{int(m.sum())}:{float(x[m].sum()):.6f}" for x, m in zip(latents, mask)]


def _text_sampler(tiny_method, tmp_path, length_bucket, **sample_fields):
  config, _, _ = tiny_method
  config = ml_collections.ConfigDict(config.to_dict())
  config.sample.update(length_bucket=length_bucket, num_steps=4, **sample_fields)
  hist = np.zeros(config.model.max_len + 1)
  hist[[2, 5, 7, 11, 13, 20, 31]] = 1.0  # Lengths spread over four 8-position buckets.
  meta = {"length_counts": hist.tolist(), "stats": {"mean": [0.0] * _SumCodec.latent_dim, "std": 1.0}}
  return TextSampler.from_meta(config, Workdir(tmp_path), meta, codec=_SumCodec())


def test_text_sampler_groups_lengths_into_buckets_and_samples_as_the_full_width(tiny_method, tmp_path):
  _, _, params = tiny_method
  max_len = tiny_method[0].model.max_len
  bucketed = _text_sampler(tiny_method, tmp_path, 8)
  records = bucketed.sample(params, num_samples=12, seed=5, batch_size=3)
  # Records in index order, each with its planned length; the lengths are not sorted in the output.
  assert [r["index"] for r in records] == list(range(12))
  lengths = [r["length"] for r in records]
  assert all(int(r["text"].split(":")[0]) == r["length"] for r in records)
  assert lengths != sorted(lengths)
  # Batches of similar lengths, each traced once at its bucket; the decoder always sees model.max_len.
  assert bucketed.trace_count == len({-(-max(b) // 8) * 8 for b in np.split(np.sort(lengths), 4)})
  assert set(bucketed.codec.widths) == {max_len}
  # The same plan at the full width (a bucket of max_len) samples the same latents, row by row.
  full = _text_sampler(tiny_method, tmp_path, max_len).sample(params, num_samples=12, seed=5, batch_size=3)
  assert [r["length"] for r in full] == lengths
  np.testing.assert_allclose([float(r["text"].split(":")[1]) for r in records],
                             [float(r["text"].split(":")[1]) for r in full], atol=1e-3)
  # Deterministic from the seed, and another seed plans other lengths.
  assert bucketed.sample(params, num_samples=12, seed=5, batch_size=3) == records
  assert [r["length"] for r in bucketed.sample(params, num_samples=12, seed=6, batch_size=3)] != lengths


def test_length_bucket_zero_keeps_every_batch_at_the_full_width(tiny_method, tmp_path):
  _, _, params = tiny_method
  plain = _text_sampler(tiny_method, tmp_path, 0)
  records = plain.sample(params, num_samples=6, seed=5, batch_size=3)
  assert len(records) == 6 and plain.trace_count == 1


def test_config_rejects_a_negative_length_bucket():
  from ldlg import config_validation
  config = tiny.get_config()
  config.sample.length_bucket = -8
  with pytest.raises(config_validation.ConfigError, match="sample.length_bucket"):
    config_validation.validate_config(config)
