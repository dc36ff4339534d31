"""What a codec is: text <-> what a model sees, behind one interface the engine and the stages use.

A codec encodes texts into model inputs (frozen BART latents; token ids), decodes model outputs back to texts
(beam search for BART), owns its padding/bucketing rule (`ldlg.data.batching.pad_width`), says who it is
(`identity`, saved in checkpoints so a sampler is never paired with the wrong codec), and may have its own
pretraining job (the project's own BART). Register one with `@CODECS.register("name")`; `ldlg.codecs.build` is
the one place it is built from a config.
"""

import abc
from typing import Any, Sequence

from ldlg.engine.registry import Registry

CODECS = Registry("codec")


class Codec(abc.ABC):
  """Text <-> model space."""

  name: str = ""

  @abc.abstractmethod
  def encode(self, texts: Sequence[str]) -> Any:
    """Texts -> model inputs (arrays with a padding mask)."""

  @abc.abstractmethod
  def decode(self, outputs: Any, mask: Any = None) -> list[str]:
    """Model outputs -> texts."""

  @abc.abstractmethod
  def identity(self) -> dict:
    """JSON that names this codec exactly (kind, path, sizes): stored with checkpoints and samples."""
