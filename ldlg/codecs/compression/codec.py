"""The compressed BART codec (LD4LG's later version): text -> frozen BART encoder -> the learned compression
network -> a fixed latent [N, w]; back through the reconstruction network and the frozen BART decoder's beam search.

Selected with `config.codec = "bart_compressed"` (the `*_compressed` variants of the dataset configs). The
diffusion model then sees N × w latents with every position valid: no padding, and no length to draw at sampling
(the stored length histogram is a single spike at N, so the unchanged Gaussian sampler always draws N).

  <workdir>/autoencoder/    the frozen BART (the project's own offline, as the plain LD4LG codec)
  <workdir>/compression/    the compression network: checkpoints/, compression.msgpack, compression_config.json,
                            reconstruction.json (written last: marks the stage done)
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Sequence

import ml_collections
import numpy as np

from ldlg.codecs import base
from ldlg.codecs.bart import codec as bart_codec
from ldlg.engine.workdir import Workdir

COMPRESSION_DIR = "compression"
WEIGHTS_FILE = "compression.msgpack"
DONE_FILE = "reconstruction.json"


def compression_dir(workdir: Workdir) -> Path:
  return workdir.root / COMPRESSION_DIR


def check_model_fits(config: ml_collections.ConfigDict) -> None:
  """The denoiser's latent width and length must be the compressed latent's [N, w]."""
  cc = config.compression
  if config.model.latent_dim != cc.latent_width or config.model.max_len != cc.num_latents:
    raise ValueError(
        f"config.model (latent_dim={config.model.latent_dim}, max_len={config.model.max_len}) does not fit the "
        f"compressed latents [{cc.num_latents}, {cc.latent_width}]; set --config.model.latent_dim="
        f"{cc.latent_width} --config.model.max_len={cc.num_latents} (the *_compressed variants link them)")


def load_compressor(config: ml_collections.ConfigDict, workdir: Workdir, autoencoder=None):
  """The run's trained compression network with its frozen BART (raises naming the stage to run)."""
  from ldlg.codecs.compression.train import Compressor  # pylint: disable=import-outside-toplevel
  path = compression_dir(workdir)
  if not (path / WEIGHTS_FILE).exists():
    raise FileNotFoundError(f"no trained compression network at {path}: the train_compression stage has not "
                            "finished in this workdir. Run --mode=train_compression (or --mode=pipeline) first.")
  autoencoder = autoencoder or bart_codec.load_autoencoder(config, workdir)
  return Compressor.load(path, autoencoder)


def weights_digest(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def weights_tag(digest: str) -> str:
  """What the latents' manifest names after the BART: which compression weights (their digest) encoded them."""
  return f"+compression:{digest}"


@base.CODECS.register("bart_compressed")
@dataclasses.dataclass
class CompressedBartCodec(base.Codec):
  """Compressed latents [B, N, w] (all positions valid); decoding through the reconstructor and BART's beams.

  Attributes:
    compressor: the trained `Compressor` (network, params, frozen BART).
    decode_kwargs: `bart_codec.decode_settings(config.autoencoder)`.
    weights_sha256: digest of the compression weights (the codec's identity).
  """
  compressor: Any
  decode_kwargs: dict
  weights_sha256: str
  name = "bart_compressed"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, workdir: Workdir,
                  autoencoder=None) -> "CompressedBartCodec":
    """The run's codec; `autoencoder`: its frozen BART when already loaded (else loaded from the workdir)."""
    compressor = load_compressor(config, workdir, autoencoder)
    return cls(compressor, bart_codec.decode_settings(config.autoencoder),
               weights_digest(compression_dir(workdir) / WEIGHTS_FILE))

  @property
  def autoencoder(self):
    return self.compressor.autoencoder

  @property
  def latent_dim(self) -> int:
    return int(self.compressor.network.latent_width)

  def encode(self, texts: Sequence[str]):
    """texts -> (latents [B, N, w] float32, mask [B, N] all True)."""
    z = self.compressor.encode(list(texts))
    return z, np.ones(z.shape[:2], bool)

  def decode(self, outputs: Any, mask: Any = None) -> list[str]:
    """Un-normalized latents [B, N, w] -> B texts with the run's decoding settings. The mask is not read: a
    compressed latent has no padding (the sampler's mask is all True)."""
    return self.compressor.decode(np.asarray(outputs, np.float32), **self.decode_kwargs)

  def identity(self) -> dict:
    return {"kind": self.name, "autoencoder": self.autoencoder.name, "latent_dim": self.latent_dim,
            "num_latents": int(self.compressor.network.num_latents), "weights_sha256": self.weights_sha256}


class CompressedEncoder:
  """The encoder interface `ldlg.data.precompute.precompute_latents` reads, over a compressed codec.

  Attributes:
    name: the BART's name and the compression weights' digest, written to the latents' manifest (latents made
      with other weights are recomputed, not resumed).
    latent_dim: w. max_length: N (every latent has N valid positions). max_tokens: the BART's token limit, what
      the precompute's truncation count compares text lengths with. tokenizer: the BART's.
  """

  def __init__(self, codec: CompressedBartCodec):
    self.codec = codec
    self.name = codec.autoencoder.name + weights_tag(codec.weights_sha256)
    self.latent_dim = codec.latent_dim
    self.max_length = int(codec.compressor.network.num_latents)
    self.max_tokens = int(codec.autoencoder.max_length)
    self.tokenizer = codec.autoencoder.tokenizer

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return self.codec.encode(texts)
