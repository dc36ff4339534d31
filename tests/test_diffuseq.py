"""DiffuSeq: importance sampling of t, partial noising, rounding, the anchored sampler, the pmapped step, the
framing of pairs, and the engine's trainer carrying the importance state (exact resume, pmap = one device)."""
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ldlg.engine import trainer
from ldlg.engine.parallel import AXIS
from ldlg.methods.base import METHODS
from ldlg.methods.gaussian.schedules import get_schedule
from ldlg.methods.seq2seq import DiffuSeq, Seq2SeqDenoiser, framing, importance, rounding
from ldlg.methods.seq2seq.losses import partial_q_sample

T = 50
PAD, END = 0, 1
# Two [source ; separator ; target ; pad] sequences of length 8 (separator id 2).
IDS = np.array([[3, 4, 2, 5, 6, 7, END, PAD], [8, 2, 9, 10, END, PAD, PAD, PAD]], np.int32)
SOURCE = np.array([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]], bool)


def _method():
  net = Seq2SeqDenoiser(vocab_size=12, embed_dim=8, dim=16, num_layers=1, num_heads=2, ff_mult=2, max_len=8,
                        num_timesteps=T)
  return DiffuSeq(net, get_schedule("sqrt", T), pad_id=PAD, end_id=END)


@pytest.fixture(scope="module")
def method_and_params():
  method = _method()
  return method, method.init_params(jax.random.PRNGKey(0))


# Jitted once here: eager calls would compile every small op separately.
probabilities = jax.jit(importance.probabilities)
sample_t = jax.jit(importance.sample_t, static_argnums=2)


def _warm_state(num_t=5, hist=10, seed=0):
  losses = np.random.default_rng(seed).uniform(0.1, 3.0, (num_t, hist)) * np.arange(1, num_t + 1)[:, None]
  state = importance.init_state(num_t, hist)
  return state.replace(history=jnp.asarray(losses, jnp.float32), counts=jnp.full((num_t,), hist, jnp.int32))


def test_importance_weighting_is_unbiased_by_enumeration():
  state = _warm_state()
  p = np.asarray(probabilities(state), np.float64)
  table = np.random.default_rng(1).normal(size=5) ** 2  # any fixed per-t loss
  weights = 1.0 / (5 * p)
  np.testing.assert_allclose(np.sum(p * weights * table), table.mean(), rtol=1e-6)
  # sample_t's weight is 1 / (T p_t) of the t it drew.
  t, w = sample_t(state, jax.random.PRNGKey(0), 64)
  np.testing.assert_allclose(np.asarray(w), weights[np.asarray(t)], rtol=1e-6)


def test_importance_probabilities_follow_loss_rms_once_warm():
  state = _warm_state()
  rms = np.sqrt(np.mean(np.square(np.asarray(state.history, np.float64)), axis=1))
  expected = (1 - importance.UNIFORM_PROB) * rms / rms.sum() + importance.UNIFORM_PROB / 5
  np.testing.assert_allclose(probabilities(state), expected, rtol=1e-5)
  t, _ = sample_t(state, jax.random.PRNGKey(1), 20000)
  freq = np.bincount(np.asarray(t), minlength=5) / 20000
  np.testing.assert_allclose(freq, expected, atol=0.015)
  # One t short of a full history: uniform, weight 1.
  cold = state.replace(counts=state.counts.at[3].set(9))
  np.testing.assert_allclose(probabilities(cold), np.full(5, 0.2))
  assert np.all(np.asarray(sample_t(cold, jax.random.PRNGKey(2), 8)[1]) == 1.0)


def test_importance_update_keeps_the_last_losses_in_order():
  state = importance.init_state(3, history=4)
  # t=1 gets 6 losses (two in one call, with a repeated t), t=0 one, t=2 none.
  state = jax.jit(importance.update)(state, jnp.array([1, 1, 0]), jnp.array([1.0, 2.0, 9.0]))
  state = importance.update(state, jnp.array([1, 1, 1, 1]), jnp.array([3.0, 4.0, 5.0, 6.0]))
  np.testing.assert_array_equal(state.counts, [1, 4, 0])
  np.testing.assert_array_equal(state.history[1], [3.0, 4.0, 5.0, 6.0])
  np.testing.assert_array_equal(state.history[0], [9.0, 0.0, 0.0, 0.0])
  assert not bool(importance.is_warm(state))
  # update_global outside pmap applies the pairs in global example order.
  a = importance.update_global(importance.init_state(3, 4), jnp.array([2, 2]), jnp.array([7.0, 8.0]),
                               jnp.array([5, 4]))
  np.testing.assert_array_equal(a.history[2], [8.0, 7.0, 0.0, 0.0])


def test_partial_noising_leaves_the_source_bit_identical():
  schedule = get_schedule("sqrt", T)
  k0, k1 = jax.random.split(jax.random.PRNGKey(3))
  x0 = jax.random.normal(k0, (2, 8, 8)) * 3.0
  noise = jax.random.normal(k1, (2, 8, 8))
  t = jnp.array([T - 1, 7])
  z = np.asarray(partial_q_sample(schedule, x0, t, noise, jnp.asarray(SOURCE)))
  x0, noise = np.asarray(x0), np.asarray(noise)
  assert np.array_equal(z[SOURCE], x0[SOURCE])  # bit for bit, at every t
  a = np.asarray(schedule.sqrt_alphas_cumprod)[np.asarray(t)][:, None, None]
  s = np.asarray(schedule.sqrt_one_minus_alphas_cumprod)[np.asarray(t)][:, None, None]
  np.testing.assert_allclose(z[~SOURCE], (a * x0 + s * noise)[~SOURCE], rtol=1e-6, atol=1e-6)


def test_rounding_exact_embeddings_returns_the_tokens():
  emb = jax.random.normal(jax.random.PRNGKey(4), (30, 8)) * jnp.linspace(0.2, 3.0, 30)[:, None]
  ids = jax.random.randint(jax.random.PRNGKey(5), (3, 7), 0, 30)
  np.testing.assert_array_equal(rounding.round_to_tokens(emb[ids], emb, "nearest"), ids)
  unit = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)  # equal norms: the logits rule is exact too
  np.testing.assert_array_equal(rounding.round_to_tokens(unit[ids], unit, "logits"), ids)
  tokens = jnp.array([[3, 4, 2, 5, 6, END, 7, 8], [8, 2, PAD, 9, 9, 9, 9, 9]])
  cut, lengths = rounding.truncate_at_stop(tokens, ~jnp.asarray(SOURCE), (END, PAD), PAD)
  np.testing.assert_array_equal(lengths, [2, 0])
  np.testing.assert_array_equal(cut[0], [PAD, PAD, PAD, 5, 6, PAD, PAD, PAD])
  assert rounding.target_token_lists(cut, SOURCE, lengths) == [[5, 6], []]


@pytest.mark.slow
def test_sampler_anchors_the_source_at_every_step_and_shards_like_one_device(method_and_params):
  method, params = method_and_params
  sample = method.make_sampler(num_steps=6, eta=1.0, return_trajectory=True)
  ids = jnp.asarray(np.concatenate([IDS, IDS[::-1]]))
  src = jnp.asarray(np.concatenate([SOURCE, SOURCE[::-1]]))
  out = jax.device_get(sample(params, jax.random.PRNGKey(7), ids, src))
  source_emb = np.asarray(params["word_embedding"])[np.asarray(ids)]
  traj, src_np = out["trajectory"], np.asarray(src)
  assert traj.shape == (6, 4, 8, 8)
  for step in range(6):
    assert np.array_equal(traj[step][src_np], source_emb[src_np]), step
  assert np.array_equal(out["embeddings"][src_np], source_emb[src_np])
  assert np.all(out["tokens"][src_np] == PAD) and np.all(out["lengths"] <= (~src_np).sum(axis=1))
  # A device holding rows 2..3 of a global batch of 4 draws what one device draws for them.
  shard = jax.device_get(sample(params, jax.random.PRNGKey(7), ids[2:], src[2:], example_offset=2,
                                global_batch=4))
  np.testing.assert_allclose(shard["trajectory"], traj[:, 2:], atol=1e-5)


@pytest.mark.slow
def test_pmapped_step_equals_single_device_step(method_and_params):
  assert jax.local_device_count() >= 2, "conftest.py should force 2 host CPU devices"
  method, params = method_and_params
  ids = np.concatenate([IDS, IDS[::-1]])
  batch = {"input_ids": ids, "source_mask": np.concatenate([SOURCE, SOURCE[::-1]]), "mask": ids != PAD}
  rng = jax.random.PRNGKey(42)
  grad_fn = jax.value_and_grad(method.loss_fn, has_aux=True)
  (loss, metrics), grads = jax.jit(grad_fn)(params, rng, dict(batch, example_index=np.arange(4)))

  def device_step(params, local):
    index = jax.lax.axis_index(AXIS) * 2 + jnp.arange(2)
    out = grad_fn(params, rng, dict(local, example_index=index))
    return jax.lax.pmean(out, AXIS)

  sharded = jax.tree.map(lambda x: x.reshape((2, 2) + x.shape[1:]), batch)
  (p_loss, p_metrics), p_grads = jax.device_get(
      jax.pmap(device_step, axis_name=AXIS, in_axes=(None, 0))(params, sharded))
  (loss, metrics), grads = jax.device_get(((loss, metrics), grads))
  np.testing.assert_allclose(p_loss[0], loss, rtol=1e-5)
  for key in ("mse", "nll", "prior", "t_mean", "x0_token_acc"):
    np.testing.assert_allclose(p_metrics[key][0], metrics[key], rtol=1e-5, err_msg=key)
  for dev in range(2):
    jax.tree.map(lambda a, s: np.testing.assert_allclose(a[dev], s, rtol=1e-4, atol=1e-6), p_grads, grads)
  assert float(np.abs(grads["word_embedding"]).max()) > 0  # the embedding is learned jointly


def test_importance_sampling_under_pmap_equals_one_device():
  """sample_t draws per global example, and update_global leaves every device with the one-device state."""
  state = _warm_state(num_t=T, hist=importance.HISTORY)
  key = jax.random.PRNGKey(3)
  index = np.arange(8)
  losses = np.random.default_rng(2).uniform(size=8).astype(np.float32)

  def step(state, index, losses):
    t, w = importance.sample_t(state, key, {"example_index": index})
    return t, w, importance.update_global(state, t, losses, index)

  t, w, new_state = jax.device_get(jax.jit(step)(state, index, losses))
  p_t, p_w, p_state = jax.device_get(jax.pmap(step, axis_name=AXIS, in_axes=(None, 0, 0))(
      state, index.reshape(2, 4), losses.reshape(2, 4)))
  np.testing.assert_array_equal(p_t.reshape(-1), t)
  np.testing.assert_array_equal(p_w.reshape(-1), w)
  for dev in range(2):
    np.testing.assert_array_equal(p_state.history[dev], new_state.history)
    np.testing.assert_array_equal(p_state.counts[dev], new_state.counts)
  assert not np.array_equal(new_state.history, np.asarray(state.history))


def test_registered_and_built_from_config():
  assert METHODS.get("diffuseq") is DiffuSeq
  config = ml_collections.ConfigDict({
      "model": {"vocab_size": 12, "embed_dim": 8, "dim": 16, "num_layers": 1, "num_heads": 2, "max_len": 8},
      "diffusion": {"schedule": "sqrt", "num_timesteps": 40, "pad_id": PAD},
      "sample": {"num_steps": 5}})
  method = DiffuSeq.from_config(config, end_id=END)
  assert method.schedule.num_timesteps == method.network.num_timesteps == 40
  assert method.sample_defaults["num_steps"] == 5 and method.end_id == END
  del config.diffusion.pad_id
  with pytest.raises(ValueError, match="pad token"):
    DiffuSeq.from_config(config)


def test_segment_embedding_tells_each_position_its_side_and_is_off_by_default(method_and_params):
  _, plain_params = method_and_params
  assert "segment_embed" not in plain_params  # DiffuSeq's network, unchanged by default.
  config = ml_collections.ConfigDict({
      "model": {"vocab_size": 12, "embed_dim": 8, "dim": 16, "num_layers": 1, "num_heads": 2, "max_len": 8,
                "segment_embedding": True},
      "diffusion": {"schedule": "sqrt", "num_timesteps": T, "pad_id": PAD}})
  method = DiffuSeq.from_config(config, end_id=END)
  params = method.init_params(jax.random.PRNGKey(0))
  assert params["segment_embed"].shape == (2, 16)
  # Identical inputs, different segments: the output changes, by the segment row added at the input.
  z = jax.random.normal(jax.random.PRNGKey(1), IDS.shape + (8,))
  t, mask = jnp.full((2,), T - 1), jnp.ones(IDS.shape, bool)
  apply = lambda p, source: method.network.apply({"params": p}, z, t, mask, source)
  zeroed = {**params, "segment_embed": jnp.zeros_like(params["segment_embed"])}
  assert not np.allclose(apply(params, SOURCE), apply(params, ~SOURCE))
  np.testing.assert_allclose(apply(zeroed, SOURCE), apply(zeroed, ~SOURCE), atol=1e-6)
  with pytest.raises(ValueError, match="segment_embedding needs source_mask"):
    method.network.apply({"params": params}, z, t, mask)
  # The sampler passes the segments and still keeps the source exactly.
  out = method.make_sampler(num_steps=3)(params, jax.random.PRNGKey(2), IDS, SOURCE)
  np.testing.assert_array_equal(np.asarray(out["embeddings"])[SOURCE],
                                np.asarray(params["word_embedding"])[IDS][SOURCE])


class _CharTokenizer:
  """Each character is a token (ids from 3 up): enough to check the framing without a trained BPE."""

  def __call__(self, texts, add_special_tokens=False):
    return {"input_ids": [[3 + (ord(ch) % 20) for ch in text] for text in texts]}


FRAME_IDS = {"bos": 2, "eos": END, "pad": PAD}


def test_framing_lays_out_source_separator_target_and_padding():
  pairs = framing.frame_pairs(["ab", "", "abcdefgh"], ["xyz", "q", "uvwxyz"], _CharTokenizer(), FRAME_IDS,
                              max_len=10, max_source_len=5)
  # The empty source is dropped; "abcdefgh" is cut to 3 tokens (+ <s> </s> = 5); its target to the 5 left.
  assert pairs.stats == {"num_pairs": 2, "num_dropped": 1, "num_source_cut": 1, "num_target_cut": 1}
  batch = framing.pack(pairs, [0, 1], max_len=10, pad_id=PAD)
  a, x, y, z = (3 + ord(ch) % 20 for ch in "axyz")
  np.testing.assert_array_equal(batch["input_ids"][0], [2, a, a + 1, END, x, y, z, END, PAD, PAD])
  np.testing.assert_array_equal(batch["source_mask"][0], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch["mask"][0], [1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
  assert batch["input_ids"][1, -1] != END and batch["mask"][1].all()  # a cut target loses its </s>
  # Sampling inputs: sources only, the whole target region left to the model.
  sources = framing.frame_pairs(["ab"], None, _CharTokenizer(), FRAME_IDS, max_len=10, max_source_len=5)
  only = framing.pack(sources, [0], max_len=10, pad_id=PAD)
  np.testing.assert_array_equal(only["source_mask"][0], batch["source_mask"][0])
  assert (only["input_ids"][0, 4:] == PAD).all()
  with pytest.raises(ValueError, match="max_source_len"):
    framing.frame_pairs(["ab"], ["c"], _CharTokenizer(), FRAME_IDS, max_len=5, max_source_len=5)
  with pytest.raises(ValueError, match="2 sources but 1 targets"):
    framing.frame_pairs(["ab", "c"], ["c"], _CharTokenizer(), FRAME_IDS, max_len=10, max_source_len=5)


def _importance_job(num_devices):
  """The engine's trainer on DiffuSeq with importance sampling: T = 10 and a history of 2, so the sampler is
  warm within the run and the resumed part draws t from a non-uniform p_t."""
  net = Seq2SeqDenoiser(vocab_size=24, embed_dim=8, dim=16, num_layers=1, num_heads=2, ff_mult=2, max_len=10,
                        num_timesteps=10)  # _CharTokenizer's ids are < 23
  method = DiffuSeq(net, get_schedule("sqrt", 10), pad_id=PAD, end_id=END, importance_history=2)
  pairs = framing.frame_pairs(["ab", "cde", "f", "ghij", "kl", "m"], ["xy", "z", "uvw", "st", "r", "qpo"],
                              _CharTokenizer(), FRAME_IDS, max_len=10, max_source_len=6)
  optim = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.0, b1=0.9,
                                         b2=0.999, eps=1e-8, grad_clip=1.0))
  batches = lambda start: (framing.train_batch(pairs, s, batch_size=4, num_devices=num_devices, max_len=10,
                                               pad_id=PAD, seed=0) for s in itertools.count(start))
  job = trainer.TrainJob(init_params=method.init_params, loss_fn=method.importance_loss_fn,
                         init_method_state=method.init_importance_state, batches=batches, optim=optim,
                         init_rng=jax.random.PRNGKey(0), rng=jax.random.PRNGKey(1), ema_decay=0.9)
  return job


def _train(directory, num_devices=1, **kw):
  run = trainer.TrainRun(directory=directory, num_steps=12, log_every=2, ckpt_every=4, desc="diffuseq",
                         devices=jax.local_devices()[:num_devices], **kw)
  return trainer.train(_importance_job(num_devices), run)


@pytest.mark.slow
def test_trainer_keeps_the_importance_state_and_resumes_exactly(tmp_path):
  straight = _train(tmp_path / "a")
  state = jax.device_get(straight.state.method_state)
  assert bool(importance.is_warm(state)) and int(state.counts.sum()) == 2 * 10  # full history at every t
  # Interrupted at step 5 (a checkpoint), then resumed: bit-identical params, EMA, optimizer and history.
  assert _train(tmp_path / "b", stop_at=5).step == 5
  resumed = _train(tmp_path / "b")
  assert resumed.resumed_from == 5
  for a, b in zip(jax.tree.leaves(jax.device_get(straight.state.to_dict())),
                  jax.tree.leaves(jax.device_get(resumed.state.to_dict()))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.extended  # The step under pmap, importance state included, is checked above in CI.
def test_trainer_with_the_importance_state_on_two_devices_equals_one(tmp_path):
  straight = _train(tmp_path / "a")
  # Two devices: the same run up to float rounding (the losses stored in the history included).
  two = _train(tmp_path / "c", num_devices=2)
  for a, b in zip(jax.tree.leaves(jax.device_get(straight.state.to_dict())),
                  jax.tree.leaves(jax.device_get(two.state.to_dict()))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_source_reliance_diagnostic_is_zero_when_every_source_is_the_same(method_and_params):
  """The diagnostic's other-source row frames each target behind another example's source with the same noise:
  identical sources must give identical scores, and distinct ones read differently (random weights)."""
  from ldlg.benchmarks.seq2seq_diagnostics import denoiser_by_noise
  method, params = method_and_params
  targets = [np.array([5, 6, 7, END], np.int32), np.array([9, 10, END], np.int32), np.array([11, END], np.int32)]
  same = framing.FramedPairs(sources=[np.array([3, 4, 2], np.int32)] * 3, targets=targets, stats={})
  rows = denoiser_by_noise(method, params, same, [0, T - 1], max_len=8, pad_id=PAD)
  assert [r["t"] for r in rows] == [0, T - 1]
  for r in rows:
    assert r["source_reliance"] == 0.0 and r["text_accuracy_other_source"] == r["text_accuracy"]
    assert 0.0 <= r["text_accuracy"] <= 1.0 and 0.0 <= r["pad_accuracy"] <= 1.0 and r["x0_mse"] > 0.0
  # A longer source is moved in front of a long target: the target is cut to fit instead of failing.
  sources = [np.array([3, 2], np.int32), np.array([8, 4, 3, 2], np.int32), np.array([4, 2], np.int32)]
  long_target = np.array([5, 6, 7, 9, 10, END], np.int32)  # Fills max_len behind its own 2-token source.
  distinct = framing.FramedPairs(sources=sources, targets=[long_target] + targets[1:], stats={})
  rows = denoiser_by_noise(method, params, distinct, [T // 2], max_len=8, pad_id=PAD)
  assert rows[0]["source_reliance"] == rows[0]["text_accuracy"] - rows[0]["text_accuracy_other_source"]
  with pytest.raises(ValueError, match="at least 2 pairs"):
    denoiser_by_noise(method, params, framing.FramedPairs([sources[0]], [targets[0]], {}), [0], max_len=8,
                      pad_id=PAD)


@pytest.mark.slow
def test_the_denoiser_reads_the_source_through_attention():
  """Trained on two pairs at pure noise (t = T-1, so the noisy target carries nothing), the network must take each
  target from its source: every text token right with the own source, the other source's target otherwise (only
  the shared </s> agrees). The diagnostic's source reliance is then 2/3."""
  import optax
  from ldlg.benchmarks.seq2seq_diagnostics import denoiser_by_noise
  method = _method()
  params = method.init_params(jax.random.PRNGKey(0))
  pairs = framing.FramedPairs(sources=[np.array([3, 2], np.int32), np.array([4, 2], np.int32)],
                              targets=[np.array([5, 6, END], np.int32), np.array([7, 8, END], np.int32)], stats={})
  batch = {k: jnp.asarray(v) for k, v in framing.pack(pairs, [0, 1], max_len=8, pad_id=PAD).items()}
  batch["t"] = jnp.full((2,), T - 1, jnp.int32)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, rng):
    grads, _ = jax.grad(method.loss_fn, has_aux=True)(params, rng, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for i in range(300):
    params, opt_state = step(params, opt_state, jax.random.PRNGKey(i))
  (row,) = denoiser_by_noise(method, params, pairs, [T - 1], max_len=8, pad_id=PAD)
  assert row["text_accuracy"] == 1.0
  assert row["text_accuracy_other_source"] == pytest.approx(1 / 3) and row["source_reliance"] == pytest.approx(2 / 3)


def test_the_memorise_benchmark_records_its_curve_on_framed_pairs():
  from ldlg.benchmarks.diffuseq_memorise import memorise
  from ldlg.data.testing import make_word_tokenizer
  sources, targets = ["name : Aromi | food : Thai", "name : Zizzi | area : riverside"], ["Aromi is Thai .", "Zizzi ."]
  curve = memorise(sources, targets, make_word_tokenizer(sources + targets), dim=16, num_layers=1, num_heads=2,
                   embed_dim=8, dropout=0.0, lr=1e-2, num_steps=4, eval_every=2, num_timesteps=50, max_len=24,
                   max_source_len=12, freeze_embedding=True, seed=0)
  assert [r["step"] for r in curve] == [0, 2, 4]
  assert all(0.0 <= r["region_accuracy"] <= 1.0 and 0.0 <= r["text_accuracy"] <= 1.0 for r in curve)
  assert curve[-1]["mse"] < curve[0]["mse"]  # It trains.
