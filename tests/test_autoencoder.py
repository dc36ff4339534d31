"""Tests of the Autoencoder (encode buckets, masks, traces, truncation, decode batching, loading), of
BART noising, and (slow) of denoising-autoencoder pretraining: reconstruction, save/load, resume."""
import json

import jax
import numpy as np
import pytest
import transformers

from ldlg.codecs.bart import autoencoder as autoencoder_lib
from ldlg.codecs.bart import corruption
from ldlg.codecs.bart import pretrain
from ldlg.codecs.bart import tokenizer as tokenizer_lib

MAX_LENGTH = 48


@pytest.fixture(scope="module")
def sentences(e2e_valid_sentences):
  return e2e_valid_sentences


@pytest.fixture(scope="module")
def tok(sentences, tmp_path_factory):
  return tokenizer_lib.train_tokenizer(sentences, 1000, tmp_path_factory.mktemp("tok"))


def _tiny_config(vocab_size: int) -> transformers.BartConfig:
  return transformers.BartConfig(
      vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
      forced_eos_token_id=2)


@pytest.fixture(scope="module")
def ae(tok):
  return autoencoder_lib.Autoencoder.from_config(_tiny_config(len(tok)), tok, max_length=MAX_LENGTH)


# ------------------------------------------------------------------------------ encode

def test_encode_shapes_buckets_and_mask(ae, sentences):
  texts = ["Near the river .", sentences[0], max(sentences[:200], key=len)]
  latents, mask, stats = ae.encode(texts, return_stats=True)
  lengths = stats["lengths"]
  assert ae.buckets == (8, 16, 24, 32, 40, 48)
  assert latents.shape == (3, ae.bucket(lengths.max()), ae.latent_dim)
  assert latents.dtype == np.float32 and mask.dtype == np.bool_
  np.testing.assert_array_equal(mask.sum(1), lengths)
  np.testing.assert_array_equal(mask, np.arange(mask.shape[1])[None] < lengths[:, None])
  assert np.all(latents[~mask] == 0) and np.all(np.abs(latents[mask]).sum(-1) > 0)
  # A batch of short texts pays only for its own bucket.
  short, short_mask = ae.encode(["Near the river .", "Cheap food ."])
  assert short.shape[1] == 8 and short_mask.sum() == sum(len(x) for x in ae.tokenize(
      ["Near the river .", "Cheap food ."])[0])


def test_padding_does_not_change_latents(ae, sentences):
  short = "The Eagle is a pub ."
  alone, alone_mask = ae.encode([short])
  together, together_mask = ae.encode([short, max(sentences[:200], key=len)])
  n = int(alone_mask.sum())
  assert together.shape[1] > alone.shape[1]
  np.testing.assert_array_equal(together_mask[0, :n], True)
  np.testing.assert_allclose(together[0, :n], alone[0, :n], atol=1e-5)


def test_one_trace_per_bucket(tok):
  fresh = autoencoder_lib.Autoencoder.from_config(_tiny_config(len(tok)), tok, max_length=MAX_LENGTH)
  a = ["The Eagle is a pub .", "Cheap food near the river .", "A coffee shop .", "Aromi is rated 5 ."]
  b = ["Zizzi is a pub .", "Cotto is cheap .", "The Mill serves food .", "Browns is nice ."]
  long = [t + " It is family friendly and near the city centre ." for t in a]
  buckets = {tuple(x): fresh.bucket(max(len(i) for i in fresh.tokenize(x)[0])) for x in (a, b, long)}
  assert buckets[tuple(a)] == buckets[tuple(b)] != buckets[tuple(long)]
  for batch in (a, b, a, long, b, long):
    fresh.encode(batch)
  assert fresh.trace_counts["encode"] == 2  # one trace per bucket (same row count)


def test_truncation_is_counted(ae, sentences):
  long = " ".join(sentences[:6])
  before = ae.encode_stats["num_truncated"]
  latents, mask, stats = ae.encode([long, sentences[1]], return_stats=True)
  assert stats["num_truncated"] == 1
  assert ae.encode_stats["num_truncated"] == before + 1
  assert latents.shape[1] == MAX_LENGTH and mask[0].sum() == MAX_LENGTH
  ids, _ = ae.tokenize([long])
  assert len(ids[0]) == MAX_LENGTH and ids[0][-1] == ae.tokenizer.eos_token_id


def test_empty_string_encodes_to_bos_eos(ae):
  latents, mask, stats = ae.encode(["", "A pub ."], return_stats=True)
  assert mask[0].sum() == 2 and stats["num_empty"] == 1
  assert ae.tokenize([""])[0][0] == [ae.tokenizer.bos_token_id, ae.tokenizer.eos_token_id]


def test_encode_empty_list(ae):
  latents, mask = ae.encode([])
  assert latents.shape == (0, ae.buckets[0], ae.latent_dim) and mask.shape == (0, ae.buckets[0])


def test_encode_rejects_bad_input(ae):
  with pytest.raises(ValueError, match="wrap it in a list"):
    ae.encode("A pub .")
  with pytest.raises(ValueError, match=r"texts\[1\] is NoneType"):
    ae.encode(["A pub .", None])
  with pytest.raises(ValueError, match="both be"):
    ae.encode_ids(np.zeros((2, 5)), np.zeros((2, 6)))


# ------------------------------------------------------------------------------ decode

def test_decode_chunking_padding_and_traces(ae, sentences):
  latents, mask = ae.encode(sentences[:3])
  before = ae.trace_counts["decode"]
  opts = dict(num_beams=2, max_length=20)
  whole, whole_scores = ae.decode_ids(latents, mask, batch_size=4, **opts)  # 3 rows -> padded to 4
  again, _ = ae.decode_ids(latents, mask, batch_size=4, **opts)
  assert ae.trace_counts["decode"] == before + 1  # same (rows, L, options): compiled once
  chunked, chunked_scores = ae.decode_ids(latents, mask, batch_size=2, **opts)  # chunks of 2 and 1->2
  np.testing.assert_array_equal(whole, again)
  np.testing.assert_array_equal(whole, chunked)
  np.testing.assert_allclose(whole_scores, chunked_scores, rtol=1e-5)
  assert whole.shape == (3, 20) and np.all(whole[:, 0] == 2)
  texts = ae.decode(latents, mask, **opts)
  assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
  assert texts == [t.strip() for t in ae.tokenizer.batch_decode(
      whole.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)]


def test_decode_rejects_bad_input(ae):
  latents = np.zeros((2, 8, ae.latent_dim), np.float32)
  with pytest.raises(ValueError, match="latents must be"):
    ae.decode(np.zeros((2, 8, 7), np.float32), np.ones((2, 8), bool))
  with pytest.raises(ValueError, match="mask must be"):
    ae.decode(latents, np.ones((2, 9), bool))
  mask = np.ones((2, 8), bool)
  mask[1] = False
  with pytest.raises(ValueError, match=r"mask rows \[1\] have no valid position"):
    ae.decode(latents, mask)


# ------------------------------------------------------------------------------ loading

def test_save_load_round_trip(ae, sentences, tmp_path):
  ae.model.save_pretrained(str(tmp_path), params=ae.params)
  ae.tokenizer.save_pretrained(str(tmp_path))
  loaded = autoencoder_lib.Autoencoder.from_pretrained(tmp_path, max_length=MAX_LENGTH)
  assert loaded.latent_dim == ae.latent_dim and loaded.max_length == MAX_LENGTH
  assert loaded.name == str(tmp_path)
  a, a_mask = ae.encode(sentences[:5])
  b, b_mask = loaded.encode(sentences[:5])
  np.testing.assert_array_equal(a_mask, b_mask)
  np.testing.assert_array_equal(a, b)
  opts = dict(num_beams=2, max_length=16)
  assert loaded.decode(a, a_mask, **opts) == ae.decode(a, a_mask, **opts)


def _save_as_pytorch_safetensors(ae, folder):
  """Writes ae's weights the way PyTorch's save_pretrained names them (dotted keys, Linear weights
  transposed, LayerNorm/Embedding `weight`), with config and tokenizer: a folder from the official code."""
  from flax.traverse_util import flatten_dict
  from safetensors.numpy import save_file
  state = {}
  for path, value in flatten_dict(jax.device_get(ae.params)).items():
    path, value = list(path), np.asarray(value)
    if path[-1] == "kernel":
      path[-1], value = "weight", value.T
    elif path[-1] in ("scale", "embedding"):
      path[-1] = "weight"
    state[".".join(path)] = np.ascontiguousarray(value)
  folder.mkdir(parents=True, exist_ok=True)
  save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
  ae.model.config.save_pretrained(str(folder))
  ae.tokenizer.save_pretrained(str(folder))


def test_loads_a_bart_saved_by_pytorch(ae, sentences, tmp_path):
  """A local BART folder with PyTorch safetensors weights (no flax_model.msgpack) loads without torch and
  encodes and decodes exactly as the original."""
  _save_as_pytorch_safetensors(ae, tmp_path / "pt")
  assert not (tmp_path / "pt" / "flax_model.msgpack").exists()
  loaded = autoencoder_lib.Autoencoder.from_pretrained(tmp_path / "pt", max_length=MAX_LENGTH)
  a, a_mask = ae.encode(sentences[:5])
  b, b_mask = loaded.encode(sentences[:5])
  np.testing.assert_array_equal(a_mask, b_mask)
  np.testing.assert_allclose(a, b, atol=1e-6)
  opts = dict(num_beams=2, max_length=16)
  assert loaded.decode(a, a_mask, **opts) == ae.decode(a, a_mask, **opts)


def test_broken_local_folder_is_not_blamed_on_the_network(ae, tmp_path):
  ae.tokenizer.save_pretrained(str(tmp_path))
  ae.model.config.save_pretrained(str(tmp_path))  # No weights at all.
  with pytest.raises(OSError, match="from the folder.*weights") as e:
    autoencoder_lib.Autoencoder.from_pretrained(tmp_path)
  assert "offline" not in str(e.value).lower()


def test_missing_local_directory_says_what_to_do(tmp_path):
  with pytest.raises(OSError, match="does not exist.*pretrain"):
    autoencoder_lib.Autoencoder.from_pretrained(tmp_path / "no_such_model")


def test_offline_hub_failure_says_what_to_do():
  try:
    autoencoder_lib.Autoencoder.from_pretrained("facebook/bart-base")
  except OSError as e:
    assert "local directory" in str(e) and "pretrain_autoencoder" in str(e)
  else:
    pytest.skip("facebook/bart-base is available here (online or cached)")


# ------------------------------------------------------------------------------ noising

def _sentence(n=100):
  return np.array([0] + list(range(10, 10 + n)) + [2])


def _is_subsequence(sub, seq) -> bool:
  it = iter(seq)
  return all(any(x == y for y in it) for x in sub)


def test_span_infilling_properties():
  ids = _sentence()
  covered, masks = [], []
  for seed in range(200):
    out = corruption.bart_noise(ids, np.random.default_rng(seed), mask_id=4, vocab_size=200,
                                mask_ratio=0.3, poisson_lambda=3.0, random_ratio=0.0)
    assert out[0] == 0 and out[-1] == 2
    kept = out[1:-1][out[1:-1] != 4]
    assert _is_subsequence(kept.tolist(), ids[1:-1].tolist())  # order kept, only deletions
    covered.append(100 - kept.size)
    masks.append(int((out == 4).sum()))
  # Overlapping spans merge, so coverage is at most 30% and on average a bit below it.
  assert max(covered) <= 30 and 22 <= np.mean(covered) <= 30
  # One mask per span: mean span length ~ λ = 3 (0-length spans add masks, merges lengthen spans).
  assert 2.0 <= np.sum(covered) / np.sum(masks) <= 4.5


def test_token_masking_and_random_replacement():
  ids = _sentence()
  out = corruption.bart_noise(ids, np.random.default_rng(0), mask_id=4, vocab_size=200,
                              mask_ratio=0.0, token_mask_ratio=0.5)
  assert out.size == ids.size  # one-for-one
  changed = out != ids
  assert np.all(out[changed] == 4) and 35 <= changed.sum() <= 65
  out = corruption.bart_noise(ids, np.random.default_rng(0), mask_id=4, vocab_size=200,
                              mask_ratio=0.3, random_ratio=1.0)
  assert 4 not in out  # every span mask became a random regular token
  a = corruption.bart_noise(ids, np.random.default_rng(7), mask_id=4, vocab_size=200)
  b = corruption.bart_noise(ids, np.random.default_rng(7), mask_id=4, vocab_size=200)
  np.testing.assert_array_equal(a, b)


def test_noise_batch_clean_fraction():
  batch = [_sentence() for _ in range(50)]
  kwargs = dict(max_length=200, mask_id=4, vocab_size=200)
  clean = corruption.noise_batch(batch, np.random.default_rng(0), clean_fraction=1.0, **kwargs)
  assert all(np.array_equal(a, b) for a, b in zip(clean, batch))
  noisy = corruption.noise_batch(batch, np.random.default_rng(0), clean_fraction=0.0, **kwargs)
  assert not any(np.array_equal(a, b) for a, b in zip(noisy, batch))
  half = corruption.noise_batch(batch, np.random.default_rng(0), clean_fraction=0.5, **kwargs)
  assert 10 <= sum(np.array_equal(a, b) for a, b in zip(half, batch)) <= 40
  cut = corruption.noise_batch(batch, np.random.default_rng(0), clean_fraction=1.0, max_length=20,
                               mask_id=4, vocab_size=200)
  assert all(x.size == 20 and x[-1] == 2 for x in cut)


def test_batches_depend_on_step_only(tok, sentences):
  cfg = pretrain.default_autoencoder_config()
  ids = [np.asarray(x) for x in tok(sentences[:100])["input_ids"]]
  a, b = pretrain.make_batch(ids, 5, cfg, tok), pretrain.make_batch(ids, 5, cfg, tok)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["labels"], pretrain.make_batch(ids, 6, cfg, tok)["labels"])
  # Decoder inputs are the labels shifted right behind the </s> start token.
  np.testing.assert_array_equal(a["decoder_input_ids"][:, 1:], a["labels"][:, :-1])
  assert np.all(a["decoder_input_ids"][:, 0] == 2) and a["labels"].shape[1] % cfg.pad_multiple == 0
  # Every example is seen once per epoch.
  per_epoch = -(-100 // cfg.batch_size)
  seen = np.concatenate([pretrain.batch_indices(s, 100, cfg.batch_size, 0) for s in range(per_epoch)])
  assert set(seen[:100].tolist()) == set(range(100))


def test_length_grouped_batches_are_narrower_and_depend_on_step_only(tok, sentences):
  cfg = pretrain.default_autoencoder_config()
  cfg.update(dict(batch_size=8, pad_multiple=1, clean_fraction=1.0))  # clean: inputs = labels, widths exact
  ids = [np.asarray(x) for x in tok(sentences[:200])["input_ids"]]
  assert pretrain.batch_order(ids, cfg) is None  # off by default: random batches
  cfg.group_by_length = 5
  order = pretrain.batch_order(ids, cfg)
  a = pretrain.make_batch(ids, 7, cfg, tok, order)
  b = pretrain.make_batch(ids, 7, cfg, tok, pretrain.batch_order(ids, cfg))
  assert all(np.array_equal(a[k], b[k]) for k in a)
  steps = range(200 // 8)
  width = lambda o: sum(pretrain.make_batch(ids, s, cfg, tok, o)["labels"].shape[1] for s in steps)
  assert width(order) < width(None)


# ------------------------------------------------------------------------------ pretraining (slow)

@pytest.mark.extended
@pytest.mark.slow
def test_pretrain_reconstructs_and_reloads(sentences, tmp_path):
  cfg = pretrain.default_autoencoder_config()
  cfg.update(dict(vocab_size=1000, d_model=64, ffn_dim=256, batch_size=32, num_steps=600,
                  learning_rate=3e-3, checkpoint_every=300, eval_num_sentences=128))
  train, held_out = sentences[:-200], sentences[-200:]
  result = pretrain.pretrain_autoencoder(cfg, train, held_out, tmp_path)
  scores = json.loads((tmp_path / "reconstruction.json").read_text())
  beam = f"beam{cfg.eval_num_beams}_paper"
  print("reconstruction:", {s: {k: {m: v for m, v in d.items() if m != "examples"}
                                for k, d in scores[s].items()} for s in scores})
  # Measured at 600 steps: ~0.46 exact / BLEU ~81 on training sentences, BLEU ~60 held out.
  assert scores["train"][beam]["exact_match"] >= 0.15
  assert scores["train"][beam]["bleu"] >= 50 and scores["valid"][beam]["bleu"] >= 30
  assert result["final_loss"] < 1.5
  log = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == list(range(50, 601, 50)) and log[-1]["loss"] < log[0]["loss"]
  # Saved in HF format: it loads like a hub model and behaves identically.
  loaded = autoencoder_lib.Autoencoder.from_pretrained(tmp_path, max_length=cfg.max_length)
  texts = train[:cfg.eval_num_sentences]
  again = loaded.reconstruct(texts, num_beams=cfg.eval_num_beams, max_length=cfg.max_length + 1)
  assert again[:5] == [e["reconstruction"] for e in scores["train"][beam]["examples"]]
  exact = np.mean([a == t for a, t in zip(again, texts)])
  assert exact == pytest.approx(scores["train"][beam]["exact_match"])


@pytest.mark.extended
@pytest.mark.slow
def test_pretrain_resume_equals_uninterrupted(sentences, tmp_path):
  cfg = pretrain.default_autoencoder_config()
  cfg.update(dict(vocab_size=400, d_model=32, ffn_dim=64, attention_heads=2, encoder_layers=1,
                  decoder_layers=1, batch_size=8, num_steps=6, max_length=32, log_every=1,
                  checkpoint_every=2, eval_num_sentences=0))
  texts = sentences[:200]
  pretrain.pretrain_autoencoder(cfg, texts, [], tmp_path / "a")
  first = pretrain.pretrain_autoencoder(cfg, texts, [], tmp_path / "b", stop_after_step=3)
  assert first["stopped_early"] and first["step"] == 3
  assert not (tmp_path / "b" / "flax_model.msgpack").exists()
  with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # a line written after the checkpoint
    f.write(json.dumps(dict(step=4, loss=0.0)) + "\n")
  second = pretrain.pretrain_autoencoder(cfg, texts, [], tmp_path / "b")
  assert second["resumed_from"] == 3 and second["step"] == 6
  _, params_a = transformers.FlaxBartForConditionalGeneration.from_pretrained(
      str(tmp_path / "a"), _do_init=False)
  _, params_b = transformers.FlaxBartForConditionalGeneration.from_pretrained(
      str(tmp_path / "b"), _do_init=False)
  for x, y in zip(jax.tree_util.tree_leaves(params_a), jax.tree_util.tree_leaves(params_b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  log_a = (tmp_path / "a" / "metrics.jsonl").read_text()
  log_b = (tmp_path / "b" / "metrics.jsonl").read_text()
  assert log_a == log_b  # same losses at every step; the stale step-4 line was dropped
