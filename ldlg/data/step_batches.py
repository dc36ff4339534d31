"""Which examples a training step reads, as a function of (seed, step) alone.

Epoch e visits the examples in the order `default_rng([seed, e]).permutation(n)`; step s takes the next
`batch_size` of that stream, crossing into the next epoch when needed (no example dropped). Because nothing
depends on earlier steps, a job resumed at step s reads exactly what an uninterrupted job would have.
Used by the autoencoder pretraining and the AR baseline (the latent reader has its own drop-remainder variant).
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
