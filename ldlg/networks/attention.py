"""Multi-head attention with an additive bias and a key mask, and the T5 relative position bias.

Written by hand (rather than `nn.MultiHeadDotProductAttention`, whose `__call__` in flax 0.12 takes no
additive bias) so that the logits, the T5 bias and the softmax are all in float32 whatever the compute
dtype, and so that masked keys get exactly zero weight (padding never leaks into valid outputs).

`Attention(implementation=...)` can hand the core (logits, bias, mask, softmax, weighted sum) to
`jax.nn.dot_product_attention` instead ("xla": the same maths as one XLA fusion-friendly call; "cudnn": the
cuDNN fused kernel on NVIDIA GPUs, bf16/fp16 only; "auto": let JAX choose). It computes the same function: the
logits and softmax are float32 there too and masked keys get a large negative logit (weight exactly 0 whenever a
key is valid). It has no dropout on the probabilities, so while attention dropout is active (training with
dropout > 0) the plain path runs whatever `implementation` says.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# Logit given to masked keys. Finite, so a query whose keys are all masked (an empty sequence) gets a
# uniform, finite softmax instead of NaN; exp(NEG_INF - max) underflows to exactly 0 when any key is valid.
NEG_INF = float(jnp.finfo(jnp.float32).min)

# `Attention.implementation` values, and what each passes to jax.nn.dot_product_attention.
IMPLEMENTATIONS = {"plain": None, "xla": "xla", "cudnn": "cudnn", "auto": None}


def relative_position_bucket(relative_position: jnp.ndarray, num_buckets: int = 32,
                             max_distance: int = 128) -> jnp.ndarray:
  """Bidirectional T5 bucketing of key-minus-query offsets (Raffel et al. 2020, HF `T5Attention`).

  Half of the buckets are for keys before the query, half for keys after it. In each half, the first
  `num_buckets // 4` offsets get a bucket each; larger offsets share logarithmically wider buckets up to
  `max_distance`, beyond which all offsets share the last bucket. Computed in float32 as T5 does, so the
  bucket boundaries match the reference implementations exactly.

  Args:
    relative_position: int array of `key_position - query_position`, any shape.
    num_buckets: total number of buckets (both directions), even, >= 4.
    max_distance: offsets with |offset| >= max_distance share the last bucket of their direction.

  Returns:
    int32 array of the same shape, values in [0, num_buckets).
  """
  half = num_buckets // 2
  # Keys after the query (positive offset) use the upper half of the buckets.
  bucket = jnp.where(relative_position > 0, half, 0).astype(jnp.int32)
  n = jnp.abs(relative_position).astype(jnp.int32)
  max_exact = half // 2
  # jnp.maximum keeps log() away from 0; those entries take the `is_small` branch anyway.
  n_f = jnp.maximum(n, max_exact).astype(jnp.float32)
  large = max_exact + (jnp.log(n_f / max_exact) / math.log(max_distance / max_exact)
                       * (half - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, half - 1)
  return bucket + jnp.where(n < max_exact, n, large)


class RelativePositionBias(nn.Module):
  """Learned T5 bias `b[h, bucket(j - i)]` added to the self-attention logits of query i and key j.

  Attributes:
    num_heads: one scalar per head and bucket.
    num_buckets: see `relative_position_bucket`.
    max_distance: see `relative_position_bucket`.
  """
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128

  @nn.compact
  def __call__(self, length: int) -> jnp.ndarray:
    """Returns the float32 bias [1, H, L, L] for a sequence of `length` positions (broadcast over batch)."""
    table = self.param("embedding", nn.initializers.normal(stddev=0.02),
                       (self.num_buckets, self.num_heads), jnp.float32)
    pos = jnp.arange(length)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
    return jnp.transpose(table[buckets], (2, 0, 1))[None]


class Attention(nn.Module):
  """Multi-head dot-product attention of `x` onto `memory` (self-attention when memory is x).

  q, k, v and the output projection have no bias (as in T5 and the LD4LG reference). Logits, bias and
  softmax are float32; the projections and the weighted sum run in `dtype`.

  Attributes:
    num_heads: number of heads; the model width must be divisible by it.
    dropout: dropout rate on the attention probabilities (used when `deterministic` is False).
    dtype: compute dtype of the projections (params stay float32).
    implementation: "plain" (the code below), or "xla", "cudnn", "auto" (jax.nn.dot_product_attention with
      that implementation; see the module docstring). Same parameters whichever is chosen.
  """
  num_heads: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  implementation: str = "plain"

  @nn.compact
  def __call__(self, x: jnp.ndarray, memory: jnp.ndarray, key_mask: jnp.ndarray,
               bias: jnp.ndarray | None = None, *, deterministic: bool = True) -> jnp.ndarray:
    """Attend from x to memory.

    Args:
      x: [B, L, D] queries.
      memory: [B, M, Dm] keys/values source.
      key_mask: [B, M] bool, True = the key may be attended to.
      bias: optional float [1 or B, H, L, M] added to the logits before masking.
      deterministic: disables dropout (rng stream "dropout" is used otherwise).

    Returns:
      [B, L, D] in `dtype`.
    """
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(f"unknown attention implementation {self.implementation!r}; choose one of "
                       f"{sorted(IMPLEMENTATIONS)}")
    dim = x.shape[-1]
    if dim % self.num_heads:
      raise ValueError(f"model width {dim} is not divisible by num_heads={self.num_heads}; "
                       "pick num_heads that divides dim.")
    head_dim = dim // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, head_dim), use_bias=False, dtype=self.dtype,
                                         param_dtype=jnp.float32, name=name)
    q = dense("query")(x)       # [B, L, H, Dh]
    k = dense("key")(memory)    # [B, M, H, Dh]
    v = dense("value")(memory)  # [B, M, H, Dh]
    out_proj = nn.DenseGeneral(dim, axis=(-2, -1), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                               name="out")
    dropout_active = self.dropout > 0 and not deterministic
    if self.implementation != "plain" and not dropout_active:
      out = jax.nn.dot_product_attention(
          q, k, v, bias=None if bias is None else bias.astype(jnp.float32), mask=key_mask[:, None, None, :],
          implementation=IMPLEMENTATIONS[self.implementation])
      return out_proj(out)
    logits = jnp.einsum("blhd,bmhd->bhlm", q, k, preferred_element_type=jnp.float32)
    logits = logits.astype(jnp.float32) / math.sqrt(head_dim)
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    # Replace (not add to) masked logits, so values at masked keys cannot reach the output at all.
    logits = jnp.where(key_mask[:, None, None, :], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(self.dropout)(probs, deterministic=deterministic)
    out = jnp.einsum("bhlm,bmhd->blhd", probs.astype(self.dtype), v)
    return out_proj(out)
