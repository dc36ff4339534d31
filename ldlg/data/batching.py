"""The one padding rule for batches of variable-length sequences: pad to the next multiple of a bucket size.

Every batch builder of the project (latent store, token batches, autoencoder pretraining, encoding, scoring)
pads its sequences to `pad_width(longest, multiple, max_length)`, so a run compiles at most
max_length / multiple shapes and short batches do not pay for max_length.
"""

import math
from typing import Sequence

import numpy as np


def pad_width(longest: int, multiple: int, max_length: int) -> int:
  """Smallest multiple of `multiple` >= `longest`, capped at `max_length` (and at least `multiple` or
  max_length, whichever is smaller)."""
  if multiple < 1:
    raise ValueError(f"the bucket multiple must be >= 1, got {multiple}")
  return min(max_length, max(1, int(math.ceil(max(longest, 1) / multiple))) * multiple)


def bucket_widths(max_length: int, multiple: int) -> tuple[int, ...]:
  """Every width `pad_width` can return: multiples of `multiple` below max_length, then max_length."""
  return tuple(range(multiple, max_length, multiple)) + (max_length,)


def pad_rows(seqs: Sequence[Sequence[int]], width: int, pad_id: int) -> np.ndarray:
  """[B, width] int32: each sequence left-aligned, cut to `width`, the rest `pad_id`."""
  out = np.full((len(seqs), width), pad_id, np.int32)
  for row, seq in enumerate(seqs):
    seq = seq[:width]
    out[row, :len(seq)] = seq
  return out


def teacher_forcing_batch(input_ids: np.ndarray, labels: np.ndarray, *, pad_id: int,
                          start_id: int) -> dict[str, np.ndarray]:
  """An encoder-decoder training batch: encoder `input_ids` [B, S] with its attention_mask (int32), `labels`
  [B, P] and the decoder's input [B, P], BART's shift_tokens_right (`start_id`, then the labels but the last)."""
  start = np.full((len(labels), 1), start_id, np.int32)
  return {"input_ids": input_ids, "attention_mask": (input_ids != pad_id).astype(np.int32),
          "decoder_input_ids": np.concatenate([start, labels[:, :-1]], axis=1), "labels": labels}


def reconstruction_batch(token_ids: Sequence[np.ndarray], step: int, *, batch_size: int, seed: int,
                         pad_multiple: int, max_length: int, pad_id: int, start_id: int) -> dict[str, np.ndarray]:
  """Step `step`'s batch of clean sentences to reconstruct (`step_batches.batch_indices`): the teacher-forcing
  arrays [B, P] (the same ids in and out) and `example_index` [B], step * batch_size + row, a global index unique
  over the run, so per-example noise keyed on it never repeats across steps and resumes exactly."""
  from ldlg.data.step_batches import batch_indices  # pylint: disable=import-outside-toplevel
  seqs = [token_ids[i] for i in batch_indices(step, len(token_ids), batch_size, seed)]
  ids = pad_rows(seqs, pad_width(max(len(s) for s in seqs), pad_multiple, max_length), pad_id)
  batch = teacher_forcing_batch(ids, ids, pad_id=pad_id, start_id=start_id)
  batch["example_index"] = (step * batch_size + np.arange(len(seqs))).astype(np.int64)
  return batch
