"""The train and sample stages of Gaussian latent diffusion, on the engine's trainer and sample runner.

train   latents (BART codec's store) -> `<workdir>/checkpoints/` (state, EMA, data position, and what sampling
        needs: normalization stats, length histogram, latent and codec identity), metrics.jsonl, tb/
sample  checkpoint + codec -> `<workdir>/samples.jsonl`
"""

import json

from absl import logging
import jax
import ml_collections

from ldlg import codecs
from ldlg.codecs.bart import codec as bart_codec
from ldlg.codecs.bart import stages as bart_stages
from ldlg.engine import provenance
from ldlg.engine import sample_runner
from ldlg.engine import train_stage
from ldlg.engine import trainer
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir


def train_job(config: ml_collections.ConfigDict, workdir: Workdir, *, devices=None):
  """(TrainJob, TrainRun, store) of a run: the method, its latent batches and the checkpoint meta."""
  store = bart_codec.open_latent_store(config, workdir, config.data.train_split)
  bart_codec.check_latents_match_model(config, store)
  explicit_devices = devices
  devices = list(devices or jax.local_devices())
  num_global = len(devices) * jax.process_count()
  if config.train.batch_size % num_global:
    raise ValueError(
        f"config.train.batch_size={config.train.batch_size} is not divisible by the {num_global} devices; "
        f"use a multiple of {num_global}.")
  from ldlg import methods  # pylint: disable=import-outside-toplevel
  method = methods.get(config).from_config(config)
  sources = None
  if method.source_conditioned:  # Sequence-to-sequence LD4LG: each example's source encoding rides along.
    from ldlg.codecs.bart import sources as sources_lib  # pylint: disable=import-outside-toplevel
    sources = sources_lib.SourceLookup(workdir, config.data.train_split, store.stats_path)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  meta = {"config": config.to_dict(), "method": method.name, **bart_codec.sampling_meta(store)}

  def check_meta(saved: dict) -> None:
    if saved.get("latents") != meta["latents"]:
      raise ValueError(f"the checkpoint in {workdir.checkpoint_dir} was trained on other latents "
                       f"({saved.get('latents')}) than {store.path} ({meta['latents']}); use a new workdir")

  def batches(start_step: int):
    latents = store.batches(
        config.train.batch_size, num_local_devices=len(devices), seed=config.seed, start_step=start_step,
        length_bucketed=config.data.length_bucketed, group_by_length=int(config.data.get("group_by_length", 0)),
        process_index=jax.process_index(),
        process_count=jax.process_count())
    return latents if sources is None else sources.attach(latents)

  job = trainer.TrainJob(init_params=method.init_params, loss_fn=method.loss_fn, batches=batches,
                         optim=config.optim, init_rng=init_rng, rng=train_rng,
                         ema_decay=config.train.ema_decay, ema_warmup=config.train.ema_warmup,
                         ema_power=float(config.train.get("ema_power", 0.0)))
  is_primary = jax.process_index() == 0
  hooks = []
  if config.train.sample_every and is_primary:
    hooks.append((config.train.sample_every, _log_samples_hook(config, workdir, meta)))
  run = trainer.TrainRun(
      directory=workdir.root, num_steps=config.train.num_steps, log_every=config.train.log_every,
      ckpt_every=config.train.ckpt_every, keep_checkpoints=config.train.keep_checkpoints, meta=meta,
      check_meta=check_meta, divergence_factor=config.train.get("divergence_factor", 100.0),
      divergence_patience=config.train.get("divergence_patience", 0), hooks=hooks, desc="train",
      devices=explicit_devices, is_primary=is_primary)
  return job, run, store


def _log_samples_hook(config, workdir, meta):
  """Decodes a few samples from the EMA params into the logs every `sample_every` steps."""
  state = {}

  def hook(step, get_state):
    from ldlg.engine import metric_writer
    from ldlg.methods.gaussian.text_sampler import TextSampler
    if "sampler" not in state:  # Loads the autoencoder: only once samples are due.
      state["sampler"] = TextSampler.from_meta(config, workdir, meta)
    texts = state["sampler"].sample(get_state().ema_params, num_samples=config.train.num_log_samples, seed=step)
    joined = "\n".join(r["text"] for r in texts)
    writer = metric_writer.MetricWriter(workdir.metrics_file, workdir.tensorboard_dir)
    writer.write_texts(step, {"samples": joined})
    writer.close()
    logging.info("Samples at step %d:\n%s", step, joined)

  return hook


def train(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> trainer.TrainResult:
  """`--mode=train`: trains the denoiser to config.train.num_steps, resuming from the latest checkpoint."""
  del data_dir
  job, run, _ = train_job(config, workdir)
  return train_stage.train_to_end(job, run)


def sample(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> list[dict]:
  """`--mode=sample`: writes `<workdir>/samples.jsonl` (one JSON object per line, field `text`)."""
  del data_dir
  from ldlg.methods.gaussian.text_sampler import TextSampler
  sampler = TextSampler.from_workdir(config, workdir, step=config.sample.checkpoint_step)
  step = sampler.checkpoint_step
  params = sampler.load_params(step)
  class_id = None if config.sample.class_id < 0 else config.sample.class_id
  origin = provenance.sample_provenance(config, step)
  partial = workdir.root / "samples.partial.jsonl"
  records = sampler.sample(params, num_samples=config.sample.num_samples, seed=config.sample.seed,
                           class_id=class_id, progress=True, partial_path=partial,
                           partial_key=json.dumps(origin, sort_keys=True))
  settings = {"sampler": config.sample.sampler, "num_steps": config.sample.num_steps, "eta": config.sample.eta,
              "guidance_scale": config.sample.guidance_scale, "num_beams": config.autoencoder.num_beams, **origin}
  sample_runner.write_samples(records, workdir.samples_file, settings)
  partial.unlink(missing_ok=True)
  logging.info("Wrote %d samples to %s (%d empty decodes re-drawn).", len(records), workdir.samples_file,
               sampler.last_empty_count)
  return records


def likelihood_metrics(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> dict:
  """NLL of held-out latents under the model (EMA params): through the probability-flow ODE (Hutchinson trace
  estimate, adaptive diffrax solve) and the discrete-time variational bound, on the first
  `config.eval.likelihood_examples` latents of the eval split (0 = skip).

  Units: nats per latent dimension and per token (valid positions) of the *normalized* latents the model sees;
  the per-dimension NLL of the raw encoder latents is that plus log(std) (the scalar normalization), also
  reported. These are densities of continuous latents, not text likelihoods: not comparable with a token
  model's perplexity.
  """
  del data_dir
  import numpy as np
  from ldlg.methods.gaussian import likelihood
  from ldlg.methods.gaussian.text_sampler import TextSampler
  n = int(config.eval.get("likelihood_examples", 0))
  if n <= 0:
    return {}
  store = bart_codec.open_latent_store(config, workdir, config.data.eval_split)
  sampler = TextSampler.from_workdir(config, workdir)
  params = sampler.load_params()
  method = sampler.method
  n = min(n, store.num_examples)
  batch = store.gather(np.arange(n), pad_to=config.model.max_len)
  class_id = batch["label"] if method.num_classes > 0 and "label" in batch else None
  kw = dict(objective=config.diffusion.objective, self_condition=config.diffusion.self_condition_prob > 0)
  rng = jax.random.PRNGKey(config.seed)
  rtol, atol = (float(config.eval.get(f"likelihood_{k}", 1e-5)) for k in ("rtol", "atol"))
  ode = jax.jit(lambda p, r, x, m, c: likelihood.ode_nll(method.denoise_fn, method.schedule, p, r, x, m, c,
                                                         num_probes=int(config.eval.get("likelihood_probes", 1)),
                                                         rtol=rtol, atol=atol,
                                                         **kw))
  vlb = jax.jit(lambda p, r, x, m, c: likelihood.vlb_nll(method.denoise_fn, method.schedule, p, r, x, m, c,
                                                         num_terms=int(config.eval.get("vlb_terms", 50)), **kw))
  out_ode = jax.device_get(ode(params, rng, batch["latents"], batch["mask"], class_id))
  out_vlb = jax.device_get(vlb(params, rng, batch["latents"], batch["mask"], class_id))
  log_std = float(np.log(sampler.std))
  # A "token" is a latent position: a BART token, or one of the compressed latent's N vectors.
  token = "compressed latent vector" if codecs.uses_compression(config) else "BART token"
  result = {"split": config.data.eval_split, "num_examples": n, "units": "nats, normalized latents",
            "per_token_is": token,
            "ode_nll_per_dim": float(np.mean(out_ode["nll_per_dim"])),
            "ode_nll_per_token": float(np.mean(out_ode["nll_per_token"])),
            "ode_nll_per_dim_raw_latents": float(np.mean(out_ode["nll_per_dim"])) + log_std,
            "ode_mean_nfe": float(np.mean(out_ode["nfe"])),
            "ode_rtol": rtol, "ode_atol": atol,
            "vlb_per_dim": float(np.mean(out_vlb["vlb_per_dim"])),
            "vlb_per_token": float(np.mean(out_vlb["vlb_per_token"]))}
  logging.info("Latent likelihood: %s", result)
  return {"latent_likelihood": result}


def sample_done(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> bool:
  return provenance.samples_current(config, workdir.samples_file, workdir.checkpoint_dir)


def stages() -> tuple[Stage, ...]:
  """The stages of a Gaussian latent diffusion run, in order."""
  from ldlg.evaluation.stage import EVALUATE
  from ldlg.codecs.compression.stages import TRAIN_COMPRESSION  # A no-op unless config.codec = "bart_compressed".
  return (bart_stages.PRETRAIN, TRAIN_COMPRESSION, bart_stages.PRECOMPUTE, bart_stages.FINETUNE_DECODER,
          Stage("train", train, train_stage.train_done, single_host=False), Stage("sample", sample, sample_done),
          EVALUATE)
