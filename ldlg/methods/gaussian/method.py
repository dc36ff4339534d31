"""Gaussian latent diffusion (LD4LG): the denoiser, its loss and its samplers as one `Method`.

Built from config by `GaussianDiffusion.from_config(config)`, reading
  config.model      Denoiser(**config.model)                        (ldlg/networks/denoiser.py)
  config.diffusion  schedule, objective, loss, self-conditioning, label dropout (losses.py, schedules.py)
  config.sample     sampler kind, steps, eta, guidance                (samplers.py)
Batches (from the BART latent codec's store): "latents" [b, L, D] normalized, "mask" [b, L] bool,
"label" [b] (class-conditional), "example_index" [b].
"""

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from ldlg.methods import base
from ldlg.methods.gaussian import denoise_fn as denoise_fn_lib
from ldlg.methods.gaussian import losses
from ldlg.methods.gaussian import samplers
from ldlg.methods.gaussian import schedules
from ldlg.networks import Denoiser


@base.METHODS.register("gaussian")
@dataclasses.dataclass
class GaussianDiffusion(base.Method):
  """LD4LG's latent diffusion: x0-predicting transformer denoiser over normalized latents.

  Attributes:
    config: the run's config (model, diffusion, sample sections are read).
  """
  config: ml_collections.ConfigDict
  name = "gaussian"
  batch_fields = ("latents", "mask")

  def __post_init__(self):
    config = self.config
    if config.model.num_timesteps != config.diffusion.num_timesteps:
      raise ValueError(f"config.model.num_timesteps={config.model.num_timesteps} differs from "
                       f"config.diffusion.num_timesteps={config.diffusion.num_timesteps}; set them equal")
    self.model = Denoiser(**config.model)
    self.schedule = schedules.schedule_from_config(config.diffusion)
    self.denoise_fn = denoise_fn_lib.denoise_fn_from_module(self.model)
    self._train_loss = losses.loss_fn_from_config(self.denoise_fn, self.schedule, config.diffusion,
                                                  num_classes=config.model.num_classes, train=True,
                                                  source_conditioned=self.source_conditioned)
    self._eval_loss = None

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "GaussianDiffusion":
    return cls(config)

  @staticmethod
  def stages():
    from ldlg.methods.gaussian import stages
    return stages.stages()

  @staticmethod
  def likelihood_metrics(config, workdir, data_dir) -> dict:
    from ldlg.methods.gaussian import stages
    return stages.likelihood_metrics(config, workdir, data_dir)

  @property
  def num_classes(self) -> int:
    return int(self.config.model.num_classes)

  @property
  def source_conditioned(self) -> bool:
    """Sequence-to-sequence LD4LG: the denoiser cross-attends to a source encoding (config.model.source_dim)."""
    return int(self.config.model.get("source_dim", 0)) > 0

  @property
  def latent_dim(self) -> int:
    return int(self.config.model.latent_dim)

  def init_params(self, rng: jax.Array, *, abstract: bool = False) -> Any:
    """Initial parameters (or their shapes only, with abstract=True), from a dummy batch of the model's size."""
    batch, length = 1, self.config.model.max_len
    z = jnp.zeros((batch, length, self.latent_dim), jnp.float32)
    args = (z, jnp.zeros((batch,), jnp.int32), jnp.ones((batch, length), bool))
    kwargs = {"self_cond": z}
    if self.num_classes > 0:
      kwargs["class_id"] = jnp.zeros((batch,), jnp.int32)
    if self.source_conditioned:
      kwargs["source"] = jnp.zeros((batch, 1, int(self.config.model.source_dim)), jnp.float32)
      kwargs["source_mask"] = jnp.ones((batch, 1), bool)
    init = jax.jit(lambda r: self.model.init(r, *args, **kwargs)["params"])
    return jax.eval_shape(init, rng) if abstract else init(rng)

  def loss_fn(self, params, rng, batch):
    return self._train_loss(params, rng, batch)

  def eval_loss_fn(self, params, rng, batch):
    if self._eval_loss is None:
      self._eval_loss = losses.loss_fn_from_config(self.denoise_fn, self.schedule, self.config.diffusion,
                                                    num_classes=self.num_classes, train=False,
                                                    source_conditioned=self.source_conditioned)
    return self._eval_loss(params, rng, batch)

  def make_sampler(self, sample_config: ml_collections.ConfigDict | None = None, *,
                   return_trajectory_at: Sequence[int] = ()):
    """sample(params, rng, mask [B, L], cond | None, example_offset=0, global_batch=None) -> x0
    [B, L, latent_dim] (normalized latents), or (x0, trajectory) with return_trajectory_at; cond: [B] class ids
    or a dict with class_id and/or source + source_mask (`condition.py`)."""
    sample = samplers.sampler_from_config(
        self.denoise_fn, self.schedule, sample_config or self.config.sample, self.config.diffusion,
        num_classes=self.num_classes, source_conditioned=self.source_conditioned,
        return_trajectory_at=return_trajectory_at)
    # Noise at the model's full length, cut to the mask's width: a batch cut to a length bucket samples the same.
    return functools.partial(sample, latent_dim=self.latent_dim, noise_length=self.config.model.max_len)
