"""Sequence-to-sequence LD4LG (the paper's later version): Gaussian latent diffusion of the target's BART latents,
the denoiser cross-attending to the frozen BART encoder's states of the source.

The same network, loss and samplers as `GaussianDiffusion`; what differs is the data and the stages
(`seq2seq_stages.py`): the precompute stage also encodes the distinct sources, training batches carry
"source" [b, S, d] and "source_mask" [b, S] (dropped to the null source with `config.diffusion.source_dropout`,
0.1, so classifier-free guidance works), and sampling draws `config.sample.num_candidates` candidates per eval
source with `config.sample.guidance_scale`, scored (first candidate, and the MBR choice) by the seq2seq
evaluate stage. `config.model.source_dim` (> 0) is the source encoding's width: the autoencoder's d_model.
"""

import dataclasses

from ldlg.methods import base
from ldlg.methods.gaussian.method import GaussianDiffusion


@base.METHODS.register("ld4lg_seq2seq")
@dataclasses.dataclass
class SourceConditionedDiffusion(GaussianDiffusion):
  """`GaussianDiffusion` over (source, target) pairs; `config.model.source_dim` must be the latent width."""
  name = "ld4lg_seq2seq"

  def __post_init__(self):
    source_dim = int(self.config.model.get("source_dim", 0))
    if source_dim != int(self.config.model.latent_dim):
      raise ValueError(f"config.model.source_dim={source_dim}: sequence-to-sequence LD4LG reads the frozen "
                       f"encoder's source states, so it must equal the latent width config.model.latent_dim="
                       f"{self.config.model.latent_dim}; set --config.model.source_dim={self.config.model.latent_dim}")
    super().__post_init__()

  @staticmethod
  def stages():
    from ldlg.methods.gaussian import seq2seq_stages  # pylint: disable=import-outside-toplevel
    return seq2seq_stages.stages()

  @staticmethod
  def likelihood_metrics(config, workdir, data_dir) -> dict:
    del config, workdir, data_dir  # The seq2seq evaluate stage scores texts against references only.
    return {}
