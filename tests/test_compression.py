"""The learned compression network (ldlg/codecs/compression): latent shape, l2 norm and scale, padding, and
training through a frozen BART on the engine's trainer (stop-and-resume equals uninterrupted; the exported
network loads and round-trips texts).

The BART here is a randomly initialised tiny one (width 16) with a tokenizer trained on a synthetic corpus:
the test checks the training plumbing and its exactness, not reconstruction quality (a random frozen decoder
cannot be steered in a few steps, and a BART that reconstructs takes minutes to pretrain on 2 cores).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlg.codecs.compression import train as compression_train
from ldlg.codecs.compression.network import CompressionAutoencoder, l2_normalize


def _net(**kw):
  return CompressionAutoencoder(**{**dict(out_dim=24, num_latents=4, latent_width=8, width=16, num_layers=1,
                                          num_heads=2, max_len=12, ff_mult=2), **kw})


def _states(seed=0, lengths=(12, 5, 1)):
  x = jax.random.normal(jax.random.key(seed), (len(lengths), 12, 24))
  return x, jnp.arange(12)[None] < jnp.asarray(lengths)[:, None]


def test_shapes_norm_and_scale():
  x, mask = _states()
  net = _net()
  params = jax.jit(net.init)(jax.random.key(1), x, mask)["params"]
  z = net.apply({"params": params}, x, mask, method=CompressionAutoencoder.encode)
  assert z.shape == (3, 4, 8) and z.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(z, axis=-1), np.sqrt(8), rtol=1e-5)  # every latent: norm sqrt(w)
  assert np.sqrt(np.mean(np.square(z))) == pytest.approx(1.0, rel=1e-5)          # unit RMS per coordinate
  memory = net.apply({"params": params}, z, method=CompressionAutoencoder.decode)
  assert memory.shape == (3, 4, 24)
  z3 = _net(norm_scale=3.0).apply({"params": params}, x, mask, method=CompressionAutoencoder.encode)
  np.testing.assert_allclose(np.linalg.norm(z3, axis=-1), 3.0, rtol=1e-5)
  raw = _net(l2_normalize=False).apply({"params": params}, x, mask, method=CompressionAutoencoder.encode)
  np.testing.assert_allclose(z, l2_normalize(raw, np.sqrt(8)), rtol=1e-5)


def test_padded_states_do_not_reach_the_latents():
  x, mask = _states()
  net = _net()
  params = jax.jit(net.init)(jax.random.key(1), x, mask)["params"]
  junk = jnp.where(mask[..., None], x, 1e4)
  encode = jax.jit(lambda p, a, m: net.apply({"params": p}, a, m, method=CompressionAutoencoder.encode))
  np.testing.assert_allclose(encode(params, junk, mask), encode(params, x, mask), atol=1e-5)
  # A short example padded to 12 encodes as itself at its own length.
  np.testing.assert_allclose(encode(params, x[1:2, :5], mask[1:2, :5]), encode(params, x, mask)[1:2], atol=1e-5)


def _cfg(num_steps):
  cfg = compression_train.default_compression_config()
  cfg.update(num_latents=4, latent_width=8, width=16, num_layers=1, num_heads=2, ff_mult=2, batch_size=16,
             num_steps=num_steps, lr=3e-3, warmup_steps=2, log_every=1, checkpoint_every=100, train_noise_std=0.1)
  return cfg


@pytest.mark.extended
@pytest.mark.slow
def test_training_through_frozen_bart_resumes_exactly(tiny_bart, tmp_path):
  ae, texts = tiny_bart
  devices = jax.local_devices()[:1]
  straight = compression_train.train_compression(_cfg(12), ae, texts, tmp_path / "straight", devices=devices)
  first = compression_train.train_compression(_cfg(12), ae, texts, tmp_path / "resumed", stop_after_step=6,
                                              devices=devices)
  assert first["stopped_by"] == "stop_at" and first["step"] == 6
  assert not (tmp_path / "resumed" / "compression.msgpack").exists()  # only a finished run is exported
  resumed = compression_train.train_compression(_cfg(12), ae, texts, tmp_path / "resumed", devices=devices)
  assert resumed["resumed_from"] == 6 and resumed["step"] == 12
  jax.tree.map(np.testing.assert_array_equal, resumed["params"], straight["params"])
  log = [json.loads(l) for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
  assert len(log) == 12 and all(np.isfinite(r["loss"]) for r in log)
  assert all(abs(r["latent_norm"] - np.sqrt(8)) < 1e-4 for r in log if "latent_norm" in r)
  # The exported network loads and round-trips texts -> [B, 4, 8] latents of norm sqrt(8) -> texts.
  comp = compression_train.Compressor.load(tmp_path / "straight", ae)
  jax.tree.map(np.testing.assert_array_equal, comp.params, straight["params"])
  z = comp.encode(texts[:3])
  assert z.shape == (3, 4, 8)
  np.testing.assert_allclose(np.linalg.norm(z, axis=-1), np.sqrt(8), rtol=1e-5)
  out = comp.decode(z, num_beams=1, max_length=8, no_repeat_ngram_size=0, repetition_penalty=1.0)
  assert len(out) == 3 and all(isinstance(s, str) for s in out)
