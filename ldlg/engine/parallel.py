"""Data parallelism over the local devices (pmap with one axis name) and the helpers every method shares.

A train or sample step runs under `jax.pmap(..., axis_name=AXIS)`. Code inside a step that needs a global
quantity (the global token count of a token-mean loss, the global batch size) calls `global_sum`, which is
`lax.psum` over the devices under pmap and the identity outside it, so the same loss function runs in a
plain `jax.jit` (tests, evaluation) and under pmap without a flag.
"""

import jax
import jax.numpy as jnp
import numpy as np

AXIS = "batch"


def global_sum(x):
  """Sum of `x` over the data-parallel devices of this step (the identity outside pmap)."""
  try:
    return jax.lax.psum(x, AXIS)
  except NameError:  # Unbound axis name: not under pmap.
    return x


def global_mean(x):
  """Mean of `x` over the data-parallel devices of this step (the identity outside pmap)."""
  try:
    return jax.lax.pmean(x, AXIS)
  except NameError:
    return x


def global_token_mean(per_token, weights):
  """Each device's share of the weighted mean over every device's tokens, times the device count: the engine's
  pmean of it (and of its gradient) is then the global token mean, however the batch is split (a mean of
  per-device means would weight a device's tokens by how few it has). Outside pmap: the weighted mean.

  Args:
    per_token: [B, L] values (e.g. cross-entropy).
    weights: [B, L] token weights (1 at real tokens, 0 at padding).
  """
  return (per_token * weights).sum() * global_sum(1.0) / global_sum(weights.sum())


def device_index():
  """This device's position on the data-parallel axis (0 outside pmap)."""
  try:
    return jax.lax.axis_index(AXIS)
  except NameError:
    return jnp.zeros((), jnp.int32)


def replicate(tree, devices=None):
  """One copy per local device (leading axis = device), for pmap.

  Placed exactly as pmap places its outputs (a 1-D mesh named after the pmap axis), so the state that
  comes back from step 1 has the same sharding as the one that went in and step 2 does not recompile.
  """
  devices = list(devices or jax.local_devices())
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                        jax.sharding.PartitionSpec(AXIS))
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), sharding), tree)


def unreplicate(tree):
  """The first local device's copy. (flax.jax_utils.unreplicate returns a 1-device tree unchanged, with the
  device axis still on, so it is not used here.) In a multi-process job a pmapped array spans devices of other
  processes too; this process's own first copy is taken."""
  def first(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x.addressable_data(0)
    return x[0]
  return jax.tree.map(first, tree)


def global_norm(tree) -> jax.Array:
  """sqrt of the sum of squares of every leaf, in float32 (inf or NaN if any leaf is)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def shard_batch(batch: dict, num_devices: int) -> dict:
  """[G, ...] host arrays -> [num_devices, G / num_devices, ...] (contiguous shares)."""
  def split(x):
    x = np.asarray(x)
    if x.shape[0] % num_devices:
      raise ValueError(f"a batch of {x.shape[0]} does not split over {num_devices} devices; use a multiple")
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
  return {k: split(v) for k, v in batch.items()}
