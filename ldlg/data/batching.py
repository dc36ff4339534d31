"""The one padding rule for batches of variable-length sequences: pad to the next multiple of a bucket size.

Every batch builder of the project (latent store, token batches, autoencoder pretraining, encoding, scoring)
pads its sequences to `pad_width(longest, multiple, max_length)`, so a run compiles at most
max_length / multiple shapes and short batches do not pay for max_length.
"""

import math


def pad_width(longest: int, multiple: int, max_length: int) -> int:
  """Smallest multiple of `multiple` >= `longest`, capped at `max_length` (and at least `multiple` or
  max_length, whichever is smaller)."""
  if multiple < 1:
    raise ValueError(f"the bucket multiple must be >= 1, got {multiple}")
  return min(max_length, max(1, int(math.ceil(max(longest, 1) / multiple))) * multiple)


def bucket_widths(max_length: int, multiple: int) -> tuple[int, ...]:
  """Every width `pad_width` can return: multiples of `multiple` below max_length, then max_length."""
  return tuple(range(multiple, max_length, multiple)) + (max_length,)
