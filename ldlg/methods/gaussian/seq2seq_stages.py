"""The pipeline stages of sequence-to-sequence LD4LG on a seq2seq dataset (E2E: meaning representation -> text).

  pretrain_autoencoder  <workdir>/autoencoder/ (the LD4LG stage: the project's small BART offline)
  precompute            <workdir>/latents/<split>/ (the targets' latents, as LD4LG) and <workdir>/sources/train/
                        (the distinct training sources' encoder states; `ldlg/codecs/bart/sources.py`)
  train                 the Gaussian method's train stage; its batches carry each example's source encoding
  sample                <workdir>/samples.jsonl: `config.sample.num_candidates` candidates for each of the first
                        `config.sample.num_sources` distinct eval sources, one record per candidate
                        {"source_index", "candidate", "source", "text", "length", ...}, sample index
                        i = source_index * num_candidates + candidate (DiffuSeq's layout); the eval sources are
                        encoded here, exactly as the stored ones (`sources.encode_sources`)
  evaluate              <workdir>/metrics.json: the seq2seq table (`ldlg.evaluation.seq2seq_stage`), first candidate
                        and MBR choice

Each candidate's length is drawn given its source (`config.sample.length_from = "source"`, the variant's choice):
from the training pairs' target lengths at the same source length (`ldlg.data.conditional_lengths`), or, with
"histogram", from all training targets' lengths as unconditional LD4LG does. Guidance contrasts the source with the
null source.
"""
from __future__ import annotations


from absl import logging
import ml_collections
import numpy as np

from ldlg.codecs.bart import codec as bart_codec
from ldlg.codecs.bart import sources as sources_lib
from ldlg.codecs.bart import stages as bart_stages
from ldlg.data.conditional_lengths import SourceLengthModel
from ldlg.engine import sample_runner
from ldlg.engine import signals
from ldlg.engine import train_stage
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir
from ldlg.methods.gaussian import stages as gaussian_stages


def precompute(config: ml_collections.ConfigDict, workdir: Workdir, data_dir) -> None:
  """The targets' latents (both splits, as LD4LG), then the training split's distinct sources."""
  if not bart_stages.precompute_done(config, workdir, data_dir):
    bart_stages.precompute(config, workdir, data_dir)
  split = config.data.train_split
  store = bart_codec.open_latent_store(config, workdir, split)
  autoencoder = bart_codec.load_autoencoder(config, workdir)
  with signals.RaiseOnSignal("the source precompute"):
    rows = sources_lib.precompute_sources(autoencoder, store, workdir, split, dtype=config.data.latent_dtype,
                                          shard_size=config.data.shard_size,
                                          batch_size=config.data.encode_batch_size)
  logging.info("Sources for %s: %d distinct for %d examples, up to %d positions.", split, rows["num_sources"],
               len(rows["example_rows"]), rows["max_length"])


def precompute_done(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> bool:
  return (bart_stages.precompute_done(config, workdir, data_dir)
          and sources_lib.sources_done(workdir, config.data.train_split))


LENGTH_SOURCES = ("source", "histogram")  # config.sample.length_from (checked by ldlg.config_validation)


def length_model(config: ml_collections.ConfigDict, workdir: Workdir) -> SourceLengthModel | None:
  """P(target length | source length) fitted on the train split's stored lengths, or None when
  `config.sample.length_from` is "histogram" (the checkpoint's marginal length histogram is used)."""
  length_from = config.sample.get("length_from", "histogram")
  if length_from not in LENGTH_SOURCES:
    raise ValueError(f"config.sample.length_from must be one of {LENGTH_SOURCES}, got {length_from!r}")
  if length_from == "histogram":
    return None
  split = config.data.train_split
  lookup = sources_lib.SourceLookup(workdir, split, stats_path=None)
  targets = bart_codec.open_latent_store(config, workdir, split)
  model = SourceLengthModel(lookup.example_lengths, targets.lengths, max_length=int(config.model.max_len),
                            min_count=int(config.sample.get("length_min_count", 100)))
  logging.info("Lengths drawn given the source: %d source lengths, pooled over windows up to +-%d.",
               model.longest_source + 1, int(model.window.max()))
  return model


def sample(config: ml_collections.ConfigDict, workdir: Workdir, data_dir) -> list[dict]:
  """`num_candidates` candidates per eval source, through the engine's sample runner (sharded over the local
  devices; progress kept in `samples.partial.jsonl`, so an interrupted run resumes after its last batch).

  With `config.sample.length_bucket` > 0 (as `TextSampler.sample`), every candidate's length is drawn first (given
  its source, or from the histogram) from its own stream, batches are filled shortest first and each runs at its
  length bucket; a candidate then samples what it would at the full width.
  """
  from ldlg.methods.gaussian.text_sampler import TextSampler  # pylint: disable=import-outside-toplevel
  from ldlg.methods.seq2seq.stages import eval_sources, sample_candidates  # pylint: disable=import-outside-toplevel
  sc = config.sample
  sampler = TextSampler.from_workdir(config, workdir, step=sc.checkpoint_step)
  params = sampler.load_params(sampler.checkpoint_step)
  sources = [s for s, _ in eval_sources(config, workdir, data_dir)]
  encoded = sources_lib.encode_sources(sampler.codec.autoencoder, sources, mean=sampler.mean, std=sampler.std,
                                       dtype=config.data.latent_dtype)
  num_candidates = int(sc.num_candidates)
  lengths = length_model(config, workdir)
  source_lengths = encoded["source_mask"].sum(axis=-1)
  sample_fn = sampler.method.make_sampler(sc)
  bucket = sampler.length_bucket
  planned = order = None
  if bucket:
    num_samples = len(sources) * num_candidates
    given_source = None if lengths is None else (
        lambda rng: lengths.sample(rng, source_lengths[np.arange(num_samples) // num_candidates]))
    planned = sampler.plan_lengths(int(sc.seed), num_samples, draw=given_source)
    order = np.argsort(planned, kind="stable")

  def device_fn(params, rng, inputs, example_offset, global_batch):
    cond = {"source": inputs["source"], "source_mask": inputs["source_mask"]}
    return sample_fn(params, rng, inputs["mask"], cond, example_offset=example_offset, global_batch=global_batch)

  def make_inputs(rng_np, batch_size, sample_index):
    source_index = sample_index // num_candidates
    if planned is not None:
      inputs, fields = sampler.inputs_for_lengths(planned[sample_index], bucket=bucket)
    elif lengths is None:
      inputs, fields = sampler.make_inputs(rng_np, batch_size, None)  # Lengths from the training histogram.
    else:
      inputs, fields = sampler.inputs_for_lengths(lengths.sample(rng_np, source_lengths[source_index]))
    inputs.update(source=encoded["source"][source_index], source_mask=encoded["source_mask"][source_index])
    return inputs, fields

  runner = sample_runner.SampleRunner(device_fn, make_inputs, sampler.decode_latents)
  settings = {"sampler": sc.sampler, "num_steps": sc.num_steps, "eta": sc.eta, "guidance_scale": sc.guidance_scale,
              "num_beams": config.autoencoder.num_beams, "length_from": sc.get("length_from", "histogram"),
              "length_bucket": bucket}
  return sample_candidates(runner, params, config, workdir, sources, settings, sampler.checkpoint_step, order=order)


PRECOMPUTE = Stage("precompute", precompute, precompute_done)


def stages() -> tuple[Stage, ...]:
  from ldlg.evaluation.seq2seq_stage import EVALUATE_SEQ2SEQ  # pylint: disable=import-outside-toplevel
  return (bart_stages.PRETRAIN, PRECOMPUTE,
          Stage("train", gaussian_stages.train, train_stage.train_done, single_host=False),
          Stage("sample", sample, gaussian_stages.sample_done), EVALUATE_SEQ2SEQ)
