"""Sampling text: a trained denoiser's EMA params → latents (DDIM/DDPM) → BART beam search → text.

`TextSampler` holds everything one needs (model, compiled sampler, normalization statistics, length
distribution, autoencoder); the Colab notebook and the training job's periodic samples use it the same way
as `--mode=sample`:

    sampler = TextSampler.from_workdir(config, workdir)
    params = sampler.load_params()                  # EMA params of the latest checkpoint
    records = sampler.sample(params, num_samples=8, seed=0)
"""

import dataclasses
import json
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ldlg.engine import checkpoints as checkpointing
from ldlg import from_config
from ldlg.engine.workdir import Workdir


@dataclasses.dataclass
class TextSampler:
  config: ml_collections.ConfigDict
  workdir: Workdir
  model: Any
  sample_fn: Any          # jit: (params, rng, mask [B, L], class_id [B] | None) -> x0 [B, L, D] (normalized)
  autoencoder: Any
  mean: np.ndarray        # [D] per-channel latent mean
  std: float              # one scalar std, as the reference code
  length_probs: np.ndarray  # [max_len + 1] empirical P(length); index = number of tokens

  @classmethod
  def from_workdir(cls, config: ml_collections.ConfigDict, workdir: Workdir, *, store=None) -> "TextSampler":
    store = store or from_config.open_latent_store(config, workdir, config.data.train_split)
    from_config.check_latents_match_model(config, store)
    model = from_config.build_denoiser(config)
    stats = from_config.latent_stats(store)
    hist = np.asarray(store.length_counts, np.float64)
    if hist.sum() <= 0:
      raise ValueError(f"the latent store {store.path} has an empty length histogram; re-run --mode=precompute")
    return cls(config=config, workdir=workdir, model=model,
               sample_fn=from_config.build_sampler(config, model),
               autoencoder=from_config.load_autoencoder(config, workdir),
               mean=np.asarray(stats["mean"], np.float32), std=float(stats["std"]),
               length_probs=hist / hist.sum())

  def load_params(self, step: int = -1):
    """EMA params of a checkpoint (latest when step < 0)."""
    abstract = from_config.init_denoiser_params(self.config, self.model, jax.random.PRNGKey(0), abstract=True)
    ckpt = checkpointing.Checkpointer(self.workdir.checkpoint_dir)
    try:
      saved, _ = ckpt.restore(_full_target(self.config, abstract), step)
    finally:
      ckpt.close()
    return saved["ema_params"]

  def _class_ids(self, n: int, class_id: int | None) -> np.ndarray | None:
    num_classes = self.config.model.num_classes
    if num_classes == 0:
      return None
    if class_id is None or class_id < 0:
      return (np.arange(n) % num_classes).astype(np.int32)  # Balanced over classes.
    if class_id > num_classes:
      raise ValueError(f"class_id={class_id} out of range: the model has {num_classes} classes "
                       f"(0..{num_classes - 1}, {num_classes} = unconditional)")
    return np.full((n,), class_id, np.int32)

  def sample(self, params, *, num_samples: int, seed: int, class_id: int | None = None,
             batch_size: int | None = None, progress: bool = False) -> list[dict]:
    """Draws `num_samples` texts; empty decodes are counted and re-drawn (as the paper does).

    Same params, seed and settings give the same texts. Returns records with text, length, class_id,
    round (0 = first draw) and index.
    """
    cfg = self.config
    batch_size = batch_size or cfg.sample.batch_size
    max_len = cfg.model.max_len
    rng_np = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    class_ids_all = self._class_ids(num_samples, class_id)
    todo = list(range(num_samples))
    results: dict[int, dict] = {}
    empties = 0
    for round_ in range(cfg.sample.max_redraws + 1):
      if not todo:
        break
      bar = tqdm.tqdm(total=len(todo), desc=f"sample (round {round_})", disable=not progress)
      for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        n = len(idx)
        lengths = rng_np.choice(len(self.length_probs), size=batch_size, p=self.length_probs)
        lengths = np.clip(lengths, 1, max_len)
        mask = np.arange(max_len)[None, :] < lengths[:, None]
        cls = None
        if class_ids_all is not None:
          cls = np.zeros((batch_size,), np.int32)
          cls[:n] = class_ids_all[idx]
        batch_key = jax.random.fold_in(jax.random.fold_in(key, round_), start)
        x0 = self.sample_fn(params, batch_key, jnp.asarray(mask), None if cls is None else jnp.asarray(cls))
        latents = np.asarray(x0, np.float32) * self.std + self.mean  # Un-normalize before decoding.
        texts = self.autoencoder.decode(
            latents, mask, num_beams=cfg.autoencoder.num_beams,
            max_length=cfg.autoencoder.max_decode_length, min_length=cfg.autoencoder.min_decode_length,
            no_repeat_ngram_size=cfg.autoencoder.no_repeat_ngram_size,
            repetition_penalty=cfg.autoencoder.repetition_penalty,
            length_penalty=cfg.autoencoder.length_penalty)
        for j, i in enumerate(idx):
          text = texts[j].strip()
          if not text:
            empties += 1
            continue
          results[i] = {"index": i, "text": text, "length": int(lengths[j]), "round": round_,
                        **({"class_id": int(cls[j])} if cls is not None else {})}
        bar.update(n)
      bar.close()
      todo = [i for i in todo if i not in results]
    if todo:
      logging.warning("%d of %d samples were still empty after %d re-draws; they are written as empty text.",
                      len(todo), num_samples, cfg.sample.max_redraws)
      for i in todo:
        results[i] = {"index": i, "text": "", "length": 0, "round": cfg.sample.max_redraws}
    if empties:
      logging.info("%d empty decodes were re-drawn.", empties)
    self.last_empty_count = empties
    return [results[i] for i in range(num_samples)]


def _full_target(config, abstract_params):
  """The abstract saved state (optimizer state included) to restore a checkpoint into."""
  from ldlg.engine import train_state as train_state_lib
  tx = train_state_lib.make_optimizer(config.optim, config.train.num_steps)
  opt_state = jax.eval_shape(tx.init, abstract_params)
  return {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
          "ema_params": abstract_params, "opt_state": opt_state}


def sample_to_file(config: ml_collections.ConfigDict, workdir: Workdir) -> list[dict]:
  """`--mode=sample`: writes `<workdir>/samples.jsonl` (one JSON object per line, field `text`)."""
  sampler = TextSampler.from_workdir(config, workdir)
  params = sampler.load_params(config.sample.checkpoint_step)
  class_id = None if config.sample.class_id < 0 else config.sample.class_id
  records = sampler.sample(params, num_samples=config.sample.num_samples, seed=config.sample.seed,
                           class_id=class_id, progress=True)
  settings = {"seed": config.sample.seed, "sampler": config.sample.sampler,
              "num_steps": config.sample.num_steps, "eta": config.sample.eta,
              "guidance_scale": config.sample.guidance_scale, "num_beams": config.autoencoder.num_beams}
  tmp = workdir.samples_file.with_suffix(".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps({**record, **settings}, ensure_ascii=False) + "\n")
  tmp.rename(workdir.samples_file)
  logging.info("Wrote %d samples to %s (%d empty decodes re-drawn).", len(records), workdir.samples_file,
               sampler.last_empty_count)
  return records
