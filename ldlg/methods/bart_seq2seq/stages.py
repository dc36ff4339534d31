"""The pipeline stages of the BART seq2seq baseline (E2E: meaning representation -> text).

  pretrain_autoencoder  <workdir>/autoencoder/: the project's small BART pretrained on the corpus (the LD4LG
                        stage, skipped with config.autoencoder.pretrain=False and a BART named instead)
  train                 <workdir>/checkpoints/, metrics.jsonl: fine-tuning on (source, target) pairs (the engine's
                        trainer; no EMA)
  sample                <workdir>/samples.jsonl: one beam-search output (candidate 0) for each of the first
                        `config.sample.num_sources` distinct eval sources, the same records as DiffuSeq's
  evaluate              <workdir>/metrics.json: the seq2seq table (`ldlg.evaluation.seq2seq_stage`; "first" only)

Sources are cut to `config.data.max_source_length` BART tokens, targets to `config.data.max_length` (<s> and </s>
included); decoding uses `config.autoencoder`'s decode settings (`codec.decode_settings`), as LD4LG does.
"""
from __future__ import annotations

import itertools
import json

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ldlg.codecs.bart import codec as bart_codec
from ldlg.codecs.bart import stages as bart_stages
from ldlg.data.batching import pad_rows, pad_width, teacher_forcing_batch
from ldlg.data.splits import load_texts
from ldlg.data.step_batches import batch_indices
from ldlg.engine import parallel
from ldlg.engine import provenance
from ldlg.engine import sample_runner
from ldlg.engine import train_stage
from ldlg.engine import trainer
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir
from ldlg.methods.bart_seq2seq.method import BartSeq2Seq

PAD_MULTIPLE = 16  # Batches are padded to a multiple of this: few compiled shapes.


def token_ids(tokenizer, texts, max_length: int) -> tuple[list[np.ndarray], int]:
  """`<s> text </s>` ids per text, cut to max_length; with the number cut."""
  ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if len(texts) else []
  cut = sum(len(x) > max_length for x in ids)
  # A cut sequence keeps its </s>: the decoder must still learn where a text ends.
  return [np.asarray(x if len(x) <= max_length else x[:max_length - 1] + x[-1:], np.int32) for x in ids], cut


def pair_batch(sources, targets, step: int, *, batch_size: int, seed: int, pad_id: int, start_id: int,
               max_source_length: int, max_length: int) -> dict[str, np.ndarray]:
  """Step `step`'s batch (the project's one index rule): the source as encoder input, the target as labels and,
  shifted right behind BART's decoder start token, as decoder input. All [B, W] int32, W padded to 16s."""
  idx = batch_indices(step, len(sources), batch_size, seed)
  src, tgt = [sources[i] for i in idx], [targets[i] for i in idx]
  input_ids = pad_rows(src, pad_width(max(map(len, src)), PAD_MULTIPLE, max_source_length), pad_id)
  labels = pad_rows(tgt, pad_width(max(map(len, tgt)), PAD_MULTIPLE, max_length), pad_id)
  return teacher_forcing_batch(input_ids, labels, pad_id=pad_id, start_id=start_id)


def _check_pairs(config, records, split):
  if records and "source" not in records[0]:
    raise ValueError(f"dataset {config.data.name!r} has no source field: the seq2seq baseline needs (source, "
                     "target) pairs (E2E, QQP)")
  if not records:
    raise ValueError(f"the {split} split of {config.data.name} is empty")


def train(config: ml_collections.ConfigDict, workdir: Workdir, data_dir) -> trainer.TrainResult:
  autoencoder = bart_codec.load_autoencoder(config, workdir)
  devices = jax.local_devices()
  method = BartSeq2Seq(autoencoder, len(devices))
  tokenizer = autoencoder.tokenizer
  records = load_texts(config, data_dir, workdir, config.data.train_split)
  _check_pairs(config, records, config.data.train_split)
  records = [r for r in records if r["source"].strip() and r["text"].strip()]
  sources, src_cut = token_ids(tokenizer, [r["source"] for r in records], int(config.data.max_source_length))
  targets, tgt_cut = token_ids(tokenizer, [r["text"] for r in records], int(config.data.max_length))
  if src_cut or tgt_cut:
    logging.info("%d of %d sources cut to %d tokens, %d targets to %d.", src_cut, len(records),
                 config.data.max_source_length, tgt_cut, config.data.max_length)
  start_id = autoencoder.decode_options().decoder_start_token_id

  def batches(start_step):
    for step in itertools.count(start_step):
      batch = pair_batch(sources, targets, step, batch_size=config.train.batch_size, seed=config.seed,
                         pad_id=tokenizer.pad_token_id, start_id=start_id,
                         max_source_length=int(config.data.max_source_length),
                         max_length=int(config.data.max_length))
      yield parallel.shard_batch(batch, len(devices))

  key = jax.random.PRNGKey(config.seed)
  job = trainer.TrainJob(init_params=method.init_params, loss_fn=method.loss_fn, batches=batches,
                         optim=config.optim, init_rng=key, rng=key, ema_decay=None)
  meta = {"config": config.to_dict(), "method": "bart_seq2seq", "autoencoder": autoencoder.name}
  run = trainer.TrainRun(directory=workdir.root, num_steps=config.train.num_steps, log_every=config.train.log_every,
                         ckpt_every=config.train.ckpt_every, keep_checkpoints=config.train.keep_checkpoints,
                         meta=meta, desc="train (bart seq2seq)", devices=devices)
  return train_stage.train_to_end(job, run, what="fine-tuning")


def load_finetuned(config, workdir: Workdir, step: int = -1):
  """(an Autoencoder with the fine-tuned params that encodes up to `data.max_source_length` source tokens,
  checkpoint meta)."""
  from ldlg.codecs.bart.autoencoder import Autoencoder  # pylint: disable=import-outside-toplevel
  pretrained = bart_codec.load_autoencoder(config, workdir)
  saved, meta = train_stage.restore_train_state(config, workdir, pretrained.params, step, ema=False)
  finetuned = Autoencoder(pretrained.model, pretrained.tokenizer, params=saved["params"],
                          max_length=int(config.data.max_source_length), name=f"{pretrained.name} (fine-tuned)")
  return finetuned, meta


def sample(config: ml_collections.ConfigDict, workdir: Workdir, data_dir) -> list[dict]:
  """One beam-search output per eval source, through the engine's sample runner (sharded over the local devices,
  progress kept in `samples.partial.jsonl` so an interrupted run resumes after its last batch)."""
  from ldlg.codecs.bart import beam_search  # pylint: disable=import-outside-toplevel
  from ldlg.methods.seq2seq.stages import eval_sources  # pylint: disable=import-outside-toplevel
  autoencoder, meta = load_finetuned(config, workdir, config.sample.checkpoint_step)
  sources = [s for s, _ in eval_sources(config, workdir, data_dir)]
  tokenizer = autoencoder.tokenizer
  max_source = int(config.data.max_source_length)
  source_ids, num_cut = token_ids(tokenizer, sources, max_source)
  if num_cut:
    logging.info("%d of %d eval sources cut to %d tokens.", num_cut, len(sources), max_source)
  # Every batch at the full source width: one compiled program (the encoder masks the padding).
  padded = pad_rows(source_ids, max_source, tokenizer.pad_token_id)
  decode = bart_codec.decode_settings(config.autoencoder)
  opts = autoencoder.decode_options(**decode)
  model, spec = autoencoder.model, autoencoder.spec

  def device_fn(params, rng, inputs, example_offset, global_batch):
    del rng, example_offset, global_batch  # Beam search draws nothing.
    ids = inputs["input_ids"]
    mask = ids != tokenizer.pad_token_id
    encoded = model.encode(ids, mask.astype(jnp.int32), params=params).last_hidden_state
    encoded = jnp.where(mask[..., None], encoded, 0.0).astype(jnp.float32)  # As `Autoencoder.encode`.
    sequences, _ = beam_search.bart_generate(params, spec, encoded, mask, opts)
    return {"sequences": sequences}

  def make_inputs(rng_np, batch_size, sample_index):
    del rng_np
    return {"input_ids": padded[sample_index]}, [{}] * batch_size

  def decode_texts(outputs, inputs):
    del inputs
    return [t.strip() for t in tokenizer.batch_decode(outputs["sequences"].tolist(), skip_special_tokens=True,
                                                      clean_up_tokenization_spaces=False)]

  runner = sample_runner.SampleRunner(device_fn, make_inputs, decode_texts)
  origin = provenance.sample_provenance(config, meta.get("data_position"))
  settings = {"sampler": "beam_search", **decode, "num_candidates": 1}
  partial = workdir.root / "samples.partial.jsonl"
  # No re-draws: beam search is deterministic, and an empty output is the model's answer for that source.
  records = runner.sample(autoencoder.params, num_samples=len(sources), seed=config.sample.seed,
                          batch_size=int(config.sample.batch_size), conditions=np.arange(len(sources), dtype=np.int32),
                          max_redraws=0, progress=True, partial_path=partial,
                          partial_key=json.dumps({**settings, **origin}, sort_keys=True))
  for record in records:
    record.update(source_index=record["index"], candidate=0, source=sources[record["index"]])
  seconds_per_source = runner.seconds_per_row()  # One output per source.
  sample_runner.write_samples(records, workdir.samples_file,
                              {**settings, "seconds_per_source": seconds_per_source, **origin})
  partial.unlink(missing_ok=True)
  logging.info("Wrote %d outputs to %s (%.3g s per source).", len(records), workdir.samples_file,
               seconds_per_source or float("nan"))
  return records


def sample_done(config, workdir: Workdir, data_dir=None) -> bool:
  return provenance.samples_current(config, workdir.samples_file, workdir.checkpoint_dir)


def stages():
  from ldlg.evaluation.seq2seq_stage import EVALUATE_SEQ2SEQ  # pylint: disable=import-outside-toplevel
  return (bart_stages.PRETRAIN, Stage("train", train, train_stage.train_done), Stage("sample", sample, sample_done),
          EVALUATE_SEQ2SEQ)
