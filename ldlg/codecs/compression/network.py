"""The compression network of LD4LG's later version: BART encoder states [L, d] <-> a fixed latent [N, w].

`PerceiverResampler` pools a variable-length, padded sequence of frozen BART encoder states into N learned
queries (Jaegle et al. 2021; Alayrac et al. 2022), then projects each to width w and l2-normalizes it to norm
`norm_scale` (sqrt(w) by default, so every coordinate has unit RMS, as the paper's 32 × 64 latents of norm
sqrt(64)). `LatentReconstructor` maps such a latent back to N vectors of the BART width, the memory the frozen
BART decoder cross-attends to. `CompressionAutoencoder` holds both, trained through the frozen decoder
(`train.py`).

As in the official code, the resampler's queries attend to the encoder states *and* to the queries
themselves (keys/values [x ; latents]), a pre-LN residual attention + feed-forward per layer; the reconstructor
is a small bidirectional transformer over the N latent positions. Attention is `ldlg.networks.attention`'s
(float32 logits and softmax, exact zeros at masked keys), so padding never reaches a latent.
"""
import math

import flax.linen as nn
import jax.numpy as jnp

from ldlg.networks.attention import Attention


def l2_normalize(x: jnp.ndarray, scale: float, eps: float = 1e-6) -> jnp.ndarray:
  """x / ||x|| · scale over the last axis (float32); a zero vector stays 0."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps) * scale


def _ln(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class _FeedForward(nn.Module):
  """Dense(ff_mult · w) -> GELU -> Dense(w)."""
  ff_mult: int = 4

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = nn.gelu(nn.Dense(self.ff_mult * width, name="wi")(x), approximate=False)
    return nn.Dense(width, name="wo")(h)


class PerceiverResampler(nn.Module):
  """Encoder states [B, L, d] (padded) -> latents [B, num_latents, latent_width] of norm `norm_scale`.

  Attributes:
    num_latents: N, the fixed number of latent vectors (32 in the paper).
    latent_width: w, each latent's width (64 in the paper).
    width: the resampler's internal width (attention and feed-forward).
    num_layers: attention + feed-forward layers.
    num_heads: attention heads; must divide `width`.
    max_len: longest input sequence (learned absolute positions).
    ff_mult: feed-forward hidden width = ff_mult · width.
    l2_normalize: normalize every latent vector to norm `norm_scale`.
    norm_scale: the norm; 0 = sqrt(latent_width).
  """
  num_latents: int = 32
  latent_width: int = 64
  width: int = 256
  num_layers: int = 3
  num_heads: int = 4
  max_len: int = 64
  ff_mult: int = 4
  l2_normalize: bool = True
  norm_scale: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """x: [B, L, d] encoder states; mask: [B, L] bool (True = token). Returns [B, N, w] float32."""
    batch, length, _ = x.shape
    if length > self.max_len:
      raise ValueError(f"input length {length} exceeds the resampler's max_len={self.max_len}")
    if mask.shape != (batch, length) or mask.dtype != jnp.bool_:
      raise ValueError(f"mask must be bool [B, L] = {(batch, length)}, got {mask.dtype} {mask.shape}")
    x = jnp.where(mask[..., None], x, 0.0).astype(jnp.float32)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_len, self.width))
    x = nn.Dense(self.width, name="input_proj")(x) + pos[None, :length]
    queries = self.param("queries", nn.initializers.normal(0.02), (self.num_latents, self.width))
    lat = jnp.broadcast_to(queries, (batch, self.num_latents, self.width))
    key_mask = jnp.concatenate([mask, jnp.ones((batch, self.num_latents), bool)], axis=1)
    for i in range(self.num_layers):
      q = _ln(f"ln_latents_{i}")(lat)
      kv = jnp.concatenate([_ln(f"ln_inputs_{i}")(x), q], axis=1)
      lat = lat + Attention(self.num_heads, name=f"attn_{i}")(q, kv, key_mask)
      lat = lat + _FeedForward(self.ff_mult, name=f"ff_{i}")(_ln(f"ln_ff_{i}")(lat))
    out = nn.Dense(self.latent_width, name="output_proj")(_ln("final_norm")(lat))
    if self.l2_normalize:
      out = l2_normalize(out, self.norm_scale or math.sqrt(self.latent_width))
    return out


class LatentReconstructor(nn.Module):
  """Latents [B, N, w] -> BART-decoder memory [B, N, out_dim] (a small bidirectional transformer).

  Attributes:
    out_dim: the BART width d_model.
    num_latents: N (learned positions).
    width, num_layers, num_heads, ff_mult: the transformer's sizes.
  """
  out_dim: int
  num_latents: int = 32
  width: int = 256
  num_layers: int = 3
  num_heads: int = 4
  ff_mult: int = 4

  @nn.compact
  def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
    batch, n, _ = z.shape
    if n != self.num_latents:
      raise ValueError(f"expected {self.num_latents} latent vectors, got {n}")
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (self.num_latents, self.width))
    h = nn.Dense(self.width, name="input_proj")(z.astype(jnp.float32)) + pos[None]
    every = jnp.ones((batch, n), bool)
    for i in range(self.num_layers):
      u = _ln(f"ln_attn_{i}")(h)
      h = h + Attention(self.num_heads, name=f"attn_{i}")(u, u, every)
      h = h + _FeedForward(self.ff_mult, name=f"ff_{i}")(_ln(f"ln_ff_{i}")(h))
    return nn.Dense(self.out_dim, name="output_proj")(_ln("final_norm")(h))


class CompressionAutoencoder(nn.Module):
  """`encode`: BART states -> normalized latents; `decode`: latents -> BART-decoder memory.

  Attributes:
    out_dim: BART's d_model.
    num_latents, latent_width: the latent's shape (32 × 64 in the paper).
    width, num_layers, num_heads, max_len, ff_mult: sizes of both networks (max_len: longest BART sequence).
    l2_normalize, norm_scale: see `PerceiverResampler`.
  """
  out_dim: int
  num_latents: int = 32
  latent_width: int = 64
  width: int = 256
  num_layers: int = 3
  num_heads: int = 4
  max_len: int = 64
  ff_mult: int = 4
  l2_normalize: bool = True
  norm_scale: float = 0.0

  def setup(self):
    self.resampler = PerceiverResampler(self.num_latents, self.latent_width, self.width, self.num_layers,
                                        self.num_heads, self.max_len, self.ff_mult, self.l2_normalize,
                                        self.norm_scale)
    self.reconstructor = LatentReconstructor(self.out_dim, self.num_latents, self.width, self.num_layers,
                                             self.num_heads, self.ff_mult)

  def encode(self, x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """[B, L, d], [B, L] bool -> [B, N, w]."""
    return self.resampler(x, mask)

  def decode(self, z: jnp.ndarray) -> jnp.ndarray:
    """[B, N, w] -> [B, N, out_dim] memory for the BART decoder (every position valid)."""
    return self.reconstructor(z)

  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    return self.decode(self.encode(x, mask))
