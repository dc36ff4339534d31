"""The autoregressive seq2seq baseline: the project's BART fine-tuned on (source -> target), decoded by beam search.

The strong, standard baseline DiffuSeq and source-conditioned LD4LG are compared with (issue 11): BART's encoder
reads the source (an E2E meaning representation), its decoder is trained with teacher forcing on the target
(token-mean cross-entropy, `ldlg.codecs.bart.pretrain.make_loss_fn`, the loss BART was pretrained with), and
outputs come from the project's jit beam search (`Autoencoder.decode` of the source's encoding). It starts from
the run's BART: the project's own, pretrained on the corpus by the `pretrain_autoencoder` stage (offline), or any
Hugging Face BART named by `config.autoencoder.name` with `config.autoencoder.pretrain=False` (e.g.
facebook/bart-base online, or another run's `autoencoder/` folder, to reuse the LD4LG main job's BART).
"""
from __future__ import annotations

from typing import Any

import jax

from ldlg.codecs.bart import pretrain
from ldlg.methods.base import METHODS, Batch, Method


@METHODS.register("bart_seq2seq")
class BartSeq2Seq(Method):
  """BART fine-tuning on pairs.

  Args:
    autoencoder: the loaded `ldlg.codecs.bart.autoencoder.Autoencoder` (model, tokenizer, pretrained params).
    num_devices: devices a step is split over (dropout keys differ per device; see `make_loss_fn`).
  """

  name = "bart_seq2seq"
  batch_fields = ("input_ids", "attention_mask", "decoder_input_ids", "labels")

  def __init__(self, autoencoder: Any, num_devices: int = 1):
    self.autoencoder = autoencoder
    self._loss_fn = pretrain.make_loss_fn(autoencoder.model, autoencoder.tokenizer.pad_token_id, num_devices)

  def init_params(self, rng: jax.Array) -> Any:
    """The pretrained parameters (fine-tuning starts from them; `rng` is unused)."""
    del rng
    return self.autoencoder.params

  def loss_fn(self, params: Any, rng: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-mean cross-entropy of the target given the source (teacher forcing), with token accuracy."""
    return self._loss_fn(params, rng, batch)

  @staticmethod
  def stages() -> tuple:
    from ldlg.methods.bart_seq2seq import stages  # pylint: disable=import-outside-toplevel
    return stages.stages()
