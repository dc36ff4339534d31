"""The token-id codec: text <-> `<s> text </s>` ids in the project's byte-level BPE (AR baseline, MDLM).

One tokenizer for every token-level method, so their likelihoods are on the same tokens: the project's own BPE
(`<workdir>/tokenizer/`, trained by the `tokenizer` stage on the train split, or the BART autoencoder's, or any
Hugging Face tokenizer folder with <s>, </s> and <pad>, named by `config.tokenizer.path`).

Batches follow the project's one padding rule (`ldlg.data.batching.pad_width`) and one index rule
(`ldlg.data.step_batches.batch_indices`): step s's batch is a function of (seed, s).
"""

import dataclasses
import pathlib
from typing import Any, Sequence

from absl import logging
import ml_collections
import numpy as np

from ldlg.codecs import base
from ldlg.data.batching import pad_width
from ldlg.data.step_batches import batch_indices
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir


def special_ids(tokenizer: Any) -> dict[str, int]:
  """bos/eos/pad ids of a tokenizer. Raises ValueError naming the missing token and the fix."""
  ids = {}
  for name in ("bos", "eos", "pad"):
    value = getattr(tokenizer, f"{name}_token_id", None)
    if value is None:
      raise ValueError(f"the tokenizer has no {name} token; token-level methods frame texts as <s> text </s> and "
                       f"pad with <pad>: set tokenizer.{name}_token (the project's BPE tokenizer has all three)")
    ids[name] = int(value)
  return ids


def frame_texts(texts: Sequence[str], tokenizer: Any, max_length: int) -> tuple[list[np.ndarray], dict]:
  """`<s> text </s>` token ids per non-empty text, cut to `max_length` (a cut text loses its </s>).

  Returns:
    (ids: one int32 array per kept text, stats: {"num_texts", "num_empty" (dropped), "num_truncated"}).
  """
  if isinstance(texts, str):
    raise ValueError("pass a list of texts, not a single string")
  if max_length < 2:
    raise ValueError(f"max_length={max_length} leaves no room for <s> and </s>; use at least 2")
  ids = special_ids(tokenizer)
  encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
  seqs, empty, truncated = [], 0, 0
  for tokens in encoded:
    if not tokens:
      empty += 1
      continue
    seq = [ids["bos"], *tokens, ids["eos"]]
    if len(seq) > max_length:
      truncated += 1
      seq = seq[:max_length]
    seqs.append(np.asarray(seq, np.int32))
  return seqs, {"num_texts": len(seqs), "num_empty": empty, "num_truncated": truncated}


def make_batch(seqs: Sequence[np.ndarray], step: int, *, batch_size: int, num_devices: int, pad_id: int,
               pad_multiple: int, max_length: int, seed: int,
               labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Step `step`'s batch, split over devices: [num_devices, B / num_devices, ...] arrays.

  input_ids, attention_mask [.., W] (W = `pad_width` of the longest sequence: few compiled shapes),
  example_index [..] (position in the global batch), and label [..] when `labels` are given.
  """
  idx = batch_indices(step, len(seqs), batch_size, seed)
  width = pad_width(max(len(seqs[i]) for i in idx), pad_multiple, max_length)
  ids = np.full((batch_size, width), pad_id, np.int32)
  mask = np.zeros((batch_size, width), np.int32)
  for row, i in enumerate(idx):
    ids[row, :len(seqs[i])] = seqs[i]
    mask[row, :len(seqs[i])] = 1
  shape = (num_devices, batch_size // num_devices)
  out = {"input_ids": ids.reshape(shape + (width,)), "attention_mask": mask.reshape(shape + (width,)),
         "example_index": np.arange(batch_size, dtype=np.int32).reshape(shape)}
  if labels is not None:
    out["label"] = np.asarray(labels, np.int32)[idx].reshape(shape)
  return out


def decode_ids(ids: np.ndarray, tokenizer: Any, eos_id: int) -> list[str]:
  """Texts of id rows [N, L] that start with <s>: the tokens after it up to </s>, special tokens dropped."""
  texts = []
  for row in np.asarray(ids):
    body = row[1:]
    end = np.flatnonzero(body == eos_id)
    body = body[:end[0]] if end.size else body
    texts.append(tokenizer.decode(body.tolist(), skip_special_tokens=True).strip())
  return texts


def tokenizer_dir(config: ml_collections.ConfigDict, workdir: Workdir) -> pathlib.Path:
  """Where a run's tokenizer lives: config.tokenizer.path if set, else <workdir>/tokenizer."""
  path = config.tokenizer.get("path", "")
  return pathlib.Path(path) if path else workdir.root / "tokenizer"


def load_tokenizer(config: ml_collections.ConfigDict, workdir: Workdir):
  import transformers
  path = tokenizer_dir(config, workdir)
  if not (path / "tokenizer_config.json").exists():
    raise FileNotFoundError(f"no tokenizer at {path}: run --mode=tokenizer (or --mode=pipeline) first, or point "
                            "--config.tokenizer.path at a tokenizer folder (e.g. another run's autoencoder/)")
  return transformers.AutoTokenizer.from_pretrained(str(path))


@base.CODECS.register("tokens")
@dataclasses.dataclass
class TokenCodec(base.Codec):
  """`<s> text </s>` ids, right-padded with <pad>."""
  tokenizer: Any
  max_length: int
  pad_multiple: int = 16
  name = "tokens"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, workdir: Workdir) -> "TokenCodec":
    return cls(load_tokenizer(config, workdir), int(config.data.max_length),
               int(config.data.get("pad_multiple", 16)))

  @property
  def ids(self) -> dict[str, int]:
    return special_ids(self.tokenizer)

  @property
  def vocab_size(self) -> int:
    return len(self.tokenizer)

  def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
    return frame_texts(texts, self.tokenizer, self.max_length)[0]

  def decode(self, outputs: Any, mask: Any = None) -> list[str]:
    return decode_ids(outputs, self.tokenizer, self.ids["eos"])

  def identity(self) -> dict:
    return {"kind": self.name, "tokenizer": str(getattr(self.tokenizer, "name_or_path", "")),
            "vocab_size": self.vocab_size, "max_length": self.max_length}


def train_tokenizer_stage(config: ml_collections.ConfigDict, workdir: Workdir, data_dir) -> None:
  """`--mode=tokenizer`: trains the byte-level BPE on the train split into <workdir>/tokenizer (skipped when
  config.tokenizer.path names an existing tokenizer). With `config.tokenizer.include_source` (seq2seq runs) the
  records' sources are part of the corpus too, so a meaning representation's slot names get their own merges."""
  from ldlg.codecs.bart import tokenizer as tokenizer_lib
  from ldlg.data.splits import load_texts
  if config.tokenizer.get("path", ""):
    load_tokenizer(config, workdir)  # Fails now, naming the path, if it is not there.
    logging.info("Using the tokenizer at %s.", config.tokenizer.path)
    return
  records = load_texts(config, data_dir, workdir, config.data.train_split)
  texts = [r["text"] for r in records]
  if config.tokenizer.get("include_source", False):
    texts += [r["source"] for r in records if r.get("source")]
  tokenizer_lib.train_tokenizer(texts, config.tokenizer.vocab_size, workdir.root / "tokenizer",
                                min_frequency=config.tokenizer.min_frequency)


def tokenizer_done(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> bool:
  return (tokenizer_dir(config, workdir) / "tokenizer_config.json").exists()


TOKENIZER = Stage("tokenizer", train_tokenizer_stage, tokenizer_done)
