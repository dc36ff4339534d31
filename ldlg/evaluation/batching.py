"""Length-bucketed, fixed-shape batches of token ids for the jit-compiled evaluation models.

Every batch has the same number of rows and a length taken from a short list of buckets, so a jitted
model compiles once per bucket, not once per batch. Texts are sorted by length first, so a batch wastes
little compute on padding. Short batches are filled with one-token dummy rows (mask 1 on the first
position, so mean-pooling never divides by zero); their outputs are dropped.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np


def bucket_lengths(max_length: int, smallest: int = 16) -> tuple[int, ...]:
  """Powers of two from `smallest` below `max_length`, then `max_length` itself: (16, 32, ..., max_length)."""
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got {max_length}")
  buckets = []
  length = smallest
  while length < max_length:
    buckets.append(length)
    length *= 2
  buckets.append(max_length)
  return tuple(buckets)


@dataclasses.dataclass(frozen=True)
class Batch:
  """One padded batch.

  Attributes:
    indices: [n_real] positions of the batch's real rows in the caller's list (rows past n_real are dummies).
    input_ids: [B, L] int32, right-padded with `pad_id`.
    attention_mask: [B, L] int32, 1 on real tokens.
  """
  indices: np.ndarray
  input_ids: np.ndarray
  attention_mask: np.ndarray


def iterate_batches(token_ids: Sequence[Sequence[int]], *, batch_size: int, buckets: Sequence[int],
                    pad_id: int = 0) -> Iterator[Batch]:
  """Yields fixed-shape batches covering every sequence once, in order of increasing length.

  Args:
    token_ids: one list of ids per text; each must be non-empty and at most buckets[-1] long (truncate first).
    batch_size: rows per batch, B.
    buckets: allowed padded lengths, ascending.
    pad_id: id written at padded positions (masked out, so any valid id works).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
  if lengths.size and lengths.min() < 1:
    raise ValueError("every sequence needs at least one token; encode empty texts as a special token")
  if lengths.size and lengths.max() > buckets[-1]:
    raise ValueError(f"a sequence has {lengths.max()} tokens, more than the largest bucket {buckets[-1]}; "
                     "truncate to max_length before batching")
  order = np.argsort(lengths, kind="stable")
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    longest = int(lengths[idx].max())
    width = next(b for b in buckets if b >= longest)
    ids = np.full((batch_size, width), pad_id, dtype=np.int32)
    mask = np.zeros((batch_size, width), dtype=np.int32)
    mask[len(idx):, 0] = 1  # dummy rows: one visible token
    for row, i in enumerate(idx):
      ids[row, :lengths[i]] = token_ids[i]
      mask[row, :lengths[i]] = 1
    yield Batch(indices=idx, input_ids=ids, attention_mask=mask)
