"""(source, target) text pairs -> DiffuSeq's token sequences `[<s> source </s> ; target </s> ; <pad> ...]`.

One sequence per pair, always `max_len` long (DiffuSeq's fixed `seq_len`: with learned padding the model writes
the pad tokens after the target, so the length of the output needs no separate model):

  ids          <s> w_x </s> w_y </s> <pad> ... <pad>      [L]
  source_mask   1   1    1   0    0    0   ...   0        the source and its separator </s>: kept clean
  mask          1   1    1   1    1    0   ...   0        the real tokens (used only without learned padding)

The source is cut to `max_source_len` tokens (its closing </s> kept, so the separator is always there); the
target is cut to what is left of `max_len` (a cut target loses its </s>). Both cuts are counted, so a config
whose lengths are too short says so in the log instead of silently training on truncated text.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ldlg.data.step_batches import batch_indices


@dataclasses.dataclass(frozen=True)
class FramedPairs:
  """Token ids of a split's pairs (ragged; `pack` pads them).

  Attributes:
    sources: per pair, `<s> source </s>` ids (int32).
    targets: per pair, `target </s>` ids (int32; empty for sampling inputs).
    stats: {"num_pairs", "num_dropped" (empty source or target), "num_source_cut", "num_target_cut"}.
  """
  sources: list[np.ndarray]
  targets: list[np.ndarray]
  stats: dict

  def __len__(self) -> int:
    return len(self.sources)


def frame_pairs(sources: Sequence[str], targets: Sequence[str] | None, tokenizer: Any, ids: dict[str, int], *,
                max_len: int, max_source_len: int) -> FramedPairs:
  """Encodes pairs (or, with targets None, sources alone for sampling).

  Args:
    sources / targets: texts, one each per pair.
    tokenizer: a Hugging Face tokenizer (the project's BPE).
    ids: {"bos", "eos", "pad"} (`ldlg.codecs.tokens.special_ids`).
    max_len: L, the whole sequence.
    max_source_len: the most tokens the source part (with <s> and </s>) may take; < max_len.

  Raises:
    ValueError: bad lengths, or sources and targets of different counts.
  """
  if isinstance(sources, str) or (targets is not None and isinstance(targets, str)):
    raise ValueError("pass lists of texts, not a single string")
  if not 3 <= max_source_len < max_len:
    raise ValueError(f"need 3 <= max_source_len ({max_source_len}) < max_len ({max_len}): the source takes <s> and "
                     "</s>, and the target needs at least one position")
  if targets is not None and len(targets) != len(sources):
    raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
  encode = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []
  src_ids = encode(sources)
  tgt_ids = encode(targets) if targets is not None else [None] * len(src_ids)
  out_src, out_tgt = [], []
  dropped = source_cut = target_cut = 0
  for s, t in zip(src_ids, tgt_ids):
    if not s or (targets is not None and not t):
      dropped += 1
      continue
    if len(s) > max_source_len - 2:
      source_cut += 1
      s = s[:max_source_len - 2]
    src = np.asarray([ids["bos"], *s, ids["eos"]], np.int32)
    tgt = np.zeros((0,), np.int32)
    if t is not None:
      tgt = [*t, ids["eos"]]
      room = max_len - len(src)
      if len(tgt) > room:
        target_cut += 1
        tgt = tgt[:room]
      tgt = np.asarray(tgt, np.int32)
    out_src.append(src)
    out_tgt.append(tgt)
  stats = {"num_pairs": len(out_src), "num_dropped": dropped, "num_source_cut": source_cut,
           "num_target_cut": target_cut}
  return FramedPairs(out_src, out_tgt, stats)


def pack(pairs: FramedPairs, rows: Sequence[int], *, max_len: int, pad_id: int) -> dict[str, np.ndarray]:
  """The pairs at `rows` as fixed-length arrays.

  Returns:
    {"input_ids" [n, L] int32, "source_mask" [n, L] bool, "mask" [n, L] bool}.
  """
  n = len(rows)
  ids = np.full((n, max_len), pad_id, np.int32)
  source_mask = np.zeros((n, max_len), bool)
  mask = np.zeros((n, max_len), bool)
  for row, i in enumerate(rows):
    src, tgt = pairs.sources[i], pairs.targets[i]
    ids[row, :len(src)] = src
    ids[row, len(src):len(src) + len(tgt)] = tgt
    source_mask[row, :len(src)] = True
    mask[row, :len(src) + len(tgt)] = True
  return {"input_ids": ids, "source_mask": source_mask, "mask": mask}


def train_batch(pairs: FramedPairs, step: int, *, batch_size: int, num_devices: int, max_len: int, pad_id: int,
                seed: int) -> dict[str, np.ndarray]:
  """Step `step`'s batch (the project's one index rule, `batch_indices`), split over devices: [n_dev, B/n_dev, ...]
  arrays, with example_index (the position in the global batch)."""
  batch = pack(pairs, batch_indices(step, len(pairs), batch_size, seed), max_len=max_len, pad_id=pad_id)
  batch["example_index"] = np.arange(batch_size, dtype=np.int32)
  shape = (num_devices, batch_size // num_devices)
  return {k: v.reshape(shape + v.shape[1:]) for k, v in batch.items()}
