"""Timestep embeddings for the denoiser: the sinusoidal features psi(t) and the MLP on top of them.

The paper (LD4LG, Sec. 4) feeds `psi(t)` through an MLP and uses the result twice: added to every position
of the input sequence, and as the input of the per-block AdaLN modulation. `TimeEmbedding` produces the
shared hidden vector; the two uses each get their own small head in `denoiser.py` / `blocks.py`.
"""
import math

import flax.linen as nn
import jax.numpy as jnp

from ldlg.networks.attention import relative_position_bucket


def sinusoidal_embedding(t: jnp.ndarray, dim: int, max_period: float = 10000.0) -> jnp.ndarray:
  """Transformer-style sinusoidal features of a (real-valued) timestep.

  Frequencies are geometric from 1 down to 1/max_period, as in DDPM and the LD4LG reference code:
  `freq_i = max_period ** (-i / (dim/2 - 1))`, output `[sin(t * freq), cos(t * freq)]`.

  Args:
    t: [B] timesteps, any real dtype (integer steps are cast to float32). Units: diffusion steps on a
      0..1000 scale (the caller rescales if its schedule has a different number of steps).
    dim: even feature width, at least 4.
    max_period: longest period of the sinusoids, in the units of `t`.

  Returns:
    [B, dim] float32 features.
  """
  if dim % 2 or dim < 4:
    raise ValueError(f"sinusoidal_embedding needs an even dim >= 4, got dim={dim}; use an even model width.")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeEmbedding(nn.Module):
  """psi(t) -> Dense(hidden) -> GELU -> Dense(hidden): the shared time vector of the denoiser.

  Attributes:
    dim: width of the sinusoidal features psi(t) (the transformer width in the reference code).
    hidden_dim: width of the returned time vector (4 * dim in the reference code).
    num_timesteps: number of discrete steps of the schedule; `t` is rescaled to a 0..1000 range so the
      sinusoid frequencies cover the same range whatever the schedule length.
    dtype: compute dtype of the Dense layers (params stay float32).
    gelu_approximate: tanh GELU (flax's default, True) or the exact erf GELU (PyTorch's nn.GELU, False).
  """
  dim: int
  hidden_dim: int
  num_timesteps: int = 1000
  dtype: jnp.dtype = jnp.float32
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
    """t: [B] int or float timesteps in [0, num_timesteps). Returns [B, hidden_dim] in `dtype`."""
    t = jnp.asarray(t, jnp.float32) * (1000.0 / self.num_timesteps)
    h = sinusoidal_embedding(t, self.dim)
    h = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, name="dense_in")(h)
    h = nn.gelu(h, approximate=self.gelu_approximate)
    return nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, name="dense_out")(h)


class ScaledRelativePositionBias(nn.Module):
  """T5 relative position bias as x-transformers (LD4LG's official v1 code) builds it: `scale · b[bucket, h]`.

  The table is initialised N(0, 1) and multiplied by `scale` (sqrt(head width) there) in the forward pass,
  so with Adam its effective learning rate is `scale` times that of a table stored at its final size.
  The parameter has the name and shape of `attention.RelativePositionBias`'s ("embedding" [buckets, heads]),
  so the two are interchangeable in a params tree.

  Attributes:
    num_heads: one scalar per head and bucket.
    num_buckets: see `attention.relative_position_bucket`.
    max_distance: see `attention.relative_position_bucket`.
    scale: forward multiplier of the table.
  """
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  scale: float = 1.0

  @nn.compact
  def __call__(self, length: int) -> jnp.ndarray:
    """Returns the float32 bias [1, H, L, L] for a sequence of `length` positions."""
    table = self.param("embedding", nn.initializers.normal(stddev=1.0), (self.num_buckets, self.num_heads),
                       jnp.float32)
    pos = jnp.arange(length)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
    return jnp.transpose(table[buckets] * self.scale, (2, 0, 1))[None]
