"""Which examples a training step reads, as a function of (seed, step) alone.

Epoch e visits the examples in the order `default_rng([seed, e]).permutation(n)`; step s takes the next
`batch_size` of that stream, crossing into the next epoch when needed (no example dropped). Because nothing
depends on earlier steps, a job resumed at step s reads exactly what an uninterrupted job would have.
Used by the autoencoder pretraining and the AR baseline (the latent reader has its own drop-remainder variant).

`LengthGroupedOrder` is the opt-in alternative (`autoencoder.group_by_length`, `data.group_by_length`): batches
of similar length in a random order, also a function of (seed, step) alone, so resume stays exact.
"""

import functools

import numpy as np


@functools.lru_cache(maxsize=4)  # One permutation serves every step of its epoch.
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the n examples in one epoch."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
  """Example indices [batch_size] of step `step`'s batch."""
  out = []
  pos = step * batch_size
  while len(out) < batch_size:
    epoch, offset = divmod(pos, n)
    take = min(batch_size - len(out), n - offset)
    out.extend(epoch_permutation(seed, epoch, n)[offset:offset + take])
    pos += take
  return np.asarray(out)


class LengthGroupedOrder:
  """Batches of similar length, each still a function of (seed, step) alone: padding and FLOPs drop while the
  batch order stays random (the mega-batch rule of Hugging Face's `group_by_length`).

  Epoch e takes the examples in `default_rng([seed, e]).permutation(n)` order (as `batch_indices` does), drops
  the last n mod B (a different remainder every epoch), cuts the rest into groups of `group_batches` x B
  consecutive examples, sorts each group by length (stable) and cuts it into its `group_batches` batches, then
  visits the epoch's n // B batches in `default_rng([seed, e, 1]).permutation(n // B)` order. Every kept
  example is seen once per epoch. `group_batches=1` keeps the random batches (their members sorted).

  Example (E2E, 64 sentences a batch, groups of 50 batches): a random batch's longest sentence is about twice
  its mean length, so padding to it wastes about half the tokens; a grouped batch spans a token or two.
  """

  def __init__(self, lengths, batch_size: int, seed: int, group_batches: int):
    """lengths: [n] ints, each example's length (what padding follows); batch_size: B; group_batches: >= 1."""
    self.lengths = np.asarray(lengths)
    n = len(self.lengths)
    if self.lengths.ndim != 1:
      raise ValueError(f"lengths must be one length per example, got shape {self.lengths.shape}")
    if batch_size < 1 or group_batches < 1 or seed < 0:
      raise ValueError(f"batch_size and group_batches must be >= 1 and seed >= 0; got batch_size={batch_size}, "
                       f"group_batches={group_batches}, seed={seed}")
    if n < batch_size:
      raise ValueError(f"batch size {batch_size} is larger than the {n} examples")
    self.batch_size, self.seed, self.group_batches = int(batch_size), int(seed), int(group_batches)
    self.steps_per_epoch = n // batch_size
    self._epoch: tuple[int, np.ndarray] | None = None

  def epoch_batches(self, epoch: int) -> np.ndarray:
    """[steps_per_epoch, B] example indices of the epoch's batches, in visiting order."""
    if self._epoch is None or self._epoch[0] != epoch:
      n, b = len(self.lengths), self.batch_size
      kept = epoch_permutation(self.seed, epoch, n)[:self.steps_per_epoch * b]
      group = self.group_batches * b
      chunks = [kept[i:i + group] for i in range(0, len(kept), group)]
      ordered = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
      batches = ordered.reshape(self.steps_per_epoch, b)
      visit = np.random.default_rng([self.seed, epoch, 1]).permutation(self.steps_per_epoch)
      self._epoch = (epoch, batches[visit])
    return self._epoch[1]

  def batch(self, step: int) -> np.ndarray:
    """[B] example indices of step `step`'s batch."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, pos = divmod(int(step), self.steps_per_epoch)
    return self.epoch_batches(epoch)[pos]
