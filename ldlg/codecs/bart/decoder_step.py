"""The BART decoder as pure functions over Hugging Face Flax BART params, for incremental decoding.

HF's `FlaxBartForConditionalGeneration.decode(..., past_key_values=...)` recomputes the cross-attention
keys and values of the encoder states at every generated token (2·L·d² multiply-adds per layer per step,
several times the cost of the step itself for L ≈ 32). Here they are computed once per batch
(`precompute_cross_kv`) and the step (`decoder_step`) only projects the one new token. The maths is
exactly FlaxBart's post-LN decoder layer (tests compare logits with HF's full-sequence decoder).

Shapes: N = rows (batch × beams), T = max decode length, L = latent length, H heads, Dh = d_model / H.
"""
import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Params = Mapping[str, Any]
# One dict per decoder layer: {"k": [N, T, H, Dh], "v": [N, T, H, Dh]}. Every leaf has the row axis first,
# so beam search can reorder any cache (this one or a test double) with `x[indices]`.
Cache = tuple[dict[str, jax.Array], ...]
CrossKV = tuple[dict[str, jax.Array], ...]

_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

# BART's learned positional embedding table is offset by 2 (a fairseq legacy, kept by HF).
_POSITION_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
  """The static (hashable) facts about a BART decoder that the step function needs."""
  num_layers: int
  num_heads: int
  d_model: int
  vocab_size: int
  max_positions: int
  activation: str = "gelu"
  scale_embedding: bool = False
  tie_word_embeddings: bool = True
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config, dtype=jnp.float32) -> "DecoderSpec":
    """Builds the spec from a `transformers.BartConfig`."""
    if config.activation_function not in _ACTIVATIONS:
      raise ValueError(f"unsupported BART activation_function {config.activation_function!r}; "
                       f"supported: {sorted(_ACTIVATIONS)}")
    return cls(num_layers=config.decoder_layers, num_heads=config.decoder_attention_heads,
               d_model=config.d_model, vocab_size=config.vocab_size,
               max_positions=config.max_position_embeddings, activation=config.activation_function,
               scale_embedding=bool(config.scale_embedding),
               tie_word_embeddings=bool(config.tie_word_embeddings), dtype=dtype)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


def _dense(p: Params, x: jax.Array, dtype) -> jax.Array:
  y = jnp.dot(x.astype(dtype), p["kernel"].astype(dtype))
  return y + p["bias"].astype(dtype) if "bias" in p else y


def _layer_norm(p: Params, x: jax.Array, dtype, eps: float = 1e-5) -> jax.Array:
  # Statistics in float32 as flax.linen.LayerNorm does, whatever the compute dtype.
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  return (y * p["scale"] + p["bias"]).astype(dtype)


def _split_heads(x: jax.Array, spec: DecoderSpec) -> jax.Array:
  return x.reshape(x.shape[:-1] + (spec.num_heads, spec.head_dim))


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, dtype) -> jax.Array:
  """One query per row. q: [N, H, Dh]; k, v: [N, S, H, Dh]; valid: [N, S] bool. Returns [N, H*Dh]."""
  q = q / jnp.sqrt(q.shape[-1]).astype(dtype)
  logits = jnp.einsum("nhd,nshd->nhs", q, k)
  # Same additive bias as FlaxBartAttention (finfo.min, not -inf, so an all-masked row stays finite).
  bias = jnp.where(valid, 0.0, jnp.finfo(dtype).min).astype(dtype)
  weights = jax.nn.softmax(logits + bias[:, None, :], axis=-1).astype(dtype)
  out = jnp.einsum("nhs,nshd->nhd", weights, v)
  return out.reshape(out.shape[0], -1)


def _decoder_params(params: Params) -> Params:
  return params["model"]["decoder"]


def precompute_cross_kv(params: Params, spec: DecoderSpec, encoder_states: jax.Array) -> CrossKV:
  """Cross-attention keys/values of every decoder layer.

  Args:
    params: the `FlaxBartForConditionalGeneration` params tree.
    spec: the decoder's static facts.
    encoder_states: [N, L, d] encoder output (the latents).
  Returns:
    A tuple (one per layer) of {"k": [N, L, H, Dh], "v": [N, L, H, Dh]}.
  """
  layers = _decoder_params(params)["layers"]
  out = []
  for i in range(spec.num_layers):
    p = layers[str(i)]["encoder_attn"]
    out.append({"k": _split_heads(_dense(p["k_proj"], encoder_states, spec.dtype), spec),
                "v": _split_heads(_dense(p["v_proj"], encoder_states, spec.dtype), spec)})
  return tuple(out)


def init_cache(spec: DecoderSpec, num_rows: int, max_length: int) -> Cache:
  """An empty self-attention cache for `num_rows` sequences of up to `max_length` tokens."""
  shape = (num_rows, max_length, spec.num_heads, spec.head_dim)
  return tuple({"k": jnp.zeros(shape, spec.dtype), "v": jnp.zeros(shape, spec.dtype)}
               for _ in range(spec.num_layers))


def decoder_step(params: Params, spec: DecoderSpec, tokens: jax.Array, position: jax.Array,
                 cache: Cache, cross_kv: CrossKV, encoder_mask: jax.Array) -> tuple[jax.Array, Cache]:
  """Runs the decoder on one token per row, reading and extending the self-attention cache.

  Args:
    params: the `FlaxBartForConditionalGeneration` params tree.
    spec: the decoder's static facts.
    tokens: [N] int32, the token at index `position` of each row's sequence.
    position: scalar int32, the index of `tokens` in the decoder sequence (0 = decoder start token).
    cache: self-attention keys/values of positions < `position` (see `init_cache`).
    cross_kv: from `precompute_cross_kv`, rows aligned with `tokens`.
    encoder_mask: [N, L] bool, True at valid latent positions.
  Returns:
    logits: [N, V] float32, next-token logits (for index position + 1).
    cache: the cache with this position's keys/values written.
  """
  dtype = spec.dtype
  dec = _decoder_params(params)
  shared = params["model"]["shared"]["embedding"]
  embed_scale = np.sqrt(spec.d_model) if spec.scale_embedding else 1.0
  h = shared[tokens].astype(dtype) * embed_scale
  h = h + dec["embed_positions"]["embedding"][position + _POSITION_OFFSET].astype(dtype)
  h = _layer_norm(dec["layernorm_embedding"], h, dtype)

  max_length = cache[0]["k"].shape[1]
  self_valid = jnp.broadcast_to(jnp.arange(max_length) <= position, (tokens.shape[0], max_length))
  new_cache = []
  for i in range(spec.num_layers):
    p = dec["layers"][str(i)]
    # Self-attention over the cached prefix plus this token.
    sa = p["self_attn"]
    q = _split_heads(_dense(sa["q_proj"], h, dtype), spec)
    k_new = _split_heads(_dense(sa["k_proj"], h, dtype), spec)
    v_new = _split_heads(_dense(sa["v_proj"], h, dtype), spec)
    k = jax.lax.dynamic_update_slice_in_dim(cache[i]["k"], k_new[:, None], position, axis=1)
    v = jax.lax.dynamic_update_slice_in_dim(cache[i]["v"], v_new[:, None], position, axis=1)
    new_cache.append({"k": k, "v": v})
    att = _attend(q, k, v, self_valid, dtype)
    h = _layer_norm(p["self_attn_layer_norm"], h + _dense(sa["out_proj"], att, dtype), dtype)
    # Cross-attention to the latents.
    ca = p["encoder_attn"]
    q = _split_heads(_dense(ca["q_proj"], h, dtype), spec)
    att = _attend(q, cross_kv[i]["k"], cross_kv[i]["v"], encoder_mask, dtype)
    h = _layer_norm(p["encoder_attn_layer_norm"], h + _dense(ca["out_proj"], att, dtype), dtype)
    # Feed-forward.
    ff = _dense(p["fc2"], _ACTIVATIONS[spec.activation](_dense(p["fc1"], h, dtype)), dtype)
    h = _layer_norm(p["final_layer_norm"], h + ff, dtype)

  if spec.tie_word_embeddings:
    logits = jnp.dot(h, shared.T.astype(dtype))
  else:
    logits = jnp.dot(h, params["lm_head"]["kernel"].astype(dtype))
  logits = logits + params["final_logits_bias"][0].astype(dtype)
  return logits.astype(jnp.float32), tuple(new_cache)
