"""The pipeline stages of masked diffusion (MDLM), on the engine's trainer and sample runner.

  tokenizer  <workdir>/tokenizer/ (the project's byte-level BPE; or config.tokenizer.path — pass another run's
             tokenizer to score MDLM and the AR baseline on the same tokens)
  train      <workdir>/checkpoints/, metrics.jsonl, tb/ (the engine's trainer)
  sample     <workdir>/samples.jsonl (the engine's sample runner; the caching sampler reports its network calls)
  evaluate   <workdir>/metrics.json: the shared text metrics, plus the NELBO per token and the perplexity bound
             on the eval split (`likelihood_metrics`)

Sequences are `<s> text </s>` padded to `config.model.max_len` with <pad>: with `pad_in_loss` (the default) pad
positions are modelled tokens, so every sequence has the model's full length and sampling yields the end of the
text for free.
"""

import itertools
import json

from absl import logging
import jax
import ml_collections
import numpy as np

from ldlg.codecs import tokens
from ldlg.data.splits import load_texts
from ldlg.engine import provenance
from ldlg.engine import sample_runner
from ldlg.engine import train_stage
from ldlg.engine import trainer
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir
from ldlg.methods.masked.method import MaskedDiffusion, tokenizer_info


def build(config: ml_collections.ConfigDict, workdir: Workdir):
  """(method, tokenizer) of a run."""
  tokenizer = tokens.load_tokenizer(config, workdir)
  return MaskedDiffusion.from_config(config, tokenizer_info(tokenizer)), tokenizer


def token_data(config, workdir, data_dir, split: str, tokenizer):
  """(framed id sequences, labels or None) of a split; sequences longer than the model are cut."""
  records = load_texts(config, data_dir, workdir, split)
  texts = [r["text"] for r in records]
  seqs, stats = tokens.frame_texts(texts, tokenizer, int(config.model.max_len))
  if stats["num_empty"] or stats["num_truncated"]:
    logging.info("%s: %d empty texts dropped, %d cut to %d tokens.", split, stats["num_empty"],
                 stats["num_truncated"], config.model.max_len)
  labels = None
  if config.model.get("num_classes", 0) > 0:
    kept = [r for r, t in zip(records, texts) if tokenizer(t, add_special_tokens=False)["input_ids"]]
    labels = np.asarray([r["label"] for r in kept], np.int32)
  return seqs, labels


def as_method_batch(batch: dict) -> dict:
  """The token codec's batch -> the masked method's fields (mask as bool)."""
  out = {"input_ids": batch["input_ids"], "mask": batch["attention_mask"].astype(bool),
         "example_index": batch["example_index"]}
  if "label" in batch:
    out["label"] = batch["label"]
  return out


def train(config: ml_collections.ConfigDict, workdir: Workdir, data_dir) -> trainer.TrainResult:
  method, tokenizer = build(config, workdir)
  seqs, labels = token_data(config, workdir, data_dir, config.data.train_split, tokenizer)
  devices = jax.local_devices()
  pad = tokens.special_ids(tokenizer)["pad"]
  max_len = int(config.model.max_len)

  def batches(start_step):
    for step in itertools.count(start_step):
      yield as_method_batch(tokens.make_batch(
          seqs, step, batch_size=config.train.batch_size, num_devices=len(devices), pad_id=pad,
          pad_multiple=max_len, max_length=max_len, seed=config.seed, labels=labels))

  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  job = trainer.TrainJob(init_params=method.init_params, loss_fn=method.loss_fn, batches=batches,
                         optim=config.optim, init_rng=init_rng, rng=train_rng, ema_decay=config.train.ema_decay,
                         ema_warmup=config.train.ema_warmup)
  meta = {"config": config.to_dict(), "method": "masked", "codec": tokens.TokenCodec(tokenizer, max_len).identity()}
  run = trainer.TrainRun(directory=workdir.root, num_steps=config.train.num_steps, log_every=config.train.log_every,
                         ckpt_every=config.train.ckpt_every, keep_checkpoints=config.train.keep_checkpoints,
                         meta=meta, desc="train (masked)", devices=devices)
  return train_stage.train_to_end(job, run)


def load_ema_params(config, workdir: Workdir, method: MaskedDiffusion, step: int = -1):
  saved, meta = train_stage.restore_train_state(config, workdir, method.init_params(jax.random.PRNGKey(0)), step)
  return saved["ema_params"], meta


def sample(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> list[dict]:
  del data_dir
  method, tokenizer = build(config, workdir)
  params, meta = load_ema_params(config, workdir, method, config.sample.checkpoint_step)
  sc = config.sample
  sample_fn = method.make_sampler(num_steps=int(sc.num_steps), cache=sc.get("cache", None),
                                  top_p=float(sc.top_p), guidance_scale=float(sc.guidance_scale))
  calls = []

  def device_fn(params, rng, inputs, example_offset, global_batch):
    del example_offset, global_batch  # The sampler keys every example on its global index itself.
    return sample_fn(params, rng, inputs["example_index"], inputs.get("class_id"))

  def make_inputs(rng_np, batch_size, class_ids):
    del rng_np
    inputs = {"example_index": np.arange(batch_size, dtype=np.int32)}
    fields = [{} for _ in range(batch_size)]
    if class_ids is not None:
      inputs["class_id"] = class_ids
      fields = [{"class_id": int(c)} for c in class_ids]
    return inputs, fields

  def decode(outputs, inputs):
    calls.append(int(np.max(outputs["num_network_calls"])))
    return tokens.decode_ids(outputs["tokens"], tokenizer, tokens.special_ids(tokenizer)["eos"])

  runner = sample_runner.SampleRunner(device_fn, make_inputs, decode)
  class_ids = sample_runner.resolve_class_ids(method.num_classes, sc.num_samples,
                                              None if sc.class_id < 0 else sc.class_id)
  origin = provenance.sample_provenance(config, meta.get("data_position"))
  partial = workdir.root / "samples.partial.jsonl"
  records = runner.sample(params, num_samples=sc.num_samples, seed=sc.seed, batch_size=sc.batch_size,
                          conditions=class_ids, max_redraws=sc.max_redraws, progress=True, partial_path=partial,
                          partial_key=json.dumps(origin, sort_keys=True))
  settings = {"sampler": "masked_cached" if sc.get("cache", True) else "masked_ancestral",
              "num_steps": sc.num_steps, "top_p": sc.top_p, "guidance_scale": sc.guidance_scale,
              "mean_network_calls": float(np.mean(calls)) if calls else None, **origin}
  sample_runner.write_samples(records, workdir.samples_file, settings)
  partial.unlink(missing_ok=True)
  logging.info("Wrote %d samples to %s (%s network calls per batch for %d steps).", len(records),
               workdir.samples_file, settings["mean_network_calls"], sc.num_steps)
  return records


def likelihood_metrics(config, workdir: Workdir, data_dir) -> dict:
  """NELBO per token and the perplexity bound on the eval split (EMA params of the latest checkpoint)."""
  return {"likelihood": {"split": config.data.eval_split, **nelbo_on_eval_split(config, workdir, data_dir)}}


def nelbo_on_eval_split(config, workdir: Workdir, data_dir, step: int = -1) -> dict:
  """`MaskedDiffusion.evaluate_nelbo` of the eval split under the EMA params of the checkpoint of `step` (-1:
  the latest), with the run's seed: the same number for the same checkpoint every time."""
  method, tokenizer = build(config, workdir)
  params, _ = load_ema_params(config, workdir, method, step)
  seqs, labels = token_data(config, workdir, data_dir, config.data.eval_split, tokenizer)
  pad, max_len, bs = tokens.special_ids(tokenizer)["pad"], int(config.model.max_len), int(config.train.batch_size)
  batches = []
  for start in range(0, len(seqs), bs):
    chunk = seqs[start:start + bs]
    ids = np.full((len(chunk), max_len), pad, np.int32)
    for i, s in enumerate(chunk):
      ids[i, :len(s)] = s
    batch = {"input_ids": ids, "mask": ids != pad}
    if labels is not None:
      batch["label"] = labels[start:start + bs]
    batches.append(batch)
  result = method.evaluate_nelbo(params, batches, jax.random.PRNGKey(config.seed),
                                 num_repeats=int(config.eval.get("likelihood_repeats", 1)))
  logging.info("Likelihood on %s (checkpoint %s): %s", config.data.eval_split, "latest" if step < 0 else step,
               json.dumps(result))
  return result


def sample_done(config, workdir: Workdir, data_dir=None) -> bool:
  return provenance.samples_current(config, workdir.samples_file, workdir.checkpoint_dir)


def stages():
  # Training runs on one host: its token batches are not yet sliced per process (the Gaussian method's are).
  from ldlg.evaluation.stage import EVALUATE
  return (tokens.TOKENIZER, Stage("train", train, train_stage.train_done),
          Stage("sample", sample, sample_done), EVALUATE)
