"""The one place each object is built from a config, used by training, sampling, evaluation and the Colab.

Modules get typed constructor fields (`Denoiser(**config.model)`), never the ConfigDict itself.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from ldlg.methods.gaussian import denoise_fn as denoise_fn_lib
from ldlg.methods.gaussian import losses
from ldlg.methods.gaussian import samplers
from ldlg.methods.gaussian import schedules
from ldlg.networks import Denoiser
from ldlg.engine.workdir import Workdir


def build_denoiser(config: ml_collections.ConfigDict) -> Denoiser:
  if config.model.num_timesteps != config.diffusion.num_timesteps:
    raise ValueError(f"config.model.num_timesteps={config.model.num_timesteps} differs from "
                     f"config.diffusion.num_timesteps={config.diffusion.num_timesteps}; set them equal")
  return Denoiser(**config.model)


def init_denoiser_params(config: ml_collections.ConfigDict, model: Denoiser, rng: jax.Array, *,
                         abstract: bool = False):
  """Initial parameters (or their shapes only, with abstract=True), from a dummy batch of the model's size."""
  batch, length = 1, config.model.max_len
  z = jnp.zeros((batch, length, config.model.latent_dim), jnp.float32)
  args = (z, jnp.zeros((batch,), jnp.int32), jnp.ones((batch, length), bool))
  kwargs = {"self_cond": z}
  if config.model.num_classes > 0:
    kwargs["class_id"] = jnp.zeros((batch,), jnp.int32)
  init = jax.jit(lambda r: model.init(r, *args, **kwargs)["params"])
  return jax.eval_shape(init, rng) if abstract else init(rng)


def build_schedule(config: ml_collections.ConfigDict) -> schedules.Schedule:
  return schedules.schedule_from_config(config.diffusion)


def build_loss_fn(config: ml_collections.ConfigDict, model: Denoiser, *, train: bool = True):
  """loss_fn(params, rng, batch) -> (loss, metrics); see ldlg.methods.gaussian.losses.make_loss_fn."""
  return losses.loss_fn_from_config(denoise_fn_lib.denoise_fn_from_module(model), build_schedule(config),
                                    config.diffusion, num_classes=config.model.num_classes, train=train)


def build_sampler(config: ml_collections.ConfigDict, model: Denoiser, *, return_trajectory_at=()):
  """sample(params, rng, mask [B, L], class_id [B] | None) -> x0 [B, L, latent_dim] (normalized latents)."""
  sample = samplers.sampler_from_config(
      denoise_fn_lib.denoise_fn_from_module(model), build_schedule(config), config.sample, config.diffusion,
      num_classes=config.model.num_classes, return_trajectory_at=return_trajectory_at)
  return functools.partial(sample, latent_dim=config.model.latent_dim)


def open_latent_store(config: ml_collections.ConfigDict, workdir: Workdir, split: str):
  """The precomputed latents of a split, normalized with the training split's statistics."""
  from ldlg.data.latent_store import LatentStore
  path = workdir.latents_dir(split)
  if not (path / "manifest.json").exists():
    raise FileNotFoundError(
        f"no latents for split {split!r} at {path}: the precompute stage has not run in this workdir. "
        f"Run --mode=precompute (or --mode=pipeline) with the same --workdir first.")
  stats = workdir.latents_dir(config.data.train_split) / "stats.json"
  return LatentStore(path, stats_path=stats if stats.exists() else None)


def latent_identity(store) -> dict:
  """What ties a checkpoint to the latents it was trained on."""
  m = store.manifest
  return {"autoencoder": m["autoencoder"], "data_sha256": m["data_sha256"], "latent_dim": m["latent_dim"],
          "max_length": m["max_length"], "split": m["split"]}


def latent_stats(store) -> dict:
  mean, std = store.stats
  return {"mean": [float(x) for x in mean], "std": float(std)}


def check_latents_match_model(config: ml_collections.ConfigDict, store) -> None:
  """Fails fast when the denoiser's sizes do not fit the stored latents."""
  if store.latent_dim != config.model.latent_dim:
    raise ValueError(
        f"config.model.latent_dim={config.model.latent_dim} does not match the latent width {store.latent_dim} "
        f"of {store.path} (the autoencoder's d_model); set --config.model.latent_dim={store.latent_dim}")
  if store.max_length > config.model.max_len:
    raise ValueError(
        f"the latents at {store.path} are up to {store.max_length} long but config.model.max_len="
        f"{config.model.max_len}; set --config.model.max_len={store.max_length}")
  num_classes = config.model.num_classes
  if num_classes > 0 and store.labels is None:
    raise ValueError(f"config.model.num_classes={num_classes} but {store.path} has no labels; "
                     "use a labelled dataset or set --config.model.num_classes=0")


def autoencoder_path(config: ml_collections.ConfigDict, workdir: Workdir) -> str:
  """Our own autoencoder in the workdir (offline configs), else the configured hub name or directory."""
  if config.autoencoder.pretrain:
    return str(workdir.autoencoder_dir)
  if not config.autoencoder.name:
    raise ValueError("config.autoencoder.name is empty and config.autoencoder.pretrain is False: name a "
                     "pretrained BART (e.g. facebook/bart-base or a local directory) or set pretrain=True")
  return config.autoencoder.name


def load_autoencoder(config: ml_collections.ConfigDict, workdir: Workdir):
  from ldlg.codecs.bart.autoencoder import Autoencoder
  path = autoencoder_path(config, workdir)
  if config.autoencoder.pretrain and not (workdir.autoencoder_dir / "config.json").exists():
    raise FileNotFoundError(
        f"no autoencoder at {workdir.autoencoder_dir}: the pretrain_autoencoder stage has not run in this "
        "workdir. Run --mode=pretrain_autoencoder (or --mode=pipeline) first.")
  return Autoencoder.from_pretrained(path, max_length=config.data.max_length, dtype=config.autoencoder.dtype)
