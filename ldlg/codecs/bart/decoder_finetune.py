"""Fine-tuning the BART decoder on noised latents, with the encoder frozen: a decoder that reads off-manifold latents.

Why: a sampled latent is not the encoding of any sentence. `python -m ldlg.benchmarks.diagnostics
--parts=sample_reencoding` decodes samples, encodes the decodings again and measures the distance: on SST the
`:cpu` models' samples lie 0.26 (x0-prediction) to 0.72 (v-prediction) from their re-encodings (squared error per
channel, normalized units), where a validation latent lies 0.002 from its own. To the decoder a sample looks like a
real latent with noise of std 0.5 to 0.85 added, where it decodes 63 % to under 10 % of sentences exactly. The later
LD4LG version trains its decoding side with noise on the latents for this reason (its compression network,
`ldlg.codecs.compression`); this module does the same for the plain BART latents.

Objective: teacher-forced token cross-entropy of the decoder reading E(w) + σ s ε at the sentence's positions,
E the frozen encoder, σ ~ U(0, `noise_std`) per example (clean latents stay in the training distribution) and s
the latents' scalar std (`noise_std` is in the normalized units the denoiser works in). Trained:
`params["model"]["decoder"]` and `params["final_logits_bias"]`. Frozen, closed over as constants: the encoder
and the shared token embeddings (the encoder's input and the tied LM head). The latents, and every denoiser trained
on them, therefore stay valid; only decoding changes.

`finetune_decoder(cfg, autoencoder, texts, latent_std, out_dir)` runs the engine's trainer: pmapped, Orbax
checkpoints in out_dir/checkpoints, SIGTERM saves, exact resume. Step s's batch is `reconstruction_batch(s)`, and each
example's σ and ε are keyed on its global index. When the run reaches `cfg.num_steps`, the whole BART (encoder
unchanged) and its tokenizer are written to out_dir with `save_pretrained`, so `Autoencoder.from_pretrained`
loads it as it loads any BART. Then `decoder_finetune.json` is written, which marks the run done: the config, and
the reconstruction of held-out sentences by the old and new decoders at latent noise 0 and `noise_std` / 2.
"""
import itertools
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ldlg.codecs.bart import reconstruction
from ldlg.data.batching import reconstruction_batch
from ldlg.engine import parallel
from ldlg.engine import trainer
from ldlg.methods.base import per_example_keys

DONE_FILE = "decoder_finetune.json"


def default_config() -> ml_collections.ConfigDict:
  """The `config.decoder_finetune` section; noise_std = 0 leaves the decoder as pretrained (the stage is skipped)."""
  return ml_collections.ConfigDict(dict(
      noise_std=0.0,       # σ_max of the latent noise, normalized units; 0 = off
      num_steps=1000, batch_size=64, lr=3e-4, warmup_steps=100, weight_decay=0.01, grad_clip=1.0, seed=0,
      pad_multiple=16, log_every=50, checkpoint_every=250, keep_checkpoints=2, eval_num_sentences=256))


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether a run decodes with a fine-tuned decoder (`config.decoder_finetune.noise_std` > 0)."""
  section = config.get("decoder_finetune")
  return section is not None and float(section.noise_std) > 0


def split_params(params: dict) -> tuple[dict, dict]:
  """A FlaxBart parameter tree -> (trainable: decoder and final_logits_bias, frozen: the rest)."""
  trainable = {"decoder": params["model"]["decoder"], "final_logits_bias": params["final_logits_bias"]}
  frozen = {"model": {k: v for k, v in params["model"].items() if k != "decoder"},
            **{k: v for k, v in params.items() if k not in ("model", "final_logits_bias")}}
  return trainable, frozen


def merge_params(trainable: dict, frozen: dict) -> dict:
  """The inverse of `split_params`."""
  return {**{k: v for k, v in frozen.items() if k != "model"}, "final_logits_bias": trainable["final_logits_bias"],
          "model": {**frozen["model"], "decoder": trainable["decoder"]}}


def make_loss_fn(model, frozen: dict, *, pad_id: int, noise_std: float, latent_std: float, num_devices: int):
  """Token-mean cross-entropy (global over devices) of the decoder on noised encoder latents.

  Returns:
    loss_fn(trainable, rng, batch) -> (loss, {"loss", "token_accuracy", "noise_std_mean"}).
  """
  def loss_fn(trainable, rng, batch):
    params = merge_params(trainable, frozen)
    att = batch["attention_mask"].astype(jnp.int32)
    states = model.encode(batch["input_ids"], att, params=params).last_hidden_state
    states = jax.lax.stop_gradient(states.astype(jnp.float32))
    k_sigma, k_eps = per_example_keys(rng, batch["example_index"], 2)
    sigma = noise_std * jax.vmap(lambda k: jax.random.uniform(k, ()))(k_sigma)  # [B]
    eps = jax.vmap(lambda k: jax.random.normal(k, states.shape[1:], jnp.float32))(k_eps)
    memory = jnp.where(att[..., None] > 0, states + (sigma * latent_std)[:, None, None] * eps, 0.0)
    dropout_key = rng if num_devices == 1 else jax.random.fold_in(rng, parallel.device_index())
    logits = model.decode(batch["decoder_input_ids"], (memory,), encoder_attention_mask=att, params=params,
                          train=True, dropout_rng=dropout_key).logits.astype(jnp.float32)
    weights = (batch["labels"] != pad_id).astype(jnp.float32)
    loss = parallel.global_token_mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]),
                                      weights)
    accuracy = parallel.global_token_mean(logits.argmax(-1) == batch["labels"], weights)
    return loss, {"loss": loss, "token_accuracy": accuracy, "noise_std_mean": jnp.mean(sigma)}
  return loss_fn


def robustness(autoencoder, texts: Sequence[str], latent_std: float, noise_stds: Sequence[float],
               decode_kwargs: dict, seed: int = 0) -> list[dict[str, float]]:
  """Exact match and BLEU of decoding E(texts) + σ s ε, per σ (normalized units; the same ε for every σ)."""
  latents, mask = autoencoder.encode(list(texts))
  eps = np.random.default_rng(seed).standard_normal(latents.shape).astype(np.float32)
  rows = []
  for sigma in noise_stds:
    noisy = np.where(mask[..., None], latents + sigma * latent_std * eps, 0.0)
    hyps = autoencoder.decode(noisy, mask, **decode_kwargs)
    scores = reconstruction.reconstruction_scores(hyps, list(texts))
    rows.append({"noise_std": float(sigma), "exact_match": scores["exact_match"], "bleu": scores["bleu"]})
  return rows


def finetune_decoder(cfg: ml_collections.ConfigDict, autoencoder, texts: Sequence[str], latent_std: float,
                     out_dir: str | pathlib.Path, *, eval_texts: Sequence[str] = (), decode_kwargs: dict | None = None,
                     stop_after_step: int | None = None, devices=None) -> dict[str, Any]:
  """Fine-tunes `autoencoder`'s decoder on `texts` with noised latents; see the module docstring.

  Args:
    cfg: the `config.decoder_finetune` section (`default_config`), noise_std > 0.
    autoencoder: the run's BART `Autoencoder` (ldlg.codecs.bart.autoencoder); not modified.
    texts: training sentences.
    latent_std: the latents' scalar std (the latent store's statistics): noise_std's unit.
    out_dir: checkpoints/, metrics.jsonl; the fine-tuned BART, its tokenizer and DONE_FILE when done.
    eval_texts: held-out sentences for the robustness scores in DONE_FILE (the first cfg.eval_num_sentences).
    decode_kwargs: `Autoencoder.decode` settings of those scores (the run's, `codec.decode_settings`).
    stop_after_step: stop (checkpointed) after this step, as a preemption would (tests).
    devices: devices to pmap over (default all local).

  Returns:
    {"step", "resumed_from", "stopped_by", "final_loss", "params" (the whole BART's, host arrays), "out_dir",
     "robustness" (when done: {"before", "after"}, each `robustness` rows)}.
  """
  if float(cfg.noise_std) <= 0:
    raise ValueError(f"decoder_finetune.noise_std={cfg.noise_std}: fine-tuning needs noise_std > 0 (0 = keep the "
                     "pretrained decoder)")
  if not latent_std > 0:
    raise ValueError(f"latent_std must be > 0, got {latent_std}")
  out_dir = pathlib.Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  devices = list(devices or jax.local_devices())
  if cfg.batch_size % len(devices):
    raise ValueError(f"decoder_finetune.batch_size={cfg.batch_size} is not divisible by the {len(devices)} devices")
  ids, _ = autoencoder.tokenize(list(texts))
  token_ids = [np.asarray(x, np.int32) for x in ids]
  if not token_ids:
    raise ValueError("texts is empty: the decoder fine-tuning needs training sentences")
  tok = autoencoder.tokenizer
  start_id = autoencoder.decode_options().decoder_start_token_id
  trainable0, frozen = split_params(autoencoder.params)

  def batches(start_step: int):
    for step in itertools.count(start_step):
      yield parallel.shard_batch(reconstruction_batch(
          token_ids, step, batch_size=cfg.batch_size, seed=cfg.seed, pad_multiple=cfg.pad_multiple,
          max_length=autoencoder.max_length, pad_id=tok.pad_token_id, start_id=start_id), len(devices))

  optim = ml_collections.ConfigDict(dict(
      lr=cfg.lr, warmup_steps=min(cfg.warmup_steps, max(cfg.num_steps - 1, 0)), schedule="cosine",
      end_lr_fraction=0.1, weight_decay=cfg.weight_decay, b1=0.9, b2=0.999, eps=1e-8, grad_clip=cfg.grad_clip,
      decay_mask="matrices"))
  init_rng, rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
  job = trainer.TrainJob(init_params=lambda _: trainable0,
                         loss_fn=make_loss_fn(autoencoder.model, frozen, pad_id=tok.pad_token_id,
                                              noise_std=float(cfg.noise_std), latent_std=float(latent_std),
                                              num_devices=len(devices)),
                         batches=batches, optim=optim, init_rng=init_rng, rng=rng, ema_decay=None)
  meta = {"decoder_finetune_config": cfg.to_dict(), "autoencoder": autoencoder.name, "latent_std": float(latent_std)}

  def check_meta(saved: dict) -> None:
    if {k: saved.get(k) for k in meta} != meta:
      raise ValueError(f"the checkpoints in {out_dir} were made from another autoencoder, latent std or "
                       "decoder_finetune config; delete the folder or use another")

  run = trainer.TrainRun(directory=out_dir, num_steps=cfg.num_steps, log_every=cfg.log_every,
                         ckpt_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints, meta=meta,
                         check_meta=check_meta, desc="decoder fine-tune", stop_at=stop_after_step, devices=devices)
  result = trainer.train(job, run)
  params = merge_params(jax.device_get(result.state.params), frozen)
  out = dict(step=result.step, resumed_from=result.resumed_from, stopped_by=result.stopped_by,
             final_loss=result.final_loss, params=params, out_dir=str(out_dir))
  if result.step < cfg.num_steps:
    return out
  autoencoder.model.save_pretrained(str(out_dir), params=params)
  tok.save_pretrained(str(out_dir))
  if eval_texts:
    from ldlg.codecs.bart.autoencoder import Autoencoder  # pylint: disable=import-outside-toplevel
    tuned = Autoencoder(autoencoder.model, tok, params=params, max_length=autoencoder.max_length, name=str(out_dir))
    held_out = list(eval_texts)[:cfg.eval_num_sentences]
    sigmas = (0.0, float(cfg.noise_std) / 2)
    out["robustness"] = {name: robustness(ae, held_out, latent_std, sigmas, decode_kwargs or {})
                         for name, ae in (("before", autoencoder), ("after", tuned))}
  (out_dir / DONE_FILE).write_text(json.dumps(
      {"decoder_finetune": cfg.to_dict(), "autoencoder": autoencoder.name, "latent_std": float(latent_std),
       "step": result.step, "final_loss": result.final_loss, "robustness": out.get("robustness")}, indent=2))
  return out
