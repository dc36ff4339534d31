"""Gaussian noise for a shard of a global batch, the same whatever the split over devices.

A sampler sharded over devices hands each device `mask` [b, L] of a global batch of G examples and its
`example_offset` in it. Every noise array is drawn for the whole global batch from one key and sliced, so
device d gets exactly the rows a single device would have drawn for them: sampling on n devices equals sampling
on one. Drawing G rows on every device costs G·L·D normals per step, small beside the network's forward pass.
"""

import jax


def batch_normal(key: jax.Array, shape: tuple[int, ...], example_offset=0, global_batch: int | None = None,
                 dtype=None) -> jax.Array:
  """N(0, 1) of `shape` = [b, ...]: rows example_offset .. example_offset + b of a [global_batch, ...] draw.

  With global_batch None (or equal to b and offset 0) this is exactly `jax.random.normal(key, shape)`.
  """
  dtype = dtype or jax.numpy.float32
  if global_batch is None or (global_batch == shape[0] and isinstance(example_offset, int)
                              and example_offset == 0):
    return jax.random.normal(key, shape, dtype)
  full = jax.random.normal(key, (global_batch,) + tuple(shape[1:]), dtype)
  return jax.lax.dynamic_slice_in_dim(full, example_offset, shape[0], axis=0)
