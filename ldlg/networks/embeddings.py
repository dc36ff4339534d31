"""Timestep embeddings for the denoiser: the sinusoidal features psi(t) and the MLP on top of them.

The paper (LD4LG, Sec. 4) feeds `psi(t)` through an MLP and uses the result twice: added to every position
of the input sequence, and as the input of the per-block AdaLN modulation. `TimeEmbedding` produces the
shared hidden vector; the two uses each get their own small head in `denoiser.py` / `blocks.py`.
"""
import math

import flax.linen as nn
import jax.numpy as jnp


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
  """
  dim: int
  hidden_dim: int
  num_timesteps: int = 1000
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
    """t: [B] int or float timesteps in [0, num_timesteps). Returns [B, hidden_dim] in `dtype`."""
    t = jnp.asarray(t, jnp.float32) * (1000.0 / self.num_timesteps)
    h = sinusoidal_embedding(t, self.dim)
    h = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, name="dense_in")(h)
    h = nn.gelu(h)
    return nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, name="dense_out")(h)
