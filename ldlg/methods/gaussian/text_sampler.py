"""Sampling text from a Gaussian latent diffusion run: EMA params -> latents (the sampler) -> BART decoding -> text.

`TextSampler` needs only a checkpoint and the codec: the checkpoint carries the normalization statistics and the
length histogram (see `codecs.bart.codec.sampling_meta`). The Colab notebook, the training job's periodic samples
and `--mode=sample` use it the same way:

    sampler = TextSampler.from_workdir(config, workdir)
    params = sampler.load_params()                  # EMA params of the latest checkpoint
    records = sampler.sample(params, num_samples=8, seed=0)

Sampling runs through the engine's `SampleRunner`, sharded over the local devices; the result does not depend
on how many devices there are.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ldlg import codecs
from ldlg.data import batching
from ldlg.engine import checkpoints
from ldlg.engine import sample_runner
from ldlg.engine.workdir import Workdir
from ldlg.methods.gaussian import samplers
from ldlg.methods.gaussian.method import GaussianDiffusion


# The host generator stream of a length-grouped sample's lengths: default_rng([seed, _LENGTH_STREAM]), apart from
# the runner's own default_rng(seed).
_LENGTH_STREAM = 1


def full_target(config: ml_collections.ConfigDict, abstract_params: Any) -> dict:
  """The abstract saved train state (optimizer state included) to restore a checkpoint into."""
  from ldlg.engine import train_state as train_state_lib
  tx = train_state_lib.make_optimizer(config.optim, config.train.num_steps)
  opt_state = jax.eval_shape(tx.init, abstract_params)
  return {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
          "ema_params": abstract_params, "opt_state": opt_state}


def read_sampling_meta(workdir: Workdir, step: int = -1) -> dict:
  """The checkpoint's meta (stats, length_counts, latents, codec, config); raises naming the stage to run."""
  if not workdir.checkpoint_dir.exists():
    raise FileNotFoundError(f"no checkpoint in {workdir.checkpoint_dir}: the train stage has not run in this "
                            "workdir. Run --mode=train (or --mode=pipeline) first.")
  ckpt = checkpoints.Checkpointer(workdir.checkpoint_dir)
  try:
    return ckpt.restore_meta(step)
  finally:
    ckpt.close()


@dataclasses.dataclass
class TextSampler:
  """Everything one needs to sample text from a trained Gaussian latent diffusion model.

  Attributes:
    config: the run's config.
    workdir: the run's workdir (checkpoints).
    method: the `GaussianDiffusion` (network, schedule, samplers).
    codec: the run's latent codec (`ldlg.codecs.build`; decoding with the run's settings).
    mean: [D] per-channel latent mean; std: one scalar std (as the reference code).
    length_probs: [max_len + 1] empirical P(length); index = number of tokens.
  """
  config: ml_collections.ConfigDict
  workdir: Workdir
  method: GaussianDiffusion
  codec: Any
  mean: np.ndarray
  std: float
  length_probs: np.ndarray

  @classmethod
  def from_meta(cls, config: ml_collections.ConfigDict, workdir: Workdir, meta: dict, *,
                codec=None) -> "TextSampler":
    """From a checkpoint's meta (or the same dict built from a latent store before the first checkpoint)."""
    hist = np.asarray(meta["length_counts"], np.float64)
    if hist.sum() <= 0:
      raise ValueError("the checkpoint's length histogram is empty; re-run --mode=precompute and --mode=train")
    method = GaussianDiffusion.from_config(config)
    codec = codec or codecs.build(config, workdir)
    if codec.latent_dim != config.model.latent_dim:
      raise ValueError(f"the autoencoder {codec.autoencoder.name} has latent width {codec.latent_dim}, the model "
                       f"expects {config.model.latent_dim}: the checkpoint was trained with another codec")
    return cls(config=config, workdir=workdir, method=method, codec=codec,
               mean=np.asarray(meta["stats"]["mean"], np.float32), std=float(meta["stats"]["std"]),
               length_probs=hist / hist.sum())

  @classmethod
  def from_workdir(cls, config: ml_collections.ConfigDict, workdir: Workdir, *, step: int = -1) -> "TextSampler":
    """From the checkpoint (latest when step < 0) and the codec alone: no latent store needed."""
    meta = read_sampling_meta(workdir, step)
    sampler = cls.from_meta(config, workdir, meta)
    sampler.checkpoint_step = int(meta["data_position"])
    return sampler

  checkpoint_step: int | None = None  # The step of the checkpoint the meta came from (from_workdir).

  def __post_init__(self):
    sample_fn = self.method.make_sampler(self.config.sample)
    self.trace_count = 0  # Traces of the sampler: one per (batch, length bucket) shape (tests check this).

    def device_fn(params, rng, inputs, example_offset, global_batch):
      self.trace_count += 1
      return sample_fn(params, rng, inputs["mask"], inputs.get("class_id"), example_offset=example_offset,
                       global_batch=global_batch)

    self._runner = sample_runner.SampleRunner(device_fn, self.make_inputs, self.decode_latents)

  @property
  def length_bucket(self) -> int:
    """`config.sample.length_bucket`: 0 = every batch at model.max_len (configs saved before the field: 0)."""
    return int(self.config.sample.get("length_bucket", 0))

  def make_inputs(self, rng_np: np.random.Generator, batch_size: int, conditions):
    """The runner's inputs for one batch, with the per-row record fields (length, class_id).

    conditions: None or [G] class ids: lengths are drawn here from the training histogram and the mask is
      [G, max_len]; or [G, 2] planned rows (length, class id or -1) of a length-grouped `sample`: the mask is
      cut to the batch's length bucket. Adds "class_id" [G] when the model is class-conditional.
    """
    if conditions is not None and np.ndim(conditions) == 2:
      class_ids = conditions[:, 1] if self.method.num_classes else None
      return self.inputs_for_lengths(conditions[:, 0], class_ids, bucket=self.length_bucket)
    lengths = rng_np.choice(len(self.length_probs), size=batch_size, p=self.length_probs)
    return self.inputs_for_lengths(lengths, conditions)

  def inputs_for_lengths(self, lengths: np.ndarray, class_ids=None, *, bucket: int = 0):
    """make_inputs at given lengths [G] (clipped to [1, max_len]), e.g. drawn given a source.

    bucket > 0: the mask is [G, W], W the smallest multiple of `bucket` that holds the longest row (at most
    max_len), and the sampler runs at that width; 0: W = max_len.
    """
    max_len = self.config.model.max_len
    lengths = np.clip(np.asarray(lengths), 1, max_len)
    width = batching.pad_width(int(lengths.max()), bucket, max_len) if bucket else max_len
    inputs = {"mask": np.arange(width)[None, :] < lengths[:, None]}
    fields = [{"length": int(n)} for n in lengths]
    if class_ids is not None:
      inputs["class_id"] = np.asarray(class_ids, np.int32)
      for f, c in zip(fields, class_ids):
        f["class_id"] = int(c)
    return inputs, fields

  def decode_latents(self, x0, inputs) -> list[str]:
    """x0 [G, W, d] normalized latents (the sampler's output) -> G texts, decoded at inputs["mask"] [G, W].

    A batch cut to a length bucket (W < max_len) is padded back to max_len first: the padded positions are
    masked out of the decoder's cross-attention, and the beam search then compiles once, not once per bucket.
    """
    latents = np.asarray(x0, np.float32) * self.std + self.mean  # Un-normalize before decoding.
    mask = np.asarray(inputs["mask"], bool)
    pad = self.config.model.max_len - latents.shape[1]
    if pad > 0:
      latents = np.pad(latents, ((0, 0), (0, pad), (0, 0)))
      mask = np.pad(mask, ((0, 0), (0, pad)))
    return self.codec.decode(latents, mask)

  @property
  def last_empty_count(self) -> int:
    return self._runner.last_empty_count

  def load_params(self, step: int = -1):
    """EMA params of a checkpoint (latest when step < 0)."""
    abstract = self.method.init_params(jax.random.PRNGKey(0), abstract=True)
    ckpt = checkpoints.Checkpointer(self.workdir.checkpoint_dir)
    try:
      saved, _ = ckpt.restore(full_target(self.config, abstract), step)
    finally:
      ckpt.close()
    return saved["ema_params"]

  def trajectory(self, params, *, num_samples: int = 4, seed: int = 0, at_steps=None,
                 class_id: int | None = None) -> dict:
    """The denoising trajectory of one batch (DDIM/DDPM samplers): the decoded x̂0 at chosen steps.

    Args:
      at_steps: step indices in [0, num_steps) (0 = the noisiest); default 8 evenly spaced ones and the last.
    Returns:
      {"steps": [K] step indices, "texts": [K][num_samples] decoded x̂0, "final": [num_samples] texts of the
       returned sample, "tokens_changed": [K - 1][num_samples] tokens that differ between consecutive recorded
       steps (position by position, padded with a blank)}.
    """
    n = samplers.grid_size(self.method.schedule.num_timesteps, self.config.sample)
    steps = sorted(set(int(s) for s in (at_steps if at_steps is not None else
                                        np.linspace(0, n - 1, 9).round().astype(int))))
    sample_fn = self.method.make_sampler(self.config.sample, return_trajectory_at=steps)
    rng_np = np.random.default_rng(seed)
    class_ids = sample_runner.resolve_class_ids(self.method.num_classes, num_samples, class_id)
    inputs, _ = self.make_inputs(rng_np, num_samples, class_ids)
    x0, traj = sample_fn(params, jax.random.PRNGKey(seed), jnp.asarray(inputs["mask"]),
                         None if class_ids is None else jnp.asarray(class_ids))
    texts = [self.decode_latents(np.asarray(x), inputs) for x in np.asarray(traj)]
    tokenize = lambda s: self.codec.autoencoder.tokenizer(s, add_special_tokens=False)["input_ids"]
    changed = []
    for before, after in zip(texts[:-1], texts[1:]):
      row = []
      for a, b in zip(before, after):
        ta, tb = tokenize(a), tokenize(b)
        width = max(len(ta), len(tb))
        row.append(sum(x != y for x, y in zip(ta + [-1] * (width - len(ta)), tb + [-1] * (width - len(tb)))))
      changed.append(row)
    return {"steps": steps, "texts": texts, "final": self.decode_latents(np.asarray(x0), inputs),
            "tokens_changed": changed}

  def plan_lengths(self, seed: int, num_samples: int, draw=None) -> np.ndarray:
    """[num_samples] lengths drawn before batching, from their own stream default_rng([seed, _LENGTH_STREAM]):
    i.i.d. from the training histogram, or `draw(rng)` (e.g. lengths given each sample's source)."""
    rng = np.random.default_rng([seed, _LENGTH_STREAM])
    if draw is not None:
      return np.asarray(draw(rng))
    return rng.choice(len(self.length_probs), size=num_samples, p=self.length_probs)

  def sample(self, params, *, num_samples: int, seed: int, class_id: int | None = None,
             batch_size: int | None = None, progress: bool = False, **resume) -> list[dict]:
    """Draws `num_samples` texts; empty decodes are counted and re-drawn (as the paper does).

    Same params, seed and settings give the same texts. With `config.sample.length_bucket` > 0 (the default, 8)
    all lengths are drawn first, batches are filled shortest first and each runs at its length bucket (one
    compiled sampler per bucket); every row then samples what it would at the full width. Returns records in
    index order with index, text, length, class_id (class-conditional models) and round (0 = first draw).
    `resume`: partial_path and partial_key of `SampleRunner.sample` (progress kept across interruptions).
    """
    class_ids = sample_runner.resolve_class_ids(self.method.num_classes, num_samples, class_id)
    batch_size = batch_size or self.config.sample.batch_size
    if not self.length_bucket:
      return self._runner.sample(params, num_samples=num_samples, seed=seed, batch_size=batch_size,
                                 conditions=class_ids, max_redraws=self.config.sample.max_redraws,
                                 progress=progress, **resume)
    # Length-grouped: every sample's length is drawn first (i.i.d. from the histogram, as per batch), the samples
    # are batched shortest first, and each batch runs at its own length bucket. A row samples what it would at
    # the full width (the noise is drawn at max_len and cut); only which rows share a batch changes. Re-draws of
    # empty decodes keep their planned length.
    lengths = self.plan_lengths(seed, num_samples)
    plan = np.stack([lengths, class_ids if class_ids is not None else np.full(num_samples, -1)], 1)
    return self._runner.sample(params, num_samples=num_samples, seed=seed, batch_size=batch_size,
                               conditions=plan.astype(np.int32), order=np.argsort(lengths, kind="stable"),
                               max_redraws=self.config.sample.max_redraws, progress=progress, **resume)
