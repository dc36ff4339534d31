"""Test doubles for the data pipeline: a word-level HF tokenizer and a deterministic hashing "encoder".

`HashingAutoencoder` has the encoder interface the precompute job uses (`encode`, `latent_dim`,
`max_length`, `name`, `tokenizer`) but no parameters: each token's latent is a fixed pseudo-random vector
of its id plus a position term, so results are exact, repeatable and cheap. Like BART, it returns
non-zero values at padded positions (the pipeline must ignore them) and pads each batch to a bucket length.
Useful for CPU tests of everything downstream of the encoder.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import numpy as np

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # BART's ids 0..3


def make_word_tokenizer(texts: Iterable[str], *, model_max_length: int = 64, name: str = "word-tokenizer"):
  """A `PreTrainedTokenizerFast` over the whitespace/punctuation words of `texts`, wrapping `<s> ... </s>`."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})
  vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
  vocab.update({w: i + len(SPECIAL_TOKENS) for i, w in enumerate(words)})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>",
                               eos_token="</s>", unk_token="<unk>", model_max_length=model_max_length)
  hf.name_or_path = name
  return hf


class HashingAutoencoder:
  """Deterministic stand-in for the frozen encoder: latents [B, L, d] from token ids and positions.

  Attributes:
    num_calls, num_texts: how often `encode` ran and on how many texts (to test resumption).
    fail_after_calls: raise RuntimeError on the call after this many (to simulate a crash).
  """

  def __init__(self, tokenizer, *, latent_dim: int = 8, max_length: int = 16, bucket: int = 4,
               scale: float = 1.0, name: str = "hashing-autoencoder"):
    self.tokenizer = tokenizer
    self.latent_dim = latent_dim
    self.max_length = max_length
    self.name = name
    self._bucket = bucket
    rng = np.random.default_rng(1234)
    self._table = (scale * rng.normal(size=(len(tokenizer), latent_dim))).astype(np.float32)
    self._pos = (0.1 * rng.normal(size=(max_length, latent_dim))).astype(np.float32)
    self.num_calls = 0
    self.num_texts = 0
    self.fail_after_calls: int | None = None

  def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
    """Truncated ids per text (what `encode` embeds)."""
    return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

  def expected(self, text: str) -> np.ndarray:
    """The latent `encode` gives `text`: [length, d] float32."""
    ids = np.asarray(self.token_ids([text])[0])
    return self._table[ids] + self._pos[:len(ids)]

  def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """texts (B) -> (latents [B, L, d] float32, mask [B, L] bool), L a multiple of `bucket` <= max_length."""
    if self.fail_after_calls is not None and self.num_calls >= self.fail_after_calls:
      raise RuntimeError(f"simulated crash after {self.num_calls} encode calls")
    self.num_calls += 1
    self.num_texts += len(texts)
    ids = self.token_ids(texts)
    longest = max(len(x) for x in ids)
    L = min(self.max_length, int(math.ceil(longest / self._bucket)) * self._bucket)
    padded = np.full((len(ids), L), self.tokenizer.pad_token_id, np.int64)
    mask = np.zeros((len(ids), L), bool)
    for i, x in enumerate(ids):
      padded[i, :len(x)] = x
      mask[i, :len(x)] = True
    # Padded positions get the <pad> embedding plus position, non-zero as a real encoder's would be.
    return self._table[padded] + self._pos[None, :L], mask


_WORDS = ("the a food pub river city centre cheap rating family friendly near good bad service price "
          "restaurant coffee shop serves Italian French Chinese high low average customer stars").split()


def synthetic_records(n: int, *, seed: int = 0, num_classes: int = 0, max_words: int = 24) -> list[dict]:
  """n sentences of 1..max_words random words ("label" in [0, num_classes) when num_classes > 0)."""
  rng = np.random.default_rng(seed)
  records = []
  for _ in range(n):
    words = rng.choice(_WORDS, size=int(rng.integers(1, max_words + 1)))
    record = {"text": " ".join(words) + " ."}
    if num_classes:
      record["label"] = int(rng.integers(num_classes))
    records.append(record)
  return records
