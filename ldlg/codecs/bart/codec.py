"""The frozen-BART latent codec (LD4LG): text -> encoder latents, latents -> text by our beam search.

`BartLatentCodec.from_config(config, workdir)` loads the project's own BART from `<workdir>/autoencoder`
(offline configs, `config.autoencoder.pretrain=True`) or the configured hub name / local directory, and reads
the decoding settings from `config.autoencoder` in one place (`decode_settings`), so training-time samples,
`--mode=sample`, the Colab and the benchmarks decode alike.
"""

import dataclasses
import hashlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from ldlg.codecs import base
from ldlg.engine.workdir import Workdir

# The config.autoencoder fields that steer decoding, and the DecodeOptions field each one sets.
DECODE_FIELDS = {"num_beams": "num_beams", "max_decode_length": "max_length", "min_decode_length": "min_length",
                 "no_repeat_ngram_size": "no_repeat_ngram_size", "repetition_penalty": "repetition_penalty",
                 "length_penalty": "length_penalty"}


def decode_settings(autoencoder_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of `Autoencoder.decode` a run uses, from `config.autoencoder`."""
  return {option: autoencoder_config[field] for field, option in DECODE_FIELDS.items()}


def autoencoder_path(config: ml_collections.ConfigDict, workdir: Workdir) -> str:
  """Our own autoencoder in the workdir (offline configs), else the configured hub name or directory."""
  if config.autoencoder.pretrain:
    return str(workdir.autoencoder_dir)
  if not config.autoencoder.name:
    raise ValueError("config.autoencoder.name is empty and config.autoencoder.pretrain is False: name a "
                     "pretrained BART (e.g. facebook/bart-base or a local directory) or set pretrain=True")
  return config.autoencoder.name


def load_autoencoder(config: ml_collections.ConfigDict, workdir: Workdir):
  """The frozen BART of a run (raises naming the stage to run when our own has not been trained yet)."""
  path = autoencoder_path(config, workdir)
  if config.autoencoder.pretrain and not (workdir.autoencoder_dir / "config.json").exists():
    raise FileNotFoundError(
        f"no autoencoder at {workdir.autoencoder_dir}: the pretrain_autoencoder stage has not run in this "
        "workdir. Run --mode=pretrain_autoencoder (or --mode=pipeline) first.")
  return load_bart(config, path)


def load_bart(config: ml_collections.ConfigDict, path: str):
  """A BART folder (or hub name) read with the run's length and dtype."""
  from ldlg.codecs.bart.autoencoder import Autoencoder  # pylint: disable=import-outside-toplevel
  return Autoencoder.from_pretrained(str(path), max_length=config.data.max_length, dtype=config.autoencoder.dtype)


def _file_digest(path) -> str | None:
  try:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
  except OSError:
    return None


@base.CODECS.register("bart_latents")
@dataclasses.dataclass
class BartLatentCodec(base.Codec):
  """Frozen BART encoder latents [B, L, d] with a padding mask; beam-search decoding.

  Attributes:
    autoencoder: the loaded `Autoencoder`.
    decode_kwargs: `decode_settings(config.autoencoder)`.
  """
  autoencoder: Any
  decode_kwargs: dict
  name = "bart_latents"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, workdir: Workdir) -> "BartLatentCodec":
    """The run's BART; with `config.decoder_finetune` on, the one whose decoder was fine-tuned on noised latents
    (its encoder is the autoencoder's, unchanged: the same latents)."""
    from ldlg.codecs.bart import decoder_finetune  # pylint: disable=import-outside-toplevel
    if not decoder_finetune.enabled(config):
      return cls(load_autoencoder(config, workdir), decode_settings(config.autoencoder))
    if not (workdir.decoder_dir / decoder_finetune.DONE_FILE).exists():
      raise FileNotFoundError(
          f"no fine-tuned decoder at {workdir.decoder_dir} (config.decoder_finetune.noise_std > 0): the "
          "finetune_decoder stage has not run in this workdir. Run --mode=finetune_decoder (or --mode=pipeline), "
          "or set --config.decoder_finetune.noise_std=0 to decode with the autoencoder's decoder.")
    return cls(load_bart(config, workdir.decoder_dir), decode_settings(config.autoencoder))

  @property
  def latent_dim(self) -> int:
    return self.autoencoder.latent_dim

  def encode(self, texts: Sequence[str]):
    """texts -> (latents [B, L, d] float32, mask [B, L] bool)."""
    return self.autoencoder.encode(list(texts))

  def decode(self, outputs: Any, mask: Any = None) -> list[str]:
    """Un-normalized latents [B, L, d] and mask [B, L] -> B texts, with the run's decoding settings."""
    return self.autoencoder.decode(np.asarray(outputs, np.float32), np.asarray(mask, bool), **self.decode_kwargs)

  def identity(self) -> dict:
    name = self.autoencoder.name
    return {"kind": self.name, "autoencoder": name, "latent_dim": int(self.latent_dim),
            "config_sha256": _file_digest(f"{name}/config.json"),
            "weights_sha256": _file_digest(f"{name}/flax_model.msgpack")}


def latent_identity(store) -> dict:
  """What ties a checkpoint to the latents it was trained on."""
  m = store.manifest
  return {"autoencoder": m["autoencoder"], "data_sha256": m["data_sha256"], "latent_dim": m["latent_dim"],
          "max_length": m["max_length"], "split": m["split"]}


def latent_stats(store) -> dict:
  mean, std = store.stats
  return {"mean": [float(x) for x in mean], "std": float(std)}


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


def sampling_meta(store) -> dict:
  """What a checkpoint carries so sampling needs no latent store: normalization statistics, the empirical
  length histogram and the latents' identity."""
  return {"stats": latent_stats(store), "length_counts": [int(c) for c in store.length_counts],
          "latents": latent_identity(store)}
