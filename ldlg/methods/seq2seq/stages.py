"""The pipeline stages of DiffuSeq on a seq2seq dataset (E2E: meaning representation -> text), on the engine.

  tokenizer  <workdir>/tokenizer/: the project's byte-level BPE, trained on the train split's targets and, with
             `config.tokenizer.include_source`, its sources too (E2E's slot names and separators)
  train      <workdir>/checkpoints/, metrics.jsonl, tb/ (the engine's trainer). With
             `config.diffusion.importance_sampling` the loss-aware sampler of t keeps its loss history in the
             train state (`TrainState.method_state`): checkpointed, restored, and the same on every device
  sample     <workdir>/samples.jsonl: `config.sample.num_candidates` candidates for each of the first
             `config.sample.num_sources` distinct sources of the eval split (E2E validation: 547), one record
             per candidate {"source_index", "candidate", "source", "text", ...}; sample index
             i = source_index * num_candidates + candidate, so candidate k of every source shares a seed stream
  evaluate   <workdir>/metrics.json: the seq2seq table (`ldlg.evaluation.seq2seq_stage`)

Sequences are `[<s> source </s> ; target </s> ; <pad> ...]` of fixed length `config.model.max_len`
(`framing.py`); the source is clean at every step of training and sampling, the target and its padding are
generated.
"""
from __future__ import annotations

import json

from absl import logging
import jax
import ml_collections
import numpy as np

from ldlg.codecs import tokens
from ldlg.data.seq2seq import group_references
from ldlg.data.splits import load_texts
from ldlg.engine import provenance
from ldlg.engine import sample_runner
from ldlg.engine import train_stage
from ldlg.engine import trainer
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir
from ldlg.methods.seq2seq import framing
from ldlg.methods.seq2seq import rounding
from ldlg.methods.seq2seq.method import DIFFUSION_DEFAULTS, DiffuSeq


def build(config: ml_collections.ConfigDict, workdir: Workdir) -> tuple[DiffuSeq, object, dict[str, int]]:
  """(method, tokenizer, special ids) of a run; the network's vocabulary is the tokenizer's."""
  tokenizer = tokens.load_tokenizer(config, workdir)
  ids = tokens.special_ids(tokenizer)
  method = DiffuSeq.from_config(config, pad_id=ids["pad"], end_id=ids["eos"], vocab_size=len(tokenizer))
  return method, tokenizer, ids


def _lengths(config) -> dict[str, int]:
  return {"max_len": int(config.model.max_len), "max_source_len": int(config.data.max_source_length)}


def pair_data(config, workdir: Workdir, data_dir, split: str, tokenizer, ids) -> framing.FramedPairs:
  """A split's (source, text) pairs, framed; what was dropped or cut is logged."""
  records = load_texts(config, data_dir, workdir, split)
  if records and "source" not in records[0]:
    raise ValueError(f"dataset {config.data.name!r} has no source field: DiffuSeq needs (source, target) pairs "
                     "(E2E, QQP); use a seq2seq dataset")
  pairs = framing.frame_pairs([r["source"] for r in records], [r["text"] for r in records], tokenizer, ids,
                              **_lengths(config))
  stats = pairs.stats
  if stats["num_dropped"] or stats["num_source_cut"] or stats["num_target_cut"]:
    logging.info("%s pairs: %d with an empty side dropped, %d sources cut to %d tokens, %d targets cut to fit %d.",
                 split, stats["num_dropped"], stats["num_source_cut"], config.data.max_source_length,
                 stats["num_target_cut"], config.model.max_len)
  if not len(pairs):
    raise ValueError(f"no usable (source, text) pairs in the {split} split of {config.data.name}")
  return pairs


def uses_importance_sampling(config) -> bool:
  return bool(config.diffusion.get("importance_sampling", DIFFUSION_DEFAULTS["importance_sampling"]))


def train(config: ml_collections.ConfigDict, workdir: Workdir, data_dir) -> trainer.TrainResult:
  method, tokenizer, ids = build(config, workdir)
  pairs = pair_data(config, workdir, data_dir, config.data.train_split, tokenizer, ids)
  devices = jax.local_devices()
  max_len = int(config.model.max_len)

  def batches(start_step):
    step = start_step
    while True:
      yield framing.train_batch(pairs, step, batch_size=config.train.batch_size, num_devices=len(devices),
                                max_len=max_len, pad_id=ids["pad"], seed=config.seed)
      step += 1

  importance = uses_importance_sampling(config)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  job = trainer.TrainJob(init_params=method.init_params,
                         loss_fn=method.importance_loss_fn if importance else method.loss_fn,
                         init_method_state=method.init_importance_state if importance else None,
                         batches=batches, optim=config.optim, init_rng=init_rng, rng=train_rng,
                         ema_decay=config.train.ema_decay, ema_warmup=config.train.ema_warmup)
  meta = {"config": config.to_dict(), "method": "diffuseq",
          "codec": tokens.TokenCodec(tokenizer, max_len).identity()}
  run = trainer.TrainRun(directory=workdir.root, num_steps=config.train.num_steps, log_every=config.train.log_every,
                         ckpt_every=config.train.ckpt_every, keep_checkpoints=config.train.keep_checkpoints,
                         meta=meta, desc="train (diffuseq)", devices=devices)
  return train_stage.train_to_end(job, run)


def load_ema_params(config, workdir: Workdir, method: DiffuSeq, step: int = -1):
  """(EMA params, checkpoint meta) of a checkpoint (the latest with step -1)."""
  method_state = method.init_importance_state() if uses_importance_sampling(config) else None
  saved, meta = train_stage.restore_train_state(config, workdir, method.init_params(jax.random.PRNGKey(0)), step,
                                                method_state=method_state)
  return saved["ema_params"], meta


def eval_sources(config, workdir: Workdir, data_dir) -> list[tuple[str, list[str]]]:
  """The first `config.sample.num_sources` distinct sources of the eval split with their references (0 = all)."""
  groups = group_references(load_texts(config, data_dir, workdir, config.data.eval_split))
  limit = int(config.sample.num_sources)
  return groups[:limit] if limit > 0 else groups


def sample(config: ml_collections.ConfigDict, workdir: Workdir, data_dir) -> list[dict]:
  method, tokenizer, ids = build(config, workdir)
  sc = config.sample
  params, meta = load_ema_params(config, workdir, method, sc.checkpoint_step)
  sources = [s for s, _ in eval_sources(config, workdir, data_dir)]
  framed = framing.frame_pairs(sources, None, tokenizer, ids, **_lengths(config))
  if len(framed) != len(sources):
    raise ValueError(f"{len(sources) - len(framed)} eval sources encode to no tokens; check the eval split")
  num_candidates = int(sc.num_candidates)
  sample_fn = method.make_sampler(num_steps=int(sc.num_steps), eta=float(sc.eta), clamp=bool(sc.clamp),
                                  rounding=sc.rounding)
  max_len = int(config.model.max_len)

  def device_fn(params, rng, inputs, example_offset, global_batch):
    out = sample_fn(params, rng, inputs["input_ids"], inputs["source_mask"], example_offset=example_offset,
                    global_batch=global_batch)
    return {"tokens": out["tokens"], "lengths": out["lengths"]}

  def make_inputs(rng_np, batch_size, sample_index):
    del rng_np
    batch = framing.pack(framed, sample_index // num_candidates, max_len=max_len, pad_id=ids["pad"])
    return {"input_ids": batch["input_ids"], "source_mask": batch["source_mask"]}, [{}] * batch_size

  def decode(outputs, inputs):
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rounding.target_token_lists(
        outputs["tokens"], inputs["source_mask"], outputs["lengths"])]

  runner = sample_runner.SampleRunner(device_fn, make_inputs, decode)
  settings = {"sampler": "diffuseq", "num_steps": sc.num_steps, "eta": sc.eta, "clamp": sc.clamp,
              "rounding": sc.rounding}
  return sample_candidates(runner, params, config, workdir, sources, settings, meta.get("data_position"))


def sample_candidates(runner: sample_runner.SampleRunner, params, config, workdir: Workdir, sources: list[str],
                      settings: dict, checkpoint_step, order=None) -> list[dict]:
  """Draws `config.sample.num_candidates` candidates per source with `runner` (whose make_inputs reads the source
  of sample i as i // num_candidates) and writes them as seq2seq records (the module docstring's layout), with
  `settings`, the sampler's seconds per source (all its candidates) and the provenance. Resumable through
  `samples.partial.jsonl`. `order`: the order samples are batched in (a permutation; `SampleRunner.sample`).
  Shared by the seq2seq diffusion methods (DiffuSeq, LD4LG seq2seq)."""
  sc = config.sample
  num_candidates = int(sc.num_candidates)
  num_samples = len(sources) * num_candidates
  origin = provenance.sample_provenance(config, checkpoint_step)
  partial = workdir.root / "samples.partial.jsonl"
  # No re-draws: an empty output is the model's answer for that source and is scored as such.
  records = runner.sample(params, num_samples=num_samples, seed=sc.seed, batch_size=sc.batch_size,
                          conditions=np.arange(num_samples, dtype=np.int32), order=order, max_redraws=0, progress=True,
                          partial_path=partial, partial_key=json.dumps(origin, sort_keys=True))
  for record in records:
    source_index, candidate = divmod(record["index"], num_candidates)
    record.update(source_index=source_index, candidate=candidate, source=sources[source_index])
  # The sampler's own time per source (the network's steps and the decoding, not detokenizing): all its candidates.
  per_row = runner.seconds_per_row()
  seconds_per_source = per_row * num_candidates if per_row is not None else None
  sample_runner.write_samples(records, workdir.samples_file, {**settings, "num_candidates": num_candidates,
                                                             "seconds_per_source": seconds_per_source, **origin})
  partial.unlink(missing_ok=True)
  logging.info("Wrote %d candidates for %d sources to %s (%.3g s per source with %d candidates).", len(records),
               len(sources), workdir.samples_file, seconds_per_source or float("nan"), num_candidates)
  return records


def sample_done(config, workdir: Workdir, data_dir=None) -> bool:
  return provenance.samples_current(config, workdir.samples_file, workdir.checkpoint_dir)


def stages():
  # Training runs on one host: its pair batches are not yet sliced per process (the Gaussian method's are).
  from ldlg.evaluation.seq2seq_stage import EVALUATE_SEQ2SEQ
  return (tokens.TOKENIZER, Stage("train", train, train_stage.train_done), Stage("sample", sample, sample_done),
          EVALUATE_SEQ2SEQ)
