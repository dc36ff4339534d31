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

Resumable: Orbax checkpoints in out_dir/checkpoints every `checkpoint_every` steps. The batch of step s and
its corruption are functions of (seed, s) and the dropout key is fold_in(key(seed), s), so a resumed run
continues exactly as an uninterrupted one would. The loss is logged to out_dir/train_log.jsonl.
"""
import json
import logging
import math
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
import transformers

from ldlg.codecs.bart import autoencoder as autoencoder_lib
from ldlg.codecs.bart import corruption
from ldlg.codecs.bart import reconstruction
from ldlg.codecs.bart import tokenizer as tokenizer_lib
from ldlg.data.step_batches import batch_indices


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


def _pad(seqs: Sequence[np.ndarray], width: int, pad_id: int) -> np.ndarray:
  out = np.full((len(seqs), width), pad_id, np.int32)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = s
  return out


def make_batch(token_ids: Sequence[np.ndarray], step: int, cfg: ml_collections.ConfigDict,
               tokenizer) -> dict[str, np.ndarray]:
  """The training batch of `step`: corrupted inputs, clean labels, shifted decoder inputs, all [B, P]."""
  idx = batch_indices(step, len(token_ids), cfg.batch_size, cfg.seed)
  labels = [token_ids[i] for i in idx]
  rng = np.random.default_rng([cfg.seed, 1, step])
  inputs = corruption.noise_batch(
      labels, rng, clean_fraction=cfg.clean_fraction, max_length=cfg.max_length,
      mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer), mask_ratio=cfg.mask_ratio,
      poisson_lambda=cfg.poisson_lambda, random_ratio=cfg.random_ratio,
      token_mask_ratio=cfg.token_mask_ratio)
  longest = max(len(s) for s in inputs + labels)
  width = min(cfg.max_length, -(-longest // cfg.pad_multiple) * cfg.pad_multiple)
  pad = tokenizer.pad_token_id
  input_ids, label_ids = _pad(inputs, width, pad), _pad(labels, width, pad)
  # BART's shift_tokens_right: the decoder reads </s> (decoder start) then the labels.
  start = np.full((len(labels), 1), tokenizer.eos_token_id, np.int32)
  return dict(input_ids=input_ids, attention_mask=(input_ids != pad).astype(np.int32),
              decoder_input_ids=np.concatenate([start, label_ids[:, :-1]], axis=1), labels=label_ids)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  warmup = min(cfg.warmup_steps, max(cfg.num_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, warmup, max(cfg.num_steps, warmup + 1), end_value=0.1 * cfg.learning_rate)
  # No weight decay on biases and LayerNorm parameters (the 1-D leaves).
  decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm),
                     optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-6,
                                 weight_decay=cfg.weight_decay, mask=decay_mask))


def make_train_step(model, tx: optax.GradientTransformation, pad_id: int, seed: int):
  """A jitted (state, batch) -> (state, metrics); state = {"params", "opt_state", "step"}."""
  base_key = jax.random.PRNGKey(seed)

  def loss_fn(params, batch, dropout_key):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=batch["decoder_input_ids"], params=params,
                   dropout_rng=dropout_key, train=True).logits.astype(jnp.float32)
    weights = (batch["labels"] != pad_id).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    loss = (ce * weights).sum() / weights.sum()
    accuracy = ((logits.argmax(-1) == batch["labels"]) * weights).sum() / weights.sum()
    return loss, accuracy

  def step(state, batch):
    dropout_key = jax.random.fold_in(base_key, state["step"])
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch,
                                                                        dropout_key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(loss=loss, token_accuracy=accuracy, grad_norm=optax.global_norm(grads))
    return dict(params=params, opt_state=opt_state, step=state["step"] + 1), metrics

  return jax.jit(step, donate_argnums=0)


def _load_or_train_tokenizer(cfg, texts_train, out_dir: pathlib.Path):
  if (out_dir / "tokenizer.json").exists():  # resuming: the ids in the checkpoint depend on it
    return transformers.AutoTokenizer.from_pretrained(str(out_dir))
  return tokenizer_lib.train_tokenizer(texts_train, cfg.vocab_size, out_dir,
                                       min_frequency=cfg.tokenizer_min_frequency)


def _trim_log(path: pathlib.Path, last_step: int) -> None:
  """Drops log lines past the restored step (written after the last checkpoint, before a crash)."""
  if path.exists():
    lines = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= last_step]
    path.write_text("".join(l + "\n" for l in lines))


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


def pretrain_autoencoder(cfg: ml_collections.ConfigDict, texts_train: Sequence[str],
                         texts_valid: Sequence[str], out_dir: str | pathlib.Path, *,
                         stop_after_step: int | None = None) -> dict[str, Any]:
  """Trains tokenizer and BART denoising autoencoder; resumes from out_dir/checkpoints if present.

  Args:
    cfg: the `config.autoencoder` section (see `default_autoencoder_config`).
    texts_train: training sentences.
    texts_valid: held-out sentences for the reconstruction score.
    out_dir: output folder (model, tokenizer, checkpoints, train_log.jsonl, reconstruction.json).
    stop_after_step: stop after this step, checkpointed, as if preempted (for tests); None: run to
      cfg.num_steps.
  Returns:
    {"step", "resumed_from" (0 for a fresh run), "final_loss", "stopped_early", "train_seconds",
     "reconstruction" (absent if stopped early), "num_params", "out_dir"}.
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
  params = jax.jit(model.init_weights, static_argnums=1)(jax.random.PRNGKey(cfg.seed), (1, 1))
  tx = make_optimizer(cfg)
  state = dict(params=params, opt_state=tx.init(params), step=jnp.int32(0))
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  (out_dir / "autoencoder_config.json").write_text(cfg.to_json(indent=2))

  manager = ocp.CheckpointManager(
      out_dir / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints, create=True,
                                           enable_async_checkpointing=False))
  log_path = out_dir / "train_log.jsonl"
  start = manager.latest_step()
  if start is not None:
    state = manager.restore(start, args=ocp.args.StandardRestore(
        jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)))
    _trim_log(log_path, start)
    logging.info("resumed autoencoder pretraining from step %d", start)
  start = start or 0
  train_step = make_train_step(model, tx, tokenizer.pad_token_id, cfg.seed)
  end = cfg.num_steps if stop_after_step is None else min(stop_after_step, cfg.num_steps)
  logging.info("pretraining a %d-parameter BART autoencoder for %d steps", num_params, cfg.num_steps)

  final_loss = math.nan
  t0 = time.time()
  with open(log_path, "a") as log, tqdm.tqdm(total=cfg.num_steps, initial=start,
                                             desc="autoencoder pretrain") as bar:
    for step in range(start, end):
      state, metrics = train_step(state, make_batch(token_ids, step, cfg, tokenizer))
      done = step + 1
      if done % cfg.log_every == 0 or done == end:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(metrics["loss"]):
          raise FloatingPointError(f"autoencoder loss became {metrics['loss']} at step {done}; "
                                   "lower learning_rate or raise grad clipping")
        final_loss = metrics["loss"]
        log.write(json.dumps(dict(step=done, **metrics)) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{final_loss:.3f}", acc=f"{metrics['token_accuracy']:.3f}")
      if done % cfg.checkpoint_every == 0 or done == end:
        manager.save(done, args=ocp.args.StandardSave(state), force=True)
      bar.update(1)
  manager.wait_until_finished()
  result = dict(step=end, resumed_from=start, final_loss=final_loss, stopped_early=end < cfg.num_steps,
                train_seconds=time.time() - t0, num_params=num_params, out_dir=str(out_dir))
  if end < cfg.num_steps:
    return result

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
