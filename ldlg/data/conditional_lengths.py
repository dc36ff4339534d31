"""P(target length | source length): the length of a sequence-to-sequence output, drawn given its source.

Latent-diffusion samplers generate at a length fixed before the first step (the padding mask). Unconditional LD4LG
draws it from the training targets' length histogram; for sequence-to-sequence that ignores the one thing that
predicts it best. On E2E the source's token count explains about half the variance of the target's (target length
std 7.7 tokens overall, 5.5 given the source length, 4.7 given the source itself): a two-slot meaning
representation averages 13 target tokens, an eight-slot one 36. A length drawn from the marginal is often far too
short for a long source, so slots cannot fit.

`SourceLengthModel` is the empirical conditional histogram of the training pairs, with a backoff for sparse source
lengths: the pairs whose source length lies in the narrowest window [s - k, s + k] holding at least `min_count`
pairs. A source longer or shorter than any seen uses the window around the nearest seen length. No parameters are
learned, so there is nothing to train or checkpoint: it is fitted from the stored lengths when sampling starts.
"""
from __future__ import annotations

import numpy as np


class SourceLengthModel:
  """Empirical P(target length | source length) with a widening-window backoff.

  Attributes:
    probs: [S + 1, L + 1] float64; row s is P(target length | source length s) (row sums are 1, column 0 is 0),
      for s in [0, S], S the longest training source. Longer sources use row S.
    window: [S + 1] int, the half-width k of the window each row was pooled over (0: its own pairs sufficed).
  """

  def __init__(self, source_lengths, target_lengths, *, max_length: int, min_count: int = 100):
    """Fits the table.

    Args:
      source_lengths: [N] int, each training pair's source length (tokens or encoder positions).
      target_lengths: [N] int, the same pairs' target lengths, each in [1, max_length].
      max_length: L, the longest target the sampler can make.
      min_count: the fewest training pairs a row is estimated from (capped at N).

    Raises:
      ValueError: empty or mismatched inputs, a target length outside [1, max_length], min_count < 1.
    """
    source_lengths = np.asarray(source_lengths, np.int64).reshape(-1)
    target_lengths = np.asarray(target_lengths, np.int64).reshape(-1)
    if source_lengths.size == 0 or source_lengths.shape != target_lengths.shape:
      raise ValueError(f"need one source length per target length and at least one pair, got "
                       f"{source_lengths.size} source and {target_lengths.size} target lengths")
    if target_lengths.min() < 1 or target_lengths.max() > max_length:
      raise ValueError(f"target lengths must lie in [1, max_length={max_length}], got {target_lengths.min()}.."
                       f"{target_lengths.max()}; raise max_length to the sampler's length")
    if source_lengths.min() < 0:
      raise ValueError(f"source lengths must be >= 0, got {source_lengths.min()}")
    if min_count < 1:
      raise ValueError(f"min_count must be >= 1, got {min_count}")
    min_count = min(int(min_count), source_lengths.size)
    longest = int(source_lengths.max())
    counts = np.zeros((longest + 1, max_length + 1), np.int64)  # counts[s, t]: pairs with source s, target t.
    np.add.at(counts, (source_lengths, target_lengths), 1)
    # Prefix sums over s make every window's histogram a difference of two rows.
    cumulative = np.concatenate([np.zeros((1, max_length + 1), np.int64), np.cumsum(counts, axis=0)])
    self.probs = np.zeros((longest + 1, max_length + 1), np.float64)
    self.window = np.zeros((longest + 1,), np.int64)
    for s in range(longest + 1):
      k = 0
      while True:
        lo, hi = max(s - k, 0), min(s + k, longest)
        pooled = cumulative[hi + 1] - cumulative[lo]
        if pooled.sum() >= min_count:
          break
        k += 1
      self.probs[s] = pooled / pooled.sum()
      self.window[s] = k
    self.max_length = int(max_length)

  @property
  def longest_source(self) -> int:
    return self.probs.shape[0] - 1

  def row(self, source_length: int) -> np.ndarray:
    """[L + 1] P(target length | source_length); sources beyond the longest seen use its row."""
    return self.probs[min(max(int(source_length), 0), self.longest_source)]

  def sample(self, rng: np.random.Generator, source_lengths) -> np.ndarray:
    """source_lengths [n] int -> [n] int64 target lengths in [1, L], one draw each (one uniform per row, so a
    batch's draws depend only on the generator's state and the rows)."""
    source_lengths = np.clip(np.asarray(source_lengths, np.int64).reshape(-1), 0, self.longest_source)
    cdf = np.cumsum(self.probs[source_lengths], axis=1)
    u = rng.random(source_lengths.shape[0])
    # The first length whose cumulative probability exceeds u; the min guards float round-off at the top.
    return np.minimum((cdf <= u[:, None]).sum(axis=1), self.max_length).astype(np.int64)

  def mean(self, source_length: int) -> float:
    """E[target length | source_length]."""
    row = self.row(source_length)
    return float((np.arange(row.shape[0]) * row).sum())
