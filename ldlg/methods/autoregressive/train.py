"""Training the autoregressive baseline on the same tokenized text as LD4LG: `train_ar_baseline`.

Each text becomes `<s> text </s>` in the project's tokenizer; the loss is the next-token cross-entropy averaged
over every non-pad target token of the global batch. The step is pmapped over the local devices like the
denoiser's: it is trained by the engine's one trainer (ldlg/engine/trainer.py); each device's share of the
token-mean loss is normalized by the global token count, so the result is the global mean however the batch is
split. Nothing random is
carried: the batch of step s is a function of (seed, s), dropout keys are `fold_in(fold_in(key, s), device)`,
and a resumed run continues as an uninterrupted one would.

The budget is a step count and, optionally, a wall-time cap (summed over resumes); training stops at whichever
comes first, or at SIGTERM, and the result says which. The learning rate decays over the step budget.

out_dir layout:
    checkpoints/            Orbax checkpoints of the train state (resumable)
    metrics.jsonl, tb/      training metrics
    config.json, flax_model.msgpack, tokenizer files   the final model in Hugging Face format
    ar_config.json          the baseline's ConfigDict
    ar_result.json          what `train_ar_baseline` returns
"""

import itertools
import json
import pathlib
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import transformers

from ldlg.engine import parallel
from ldlg.engine import trainer
from ldlg.methods.autoregressive import model as ar_model
from ldlg.evaluation import batching
from ldlg.evaluation import perplexity
from ldlg.codecs.tokens import frame_texts, make_batch  # noqa: F401  (public here too)
from ldlg.data.step_batches import batch_indices  # noqa: F401



def token_nll(logits: jax.Array, input_ids: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed next-token NLL (nats) over non-pad targets, and their number.

  Args:
    logits: [B, L, V]; position i predicts token i + 1.
    input_ids: [B, L] int, right-padded.
    attention_mask: [B, L], 1 on real tokens.
  Returns:
    (nll_sum [] float32, num_targets [] float32).
  """
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]  # [B, L-1]
  weight = attention_mask[:, 1:].astype(jnp.float32)
  return (nll * weight).sum(), weight.sum()


def make_loss_fn(model: Any):
  """loss_fn(params, rng, batch) -> (loss, metrics) of the engine (see ldlg.methods.base).

  Each device sums its tokens' NLL and divides by the global token count (`global_sum`), times the device count,
  so the engine's mean over devices is exactly the global token mean (and its gradient), however the batch is
  split. Dropout keys are fold_in(step key, device index).

  batch: input_ids, attention_mask [b, W] (this device's rows).
  metrics: loss (global token-mean NLL), num_tokens (global count of scored targets).
  """
  def loss_fn(params, rng, batch):
    dropout_rng = jax.random.fold_in(rng, parallel.device_index())
    num_global = parallel.global_sum(batch["attention_mask"][:, 1:].sum().astype(jnp.float32))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], params=params,
                   dropout_rng=dropout_rng, train=True).logits
    nll_sum, _ = token_nll(logits, batch["input_ids"], batch["attention_mask"])
    loss = nll_sum * parallel.global_sum(1.0) / jnp.maximum(num_global, 1.0)
    return loss, {"loss": loss, "num_tokens": num_global}
  return loss_fn


def make_p_train_step(model: Any, base_rng: jax.Array, *, ema_decay: float, ema_warmup: bool, devices=None,
                      optim=None):
  """The engine's pmapped step for the AR loss over `devices` (default: all local); the state is donated."""
  job = trainer.TrainJob(init_params=None, loss_fn=make_loss_fn(model), batches=None, optim=optim,
                         init_rng=base_rng, rng=base_rng, ema_decay=ema_decay, ema_warmup=ema_warmup)
  return trainer.make_p_train_step(job, devices)


def evaluate_loss(lm: perplexity.CausalLM, seqs: Sequence[np.ndarray], *, batch_size: int,
                  max_length: int) -> float:
  """Token-mean NLL (nats) of framed sequences (`frame_texts`), the training loss's definition (</s> scored)."""
  total, count = 0.0, 0.0
  for batch in batching.iterate_batches(seqs, batch_size=batch_size, buckets=batching.bucket_lengths(max_length),
                                        pad_id=lm.pad_id):
    s, c = jax.device_get(lm.nll_fn(lm.params, batch.input_ids, batch.attention_mask))
    n = len(batch.indices)  # Dummy rows score no target (one visible token), but drop them anyway.
    total += float(np.sum(s[:n]))
    count += float(np.sum(c[:n]))
  return total / max(count, 1.0)


def evaluate_valid(model: Any, params: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int,
                   batch_size: int, name: str = "ar_baseline") -> dict[str, float]:
  """{"valid_loss": token-mean NLL with </s> scored (the training loss), "valid_perplexity": the mean per-text
  perplexity of `ldlg.evaluation.perplexity` (</s> not scored)} of the non-empty `texts`."""
  texts = [t for t in texts if tokenizer.encode(t, add_special_tokens=False)]
  if not texts:
    return {}
  lm = ar_model.ar_causal_lm(model, params, tokenizer, name=name)
  return {"valid_loss": valid_loss(lm, texts, tokenizer, max_length=max_length, batch_size=batch_size),
          "valid_perplexity": perplexity.mean_perplexity(texts, lm, batch_size=batch_size, max_length=max_length)}


def valid_loss(lm: perplexity.CausalLM, texts: Sequence[str], tokenizer: Any, *, max_length: int,
               batch_size: int) -> float:
  """Token-mean NLL (nats, </s> scored, <s> given) of the non-empty `texts`: `evaluate_valid`'s "valid_loss"."""
  texts = [t for t in texts if tokenizer.encode(t, add_special_tokens=False)]
  seqs, _ = frame_texts(texts, tokenizer, max_length)
  return evaluate_loss(lm, seqs, batch_size=batch_size, max_length=max_length)


def train_ar_baseline(cfg: ml_collections.ConfigDict, texts: Sequence[str], tokenizer: Any,
                      out_dir: str | pathlib.Path, *, max_steps: int | None = None,
                      max_seconds: float | None = None, valid_texts: Sequence[str] | None = None,
                      devices: Sequence[jax.Device] | None = None) -> dict:
  """Trains the GPT-2 baseline on `texts`, resuming from out_dir/checkpoints; saves it in HF format.

  Args:
    cfg: the baseline section (`ar_model.default_ar_config()`).
    texts: training texts (empty ones are dropped and counted).
    tokenizer: an HF fast tokenizer with bos/eos/pad tokens (the project's BART tokenizer).
    out_dir: output folder (see the module docstring).
    max_steps: step budget (default cfg.train.num_steps); the cosine schedule decays over it, so a resume must
      pass the same value.
    max_seconds: wall-time cap in seconds, summed over resumes, compilation included (default
      cfg.train.max_seconds; 0 or None: no cap).
    valid_texts: held-out texts; their loss and perplexity are reported.
    devices: devices to pmap over (default: all local).
  Returns:
    {"num_params", "steps", "max_steps", "seconds", "max_seconds", "stopped_by" ("max_steps" | "max_seconds" |
     "signal"), "final_loss" (mean training loss of the last log window), "valid_loss" (token-mean NLL incl.
     </s>) and "valid_perplexity" (mean per-text perplexity, as `ldlg.evaluation.perplexity`) when valid texts
     are given and the run was not preempted, "steps_per_s" (this session), "resumed_from", the framing stats,
     "model" (sizes), "out_dir"}.
  """
  tc = cfg.train
  max_steps = int(tc.num_steps if max_steps is None else max_steps)
  max_seconds = float((tc.max_seconds if max_seconds is None else max_seconds) or 0.0)
  if max_steps < 1:
    raise ValueError(f"max_steps must be >= 1, got {max_steps}")
  if cfg.model.n_positions < cfg.data.max_length:
    raise ValueError(f"model.n_positions={cfg.model.n_positions} < data.max_length={cfg.data.max_length}; "
                     "raise n_positions")
  devices = list(devices or jax.local_devices())
  if tc.batch_size % len(devices):
    raise ValueError(f"train.batch_size={tc.batch_size} is not divisible by the {len(devices)} devices; use a "
                     f"multiple of {len(devices)}")
  seqs, framing = frame_texts(texts, tokenizer, cfg.data.max_length)
  if not seqs:
    raise ValueError("no non-empty training texts: the AR baseline needs text to train on")
  special = ar_model.special_ids(tokenizer)
  out_dir = pathlib.Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "ar_config.json").write_text(cfg.to_json(indent=2))

  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
  model = transformers.FlaxGPT2LMHeadModel(ar_model.gpt2_config(cfg.model, tokenizer), _do_init=False)
  init = jax.jit(model.init_weights, static_argnums=1)
  num_params = ar_model.count_params(jax.eval_shape(init, init_rng, (1, 1)))
  logging.info("Training a %d-parameter GPT-2 baseline (%d x %d) on %d texts for up to %d steps%s.",
               num_params, cfg.model.n_layer, cfg.model.n_embd, len(seqs), max_steps,
               f" or {max_seconds:.0f} s" if max_seconds else "")

  def batches(start_step: int):
    for step in itertools.count(start_step):
      yield make_batch(seqs, step, batch_size=tc.batch_size, num_devices=len(devices), pad_id=special["pad"],
                       pad_multiple=cfg.data.pad_multiple, max_length=cfg.data.max_length, seed=cfg.seed)

  def check_meta(saved_meta: dict) -> None:
    for key in ("max_steps", "vocab_size"):
      if saved_meta.get(key) != meta[key]:
        raise ValueError(f"the checkpoint in {out_dir / 'checkpoints'} was trained with {key}="
                         f"{saved_meta.get(key)}, not {meta[key]}; pass the same value to resume, or use a new out_dir")

  meta = {"config": cfg.to_dict(), "max_steps": max_steps, "vocab_size": len(tokenizer)}
  job = trainer.TrainJob(init_params=lambda rng: init(rng, (1, 1)), loss_fn=make_loss_fn(model), batches=batches,
                         optim=cfg.optim, init_rng=init_rng, rng=train_rng, ema_decay=tc.ema_decay,
                         ema_warmup=tc.ema_warmup)
  run = trainer.TrainRun(directory=out_dir, num_steps=max_steps, max_seconds=max_seconds, log_every=tc.log_every,
                         ckpt_every=tc.ckpt_every, keep_checkpoints=tc.keep_checkpoints, meta=meta,
                         check_meta=check_meta, desc="ar baseline", devices=devices)
  trained = trainer.train(job, run)
  state, step, start_step, stopped_by = trained.state, trained.step, trained.resumed_from, trained.stopped_by
  stopped_by = "max_steps" if stopped_by == "num_steps" else stopped_by
  seconds, final_loss = trained.seconds, trained.final_loss

  # The saved model holds the EMA weights (identical to the trained ones when ema_decay = 0).
  params = jax.device_get(state.ema_params)
  model.save_pretrained(str(out_dir), params=params)
  tokenizer.save_pretrained(str(out_dir))
  result = {
      "num_params": num_params, "steps": step, "max_steps": max_steps, "seconds": seconds,
      "max_seconds": max_seconds or None, "stopped_by": stopped_by, "final_loss": final_loss,
      "steps_per_s": trained.steps_per_s if step > start_step else None, "resumed_from": start_step,
      **framing, "model": {k: cfg.model[k] for k in ("n_layer", "n_embd", "n_head", "n_positions")},
      "out_dir": str(out_dir)}
  if valid_texts and stopped_by != "signal":  # A preempted job has seconds left: save, skip the scoring.
    result.update(evaluate_valid(model, params, tokenizer, valid_texts, max_length=cfg.data.max_length,
                                 batch_size=tc.eval_batch_size, name=f"ar_baseline@{step}"))
  (out_dir / "ar_result.json").write_text(json.dumps(result, indent=2))
  logging.info("AR baseline: %s", {k: v for k, v in result.items() if k != "model"})
  return result


def load_ar_baseline(out_dir: str | pathlib.Path) -> tuple[transformers.FlaxGPT2LMHeadModel, Any, Any]:
  """(model without params inside, params, tokenizer) of a trained baseline.

  The folder is a Hugging Face model folder, so `ldlg.evaluation.perplexity.load_causal_lm(out_dir)` also loads
  it as a perplexity judge.
  """
  out_dir = pathlib.Path(out_dir)
  if not (out_dir / "flax_model.msgpack").is_file():
    raise FileNotFoundError(f"no trained AR baseline in {out_dir} (flax_model.msgpack is missing); run "
                            "train_ar_baseline first, or let an interrupted run finish")
  model, params = transformers.FlaxGPT2LMHeadModel.from_pretrained(str(out_dir), _do_init=False)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
  return model, params, tokenizer
