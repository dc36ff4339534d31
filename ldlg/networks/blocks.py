"""The denoiser's transformer block and its feed-forward pieces (GeGLU, AdaLN).

One pre-LN block (LD4LG Sec. 4):
  h = h + SelfAttn(LN(h))          with the shared T5 relative position bias and the key padding mask
  h = h + CrossAttn(LN(h), memory) memory = [self-conditioning projection (or h_null), class token]
  h = h + AdaLN(GeGLU(LN(h)), t)   AdaLN(u, t) = t_s * LayerNorm(u) + t_b

`DenoiserBlock(remat=True)` recomputes the block's activations in the backward pass instead of keeping them
(`nn.remat`, i.e. jax.checkpoint): the same outputs, gradients and parameter tree, for about a third more
compute, with only the block inputs stored per layer. That is what lets the paper-size model train at long
lengths or large per-device batches on a memory-bound accelerator.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from ldlg.networks.attention import Attention


def _layer_norm(name: str, affine: bool = True) -> nn.LayerNorm:
  # float32 statistics whatever the compute dtype: bf16 variance of wide activations is too coarse.
  return nn.LayerNorm(epsilon=1e-5, use_scale=affine, use_bias=affine, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


class GeGLU(nn.Module):
  """Feed-forward `W_out (x W_a ⊙ GELU(x W_g))` (Shazeer 2020), hidden width `hidden_dim`.

  Attributes:
    hidden_dim: width of the gated hidden layer (ff_mult * dim).
    dropout: dropout on the gated hidden layer, as in the reference x-transformers feed-forward.
    dtype: compute dtype (params stay float32).
    gelu_approximate: tanh GELU (default; Flax's) or the exact erf GELU (PyTorch's nn.GELU, the official code).
  """
  hidden_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    """x: [B, L, D] -> [B, L, D] in `dtype`."""
    a, gate = jnp.split(nn.Dense(2 * self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32,
                                 name="wi")(x), 2, axis=-1)
    h = a * nn.gelu(gate, approximate=self.gelu_approximate)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32, name="wo")(h)


class AdaLayerNorm(nn.Module):
  """`AdaLN(u, t) = (1 + s(t)) ⊙ LayerNorm(u) + b(t)`, `(s, b) = Dense(GELU(time_emb))`.

  The modulation Dense is zero-initialised, so at initialisation AdaLN is a plain affine-free LayerNorm
  (t_s = 1, t_b = 0) and the time dependence is learned from there (as the reference `ScaleShift`).
  LayerNorm has no affine parameters of its own: the Dense bias already provides a static scale/shift.

  Attributes:
    dtype: compute dtype of the modulation Dense (the normalisation itself is float32).
  """
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, u: jnp.ndarray, time_act: jnp.ndarray) -> jnp.ndarray:
    """u: [B, L, D]; time_act: [B, T] (already activated time vector). Returns float32 [B, L, D]."""
    dim = u.shape[-1]
    mod = nn.Dense(2 * dim, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                   name="modulation")(time_act)
    scale, shift = jnp.split(mod.astype(jnp.float32)[:, None, :], 2, axis=-1)
    return (1.0 + scale) * _layer_norm("norm", affine=False)(u) + shift


class DenoiserBlock(nn.Module):
  """Pre-LN transformer block: self-attention, cross-attention to the conditioning memory, GeGLU + AdaLN.

  Attributes:
    num_heads: attention heads (both attentions).
    ff_mult: GeGLU hidden width = ff_mult * model width.
    dropout: attention-probability and feed-forward hidden dropout.
    dtype: compute dtype; the residual stream is kept in float32.
    attention_impl: `Attention.implementation` of both attentions ("plain", "xla", "cudnn", "auto").
    remat: recompute activations in the backward pass (see the module docstring).
    gelu_approximate: the GeGLU's GELU: tanh (default) or exact.
  """
  num_heads: int
  ff_mult: int = 4
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  attention_impl: str = "plain"
  remat: bool = False
  gelu_approximate: bool = True

  def __call__(self, h: jnp.ndarray, mask: jnp.ndarray, rel_bias: jnp.ndarray, memory: jnp.ndarray,
               memory_mask: jnp.ndarray, time_act: jnp.ndarray, *, deterministic: bool = True
               ) -> jnp.ndarray:
    """One block.

    Args:
      h: [B, L, D] float32 residual stream.
      mask: [B, L] bool, True = valid token (self-attention key mask).
      rel_bias: [1, H, L, L] float32 T5 relative position bias (shared by all blocks).
      memory: [B, M, D] cross-attention memory.
      memory_mask: [B, M] bool, True = memory entry may be attended to.
      time_act: [B, T] activated time vector for AdaLN.
      deterministic: disables dropout.

    Returns:
      [B, L, D] float32.
    """
    body = type(self)._body
    if self.remat:
      # Lifted over the method, so the parameters stay where the plain block keeps them; `deterministic`
      # is bound first because remat traces only array arguments.
      body = nn.remat(functools.partial(_call_body, deterministic=deterministic))
      return body(self, h, mask, rel_bias, memory, memory_mask, time_act)
    return body(self, h, mask, rel_bias, memory, memory_mask, time_act, deterministic=deterministic)

  @nn.compact
  def _body(self, h, mask, rel_bias, memory, memory_mask, time_act, *, deterministic):
    attn = lambda name: Attention(self.num_heads, self.dropout, self.dtype, self.attention_impl, name=name)
    x = _layer_norm("ln_self")(h)
    h = h + attn("self_attn")(x, x, mask, rel_bias, deterministic=deterministic).astype(jnp.float32)
    x = _layer_norm("ln_cross")(h)
    h = h + attn("cross_attn")(x, memory, memory_mask, deterministic=deterministic).astype(jnp.float32)
    x = _layer_norm("ln_ff")(h)
    u = GeGLU(self.ff_mult * h.shape[-1], self.dropout, self.dtype, self.gelu_approximate, name="ff")(
        x, deterministic=deterministic)
    return h + AdaLayerNorm(self.dtype, name="ada_ln")(u, time_act)


def _call_body(block: DenoiserBlock, *args, deterministic: bool):
  return block._body(*args, deterministic=deterministic)  # pylint: disable=protected-access
