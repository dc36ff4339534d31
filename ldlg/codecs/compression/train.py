"""Training the compression network through the frozen BART decoder, on the engine's trainer.

Objective (LD4LG's later version): teacher-forced token cross-entropy of the frozen BART decoder reading the
reconstructed memory `decode(encode(E(w)) + σ ε)`, where `E` is the frozen BART encoder and σ =
`cfg.train_noise_std` in the latents' own units (each coordinate has unit RMS after the l2 normalization to
sqrt(w)): the decoder side learns to read slightly-off latents, which is what a diffusion model hands it. Only
the compression network's parameters are trained; BART's are closed over as constants.

`train_compression(cfg, autoencoder, texts, out_dir)` runs `ldlg.engine.trainer.train` (pmapped, Orbax
checkpoints in out_dir/checkpoints, SIGTERM saves, exact resume: step s's batch is `batch_indices(s)` and each
example's noise is keyed on (step, its global index), so a resumed run continues bit for bit); when it reaches
cfg.num_steps it writes out_dir/compression.msgpack (params) and out_dir/compression_config.json.
`Compressor` loads them and encodes texts to latents / decodes latents to texts with the BART beam search.
"""
import itertools
import json
import pathlib
from typing import Any, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ldlg.codecs.compression.network import CompressionAutoencoder
from ldlg.data.batching import reconstruction_batch
from ldlg.engine import parallel
from ldlg.engine import trainer
from ldlg.methods.base import per_example_keys


def default_compression_config() -> ml_collections.ConfigDict:
  """The `config.compression` section: the paper's 32 × 64 latent, small networks."""
  return ml_collections.ConfigDict(dict(
      num_latents=32, latent_width=64, width=256, num_layers=3, num_heads=4, ff_mult=4, l2_normalize=True,
      norm_scale=0.0,            # 0 = sqrt(latent_width)
      train_noise_std=0.1,       # σ of the Gaussian noise added to the latents in training (unit-RMS units)
      batch_size=64, num_steps=5000, lr=3e-4, warmup_steps=200, weight_decay=0.01, grad_clip=1.0, seed=0,
      pad_multiple=16, log_every=50, checkpoint_every=500, keep_checkpoints=2))


def build_network(cfg: ml_collections.ConfigDict, out_dim: int, max_len: int) -> CompressionAutoencoder:
  """The network of `cfg` for a BART of width out_dim and sequences of up to max_len tokens."""
  return CompressionAutoencoder(out_dim=out_dim, num_latents=cfg.num_latents, latent_width=cfg.latent_width,
                                width=cfg.width, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                                max_len=max_len, ff_mult=cfg.ff_mult, l2_normalize=cfg.l2_normalize,
                                norm_scale=cfg.norm_scale)


def make_loss_fn(network: CompressionAutoencoder, bart_model, bart_params, *, pad_id: int, noise_std: float):
  """Token-mean cross-entropy (global over devices) of the frozen decoder on the reconstructed memory.

  Returns:
    loss_fn(params, rng, batch) -> (loss, {"loss", "token_accuracy", "latent_norm"}).
  """
  def loss_fn(params, rng, batch):
    mask = batch["attention_mask"].astype(bool)
    states = bart_model.encode(batch["input_ids"], mask.astype(jnp.int32), params=bart_params).last_hidden_state
    states = jax.lax.stop_gradient(states.astype(jnp.float32))
    z = network.apply({"params": params}, states, mask, method=CompressionAutoencoder.encode)
    (k_noise,) = per_example_keys(rng, batch["example_index"], 1)
    noise = jax.vmap(lambda k: jax.random.normal(k, z.shape[1:], jnp.float32))(k_noise)
    memory = network.apply({"params": params}, z + noise_std * noise, method=CompressionAutoencoder.decode)
    logits = bart_model.decode(batch["decoder_input_ids"], (memory,),
                               encoder_attention_mask=jnp.ones(memory.shape[:2], jnp.int32),
                               params=bart_params).logits.astype(jnp.float32)
    weights = (batch["labels"] != pad_id).astype(jnp.float32)
    loss = parallel.global_token_mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]),
                                      weights)
    accuracy = parallel.global_token_mean(logits.argmax(-1) == batch["labels"], weights)
    latent_norm = jnp.mean(jnp.linalg.norm(z, axis=-1))
    return loss, {"loss": loss, "token_accuracy": accuracy, "latent_norm": latent_norm}
  return loss_fn


def train_compression(cfg: ml_collections.ConfigDict, autoencoder, texts: Sequence[str],
                      out_dir: str | pathlib.Path, *, stop_after_step: int | None = None,
                      devices=None) -> dict[str, Any]:
  """Trains the compression network on `texts` through the frozen `autoencoder` (ldlg.codecs.bart.autoencoder).

  Args:
    cfg: the `config.compression` section (`default_compression_config`).
    autoencoder: the frozen BART `Autoencoder` (its encoder makes the inputs, its decoder scores the outputs).
    texts: training sentences.
    out_dir: checkpoints/, metrics.jsonl; compression.msgpack and compression_config.json when done.
    stop_after_step: stop (checkpointed) after this step, as a preemption would (tests).
    devices: devices to pmap over (default all local).

  Returns:
    {"step", "resumed_from", "stopped_by", "final_loss", "params" (host arrays), "out_dir"}.
  """
  out_dir = pathlib.Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  devices = list(devices or jax.local_devices())
  if cfg.batch_size % len(devices):
    raise ValueError(f"compression.batch_size={cfg.batch_size} is not divisible by the {len(devices)} devices")
  ids, _ = autoencoder.tokenize(list(texts))
  token_ids = [np.asarray(x, np.int32) for x in ids]
  if not token_ids:
    raise ValueError("texts is empty: the compression network needs training sentences")
  tok = autoencoder.tokenizer
  opts = autoencoder.decode_options()
  network = build_network(cfg, autoencoder.latent_dim, autoencoder.max_length)

  def init_params(rng):
    x = jnp.zeros((1, autoencoder.max_length, autoencoder.latent_dim), jnp.float32)
    return network.init(rng, x, jnp.ones(x.shape[:2], bool))["params"]

  def batches(start_step: int):
    for step in itertools.count(start_step):
      yield parallel.shard_batch(reconstruction_batch(
          token_ids, step, batch_size=cfg.batch_size, seed=cfg.seed, pad_multiple=cfg.pad_multiple,
          max_length=autoencoder.max_length, pad_id=tok.pad_token_id, start_id=opts.decoder_start_token_id),
          len(devices))

  optim = ml_collections.ConfigDict(dict(
      lr=cfg.lr, warmup_steps=min(cfg.warmup_steps, max(cfg.num_steps - 1, 0)), schedule="cosine",
      weight_decay=cfg.weight_decay, b1=0.9, b2=0.999, eps=1e-8, grad_clip=cfg.grad_clip, decay_mask="matrices"))
  init_rng, rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
  job = trainer.TrainJob(init_params=jax.jit(init_params),
                         loss_fn=make_loss_fn(network, autoencoder.model, autoencoder.params,
                                              pad_id=tok.pad_token_id, noise_std=float(cfg.train_noise_std)),
                         batches=batches, optim=optim, init_rng=init_rng, rng=rng, ema_decay=None)
  meta = {"compression_config": cfg.to_dict(), "autoencoder": autoencoder.name}

  def check_meta(saved: dict) -> None:
    if saved.get("compression_config") != meta["compression_config"]:
      raise ValueError(f"the checkpoints in {out_dir} were trained with another compression config; use a new "
                       "out_dir")

  run = trainer.TrainRun(directory=out_dir, num_steps=cfg.num_steps, log_every=cfg.log_every,
                         ckpt_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints, meta=meta,
                         check_meta=check_meta, desc="compression", stop_at=stop_after_step, devices=devices)
  result = trainer.train(job, run)
  params = jax.device_get(result.state.params)
  if result.step >= cfg.num_steps:
    (out_dir / "compression.msgpack").write_bytes(flax.serialization.to_bytes(params))
    (out_dir / "compression_config.json").write_text(json.dumps(
        {"compression": cfg.to_dict(), "out_dim": autoencoder.latent_dim, "max_len": autoencoder.max_length,
         "autoencoder": autoencoder.name}, indent=2))
  return dict(step=result.step, resumed_from=result.resumed_from, stopped_by=result.stopped_by,
              final_loss=result.final_loss, params=params, out_dir=str(out_dir))


class Compressor:
  """A trained compression network with its frozen BART: texts <-> latents [B, N, w].

  Attributes:
    network: the `CompressionAutoencoder`.
    params: its parameters.
    autoencoder: the frozen BART `Autoencoder`.
  """

  def __init__(self, network: CompressionAutoencoder, params, autoencoder):
    self.network, self.params, self.autoencoder = network, params, autoencoder
    self._encode = jax.jit(lambda p, x, m: network.apply({"params": p}, x, m, method=CompressionAutoencoder.encode))
    self._decode = jax.jit(lambda p, z: network.apply({"params": p}, z, method=CompressionAutoencoder.decode))

  @classmethod
  def load(cls, out_dir: str | pathlib.Path, autoencoder) -> "Compressor":
    """From the files `train_compression` writes (the autoencoder must be the one it was trained with)."""
    out_dir = pathlib.Path(out_dir)
    saved = json.loads((out_dir / "compression_config.json").read_text())
    cfg = ml_collections.ConfigDict(saved["compression"])
    network = build_network(cfg, saved["out_dim"], saved["max_len"])
    x = jnp.zeros((1, saved["max_len"], saved["out_dim"]), jnp.float32)
    target = jax.eval_shape(lambda: network.init(jax.random.PRNGKey(0), x, jnp.ones(x.shape[:2], bool))["params"])
    params = flax.serialization.from_bytes(target, (out_dir / "compression.msgpack").read_bytes())
    return cls(network, params, autoencoder)

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """texts -> latents [B, N, w] float32."""
    states, mask = self.autoencoder.encode(list(texts))
    return np.asarray(self._encode(self.params, states, mask))

  def decode(self, latents: np.ndarray, **decode_kwargs) -> list[str]:
    """latents [B, N, w] -> texts, by the BART beam search over the reconstructed memory."""
    memory = np.asarray(self._decode(self.params, jnp.asarray(latents, jnp.float32)))
    return self.autoencoder.decode(memory, np.ones(memory.shape[:2], bool), **decode_kwargs)
