"""Codecs: text <-> what a model sees (base.py). `build(config, workdir)` is the one place a latent codec is built
from a config: `config.codec` names it ("bart_latents", the default: frozen BART encoder states; "bart_compressed":
those states through LD4LG's later-version compression network to a fixed [N, w])."""

LATENT_CODECS = ("bart_latents", "bart_compressed")
COMPRESSED = "bart_compressed"


def codec_name(config) -> str:
  """The run's latent codec: `config.codec`, or "bart_latents" when the config has none."""
  name = config.get("codec", "bart_latents")
  if name not in LATENT_CODECS:
    raise ValueError(f"config.codec must be one of {LATENT_CODECS}, got {name!r}")
  return name


def uses_compression(config) -> bool:
  """Whether the run diffuses the compression network's latents (`config.codec = "bart_compressed"`)."""
  return codec_name(config) == COMPRESSED


def build(config, workdir):
  """The run's latent codec, loaded from the workdir (raises naming the stage to run when it is not there)."""
  if uses_compression(config):
    from ldlg.codecs.compression.codec import CompressedBartCodec  # pylint: disable=import-outside-toplevel
    return CompressedBartCodec.from_config(config, workdir)
  from ldlg.codecs.bart.codec import BartLatentCodec  # pylint: disable=import-outside-toplevel
  return BartLatentCodec.from_config(config, workdir)
