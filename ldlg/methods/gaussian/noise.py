"""Gaussian noise for a shard of a global batch, the same whatever the split over devices.

A sampler sharded over devices hands each device `mask` [b, L] of a global batch of G examples and its
`example_offset` in it. Every noise array is drawn for the whole global batch from one key and sliced, so
device d gets exactly the rows a single device would have drawn for them: sampling on n devices equals sampling
on one. Drawing G rows on every device costs G·L·D normals per step, small beside the network's forward pass.
A sampler whose batch is cut to a length bucket draws at the model's full length and keeps the first positions
(`full_length`), so bucketing does not change what a row samples.
"""

import jax


def batch_normal(key: jax.Array, shape: tuple[int, ...], example_offset=0, global_batch: int | None = None,
                 dtype=None, full_length: int | None = None) -> jax.Array:
  """N(0, 1) of `shape` = [b, L, ...]: rows example_offset .. example_offset + b of a [global_batch, ...] draw.

  With global_batch None (or equal to b and offset 0) and full_length None (or L) this is exactly
  `jax.random.normal(key, shape)`. With full_length > L, the draw is made at [.., full_length, ...] and its first L
  positions kept: a batch cut to a shorter width (a length bucket) gets, at each of its positions, the noise the
  full-width batch would have had there, so the sample does not depend on the bucket.
  """
  dtype = dtype or jax.numpy.float32
  length = shape[1] if len(shape) > 1 else None
  if full_length is not None and length is not None and full_length != length:
    if full_length < length:
      raise ValueError(f"full_length={full_length} is shorter than the batch's width {length}")
    full = batch_normal(key, (shape[0], full_length) + tuple(shape[2:]), example_offset, global_batch, dtype)
    return full[:, :length]
  if global_batch is None or (global_batch == shape[0] and isinstance(example_offset, int)
                              and example_offset == 0):
    return jax.random.normal(key, shape, dtype)
  full = jax.random.normal(key, (global_batch,) + tuple(shape[1:]), dtype)
  return jax.lax.dynamic_slice_in_dim(full, example_offset, shape[0], axis=0)
