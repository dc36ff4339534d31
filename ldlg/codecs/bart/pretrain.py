"""Pretraining a small BART as a denoising autoencoder, for machines or domains without a pretrained BART.

`pretrain_autoencoder(cfg, texts_train, texts_valid, out_dir)`:
1. trains a byte-level BPE tokenizer on texts_train (or reuses the one already in out_dir, on resume);
2. trains a BART of cfg's size to map corrupted sentences (BART text infilling + token masking, see
   `corruption.py`) back to the originals, with a fraction `clean_fraction` of examples left clean so the
   decoder also learns the identity map LD4LG relies on (decode(encode(x)) = x);
3. saves model and tokenizer with `save_pretrained` into out_dir, so `Autoencoder.from_pretrained(out_dir)`
   loads it exactly as it loads `facebook/bart-base`;
4. writes the reconstruction scores of decode(encode(x)) on held-out (and training) sentences to
   out_dir/reconstruction.json.

Trained by the engine's trainer (ldlg/engine/trainer.py), like every model of the project: pmapped over the
local devices, Orbax checkpoints in out_dir/checkpoints every `checkpoint_every` steps, SIGTERM saves, non-finite
loss stops. The batch of step s and its corruption are functions of (seed, s) and the dropout key is
fold_in(key(seed), s), so a resumed run continues exactly as an uninterrupted one would. The loss is logged to
out_dir/metrics.jsonl (and TensorBoard in out_dir/tb).
"""
import itertools
import json
import logging
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import transformers

from ldlg.codecs.bart import autoencoder as autoencoder_lib
from ldlg.codecs.bart import corruption
from ldlg.codecs.bart import reconstruction
from ldlg.codecs.bart import tokenizer as tokenizer_lib
from ldlg.data.batching import pad_rows, pad_width, teacher_forcing_batch
from ldlg.data.step_batches import LengthGroupedOrder, batch_indices
from ldlg.engine import parallel
from ldlg.engine import trainer


def default_autoencoder_config() -> ml_collections.ConfigDict:
  """The `config.autoencoder` section: CPU-tiny defaults (~1.1M params with a 2k vocabulary)."""
  c = ml_collections.ConfigDict()
  # Tokenizer.
  c.vocab_size = 2048  # BPE vocabulary incl. 256 bytes and 5 specials; small corpora may yield fewer.
  c.tokenizer_min_frequency = 2
  c.max_length = 64  # tokens per sentence incl. <s> and </s>; longer ones are truncated.
  # Model (transformers.BartConfig).
  c.d_model = 128
  c.encoder_layers = 2
  c.decoder_layers = 2
  c.attention_heads = 4
  c.ffn_dim = 512
  c.dropout = 0.1
  c.attention_dropout = 0.0
  c.max_position_embeddings = 128  # must be >= max_length and the decode max_length
  # Noise (BART): text infilling with Poisson spans, random replacement, token masking.
  c.clean_fraction = 0.5  # examples left uncorrupted: the identity task LD4LG needs
  c.mask_ratio = 0.3
  c.poisson_lambda = 3.0
  c.random_ratio = 0.1
  c.token_mask_ratio = 0.0
  # Optimisation (AdamW, linear warm-up then cosine decay to 10%).
  c.batch_size = 64
  c.num_steps = 2000
  c.learning_rate = 1e-3
  c.warmup_steps = 100
  c.weight_decay = 0.01
  c.grad_clip_norm = 1.0
  c.seed = 0
  c.pad_multiple = 16  # batches are padded to a multiple of this (few compiled shapes)
  c.group_by_length = 0  # k > 0: batches of similar length, from length-sorted groups of k batches
  # Bookkeeping.
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  # Reconstruction evaluation at the end.
  c.eval_num_sentences = 256
  c.eval_num_beams = 4
  c.eval_batch_size = 64
  return c


def bart_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> transformers.BartConfig:
  """The BartConfig of the model to pretrain; special ids as in bart-base (and our tokenizer)."""
  if cfg.max_position_embeddings < cfg.max_length:
    raise ValueError(f"max_position_embeddings={cfg.max_position_embeddings} < max_length={cfg.max_length}")
  return transformers.BartConfig(
      vocab_size=vocab_size, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
      decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.attention_heads,
      decoder_attention_heads=cfg.attention_heads, encoder_ffn_dim=cfg.ffn_dim,
      decoder_ffn_dim=cfg.ffn_dim, max_position_embeddings=cfg.max_position_embeddings,
      dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=0.0,
      bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)


def generation_config(model_config: transformers.BartConfig) -> transformers.GenerationConfig:
  """bart-base's generation settings (forced <s> after the </s> start token, as in training)."""
  gen = transformers.GenerationConfig.from_model_config(model_config)
  gen.forced_bos_token_id = 0
  return gen


def batch_order(token_ids: Sequence[np.ndarray], cfg: ml_collections.ConfigDict) -> LengthGroupedOrder | None:
  """The length-grouped batch order when `cfg.group_by_length` > 0 (by the clean sentences' lengths), else None
  (random batches, `batch_indices`)."""
  group = int(cfg.get("group_by_length", 0))
  if not group:
    return None
  return LengthGroupedOrder([len(x) for x in token_ids], cfg.batch_size, cfg.seed, group)


def make_batch(token_ids: Sequence[np.ndarray], step: int, cfg: ml_collections.ConfigDict,
               tokenizer, order: LengthGroupedOrder | None = None) -> dict[str, np.ndarray]:
  """The training batch of `step`: corrupted inputs, clean labels, shifted decoder inputs, all [B, P].

  order: `batch_order(token_ids, cfg)`, built once per run (None: random batches)."""
  if order is None:
    idx = batch_indices(step, len(token_ids), cfg.batch_size, cfg.seed)
  else:
    idx = order.batch(step)
  labels = [token_ids[i] for i in idx]
  rng = np.random.default_rng([cfg.seed, 1, step])
  inputs = corruption.noise_batch(
      labels, rng, clean_fraction=cfg.clean_fraction, max_length=cfg.max_length,
      mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer), mask_ratio=cfg.mask_ratio,
      poisson_lambda=cfg.poisson_lambda, random_ratio=cfg.random_ratio,
      token_mask_ratio=cfg.token_mask_ratio)
  longest = max(len(s) for s in inputs + labels)
  width = pad_width(longest, cfg.pad_multiple, cfg.max_length)
  pad = tokenizer.pad_token_id
  # BART's decoder start token is </s>.
  return teacher_forcing_batch(pad_rows(inputs, width, pad), pad_rows(labels, width, pad), pad_id=pad,
                               start_id=tokenizer.eos_token_id)


def optimizer_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """BART's pretraining recipe as the engine's optimizer section: AdamW (b2 0.98, eps 1e-6), no weight decay on
  biases and LayerNorm scales, linear warm-up then cosine decay to 10% of the peak, global-norm clipping."""
  return ml_collections.ConfigDict(dict(
      lr=cfg.learning_rate, warmup_steps=min(cfg.warmup_steps, max(cfg.num_steps - 1, 0)), schedule="cosine",
      end_lr_fraction=0.1, weight_decay=cfg.weight_decay, b1=0.9, b2=0.98, eps=1e-6, grad_clip=cfg.grad_clip_norm,
      decay_mask="matrices"))


def make_loss_fn(model, pad_id: int, num_devices: int):
  """Token-mean cross-entropy of the clean labels (global over devices), with token accuracy.

  Dropout: on one device the key is the step key; on several each device folds in its index, so devices draw
  different masks (one key per network call cannot be per example).
  """
  def loss_fn(params, rng, batch):
    dropout_key = rng if num_devices == 1 else jax.random.fold_in(rng, parallel.device_index())
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=batch["decoder_input_ids"], params=params,
                   dropout_rng=dropout_key, train=True).logits.astype(jnp.float32)
    weights = (batch["labels"] != pad_id).astype(jnp.float32)
    loss = parallel.global_token_mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]),
                                      weights)
    accuracy = parallel.global_token_mean(logits.argmax(-1) == batch["labels"], weights)
    return loss, {"loss": loss, "token_accuracy": accuracy}
  return loss_fn


def _load_or_train_tokenizer(cfg, texts_train, out_dir: pathlib.Path):
  if (out_dir / "tokenizer.json").exists():  # resuming: the ids in the checkpoint depend on it
    return transformers.AutoTokenizer.from_pretrained(str(out_dir))
  return tokenizer_lib.train_tokenizer(texts_train, cfg.vocab_size, out_dir,
                                       min_frequency=cfg.tokenizer_min_frequency)


def evaluate_reconstruction(ae: autoencoder_lib.Autoencoder, splits: dict[str, Sequence[str]],
                            cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Scores decode(encode(x)) per split, with the paper's decoding and with plain greedy decoding."""
  decodings = {
      f"beam{cfg.eval_num_beams}_paper": dict(num_beams=cfg.eval_num_beams),
      "greedy_plain": dict(num_beams=1, no_repeat_ngram_size=0, repetition_penalty=1.0),
  }
  # A sentence of max_length tokens decodes to max_length + 1 (the decoder start token comes first).
  decode_length = min(cfg.max_length + 1, cfg.max_position_embeddings)
  out = {}
  for split, texts in splits.items():
    texts = list(texts)[:cfg.eval_num_sentences]
    if not texts:
      continue
    out[split] = {}
    for name, kwargs in decodings.items():
      hyps = ae.reconstruct(texts, batch_size=cfg.eval_batch_size, max_length=decode_length, **kwargs)
      out[split][name] = reconstruction.reconstruction_scores(hyps, texts)
      out[split][name]["examples"] = [dict(reference=r, reconstruction=h)
                                      for r, h in list(zip(texts, hyps))[:5]]
  return out


def _check_vocab(vocab_size: int, out_dir: pathlib.Path):
  def check(saved_meta: dict) -> None:
    if saved_meta.get("vocab_size") != vocab_size:
      raise ValueError(f"the checkpoints in {out_dir} were trained with a vocabulary of "
                       f"{saved_meta.get('vocab_size')}, the tokenizer there has {vocab_size}; use a new out_dir")
  return check


def pretrain_autoencoder(cfg: ml_collections.ConfigDict, texts_train: Sequence[str],
                         texts_valid: Sequence[str], out_dir: str | pathlib.Path, *,
                         stop_after_step: int | None = None, devices=None) -> dict[str, Any]:
  """Trains tokenizer and BART denoising autoencoder; resumes from out_dir/checkpoints if present.

  Args:
    cfg: the `config.autoencoder` section (see `default_autoencoder_config`).
    texts_train: training sentences.
    texts_valid: held-out sentences for the reconstruction score.
    out_dir: output folder (model, tokenizer, checkpoints, train_log.jsonl, reconstruction.json).
    stop_after_step: stop after this step, checkpointed, as if preempted (for tests); None: run to
      cfg.num_steps.
    devices: devices to pmap over (default: all local).
  Returns:
    {"step", "resumed_from" (0 for a fresh run), "final_loss", "stopped_early", "stopped_by" (see
     ldlg.engine.trainer.TrainResult), "train_seconds", "reconstruction" (absent if stopped early), "num_params",
     "out_dir"}.
  """
  texts_train = list(texts_train)
  if not texts_train:
    raise ValueError("texts_train is empty: the autoencoder needs training sentences")
  out_dir = pathlib.Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  tokenizer = _load_or_train_tokenizer(cfg, texts_train, out_dir)
  token_ids = [np.asarray(x, np.int32) for x in tokenizer(
      texts_train, truncation=True, max_length=cfg.max_length)["input_ids"]]
  model = transformers.FlaxBartForConditionalGeneration(bart_config(cfg, len(tokenizer)), _do_init=False)
  init = jax.jit(model.init_weights, static_argnums=1)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(jax.eval_shape(init, jax.random.PRNGKey(0), (1, 1))))
  (out_dir / "autoencoder_config.json").write_text(cfg.to_json(indent=2))
  devices = list(devices or jax.local_devices())
  if cfg.batch_size % len(devices):
    raise ValueError(f"autoencoder.batch_size={cfg.batch_size} is not divisible by the {len(devices)} devices; "
                     f"use a multiple of {len(devices)}")

  order = batch_order(token_ids, cfg)

  def batches(start_step: int):
    for step in itertools.count(start_step):
      yield parallel.shard_batch(make_batch(token_ids, step, cfg, tokenizer, order), len(devices))

  key = jax.random.PRNGKey(cfg.seed)  # Initialisation and dropout share it, as they always have.
  job = trainer.TrainJob(init_params=lambda rng: init(rng, (1, 1)),
                         loss_fn=make_loss_fn(model, tokenizer.pad_token_id, len(devices)), batches=batches,
                         optim=optimizer_config(cfg), init_rng=key, rng=key, ema_decay=None)
  run = trainer.TrainRun(directory=out_dir, num_steps=cfg.num_steps, log_every=cfg.log_every,
                         ckpt_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
                         meta={"autoencoder_config": cfg.to_dict(), "vocab_size": len(tokenizer)},
                         check_meta=_check_vocab(len(tokenizer), out_dir), desc="autoencoder pretrain",
                         stop_at=stop_after_step, devices=devices)
  logging.info("pretraining a %d-parameter BART autoencoder for %d steps", num_params, cfg.num_steps)
  trained = trainer.train(job, run)
  end = trained.step
  result = dict(step=end, resumed_from=trained.resumed_from, final_loss=trained.final_loss,
                stopped_early=end < cfg.num_steps, stopped_by=trained.stopped_by, train_seconds=trained.seconds,
                num_params=num_params, out_dir=str(out_dir))
  if end < cfg.num_steps:
    return result
  state = {"params": trained.state.params}

  params = jax.device_get(state["params"])
  model.generation_config = generation_config(model.config)
  model.save_pretrained(str(out_dir), params=params)
  tokenizer.save_pretrained(str(out_dir))
  ae = autoencoder_lib.Autoencoder(model, tokenizer, params=params, max_length=cfg.max_length,
                                   name=str(out_dir))
  scores = evaluate_reconstruction(ae, {"valid": texts_valid, "train": texts_train}, cfg)
  (out_dir / "reconstruction.json").write_text(json.dumps(scores, indent=2))
  result["reconstruction"] = scores
  return result
