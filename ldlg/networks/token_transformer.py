"""A bidirectional transformer over token ids: the denoiser of masked discrete diffusion (MDLM).

  h = Embed(tokens) + pos_emb [+ Dense(c)]                      # [B, L, dim]
  h = TokenBlock(h) x num_layers                                # self-attention + GeGLU (+ AdaLN on c)
  logits = Dense(LayerNorm(h))                                  # [B, L, vocab_size], float32

Built from the project's pieces (`networks/attention.py`: masked attention with the shared T5 relative bias;
`networks/blocks.py`: GeGLU and AdaLN), so it reads like the LD4LG denoiser minus the cross-attention.

Conditioning. `c` is the sum of an optional time embedding and an optional class embedding; when either is
present `Dense(GELU(c))` is added to the input and every block's feed-forward output goes through
`AdaLN(u, c) = (1 + s(c)) LayerNorm(u) + b(c)` (zero-initialised modulation, as in `DenoiserBlock`).
- Time is OFF by default: MDLM found the masked denoiser does not need it (the number of masks already tells
  it how far along it is), and without it a sampler can reuse the network's output across steps where no
  token changed (the caching sampler).
- Classes: a (C+1)-row table; row C is the null class (label dropout, classifier-free guidance).
Without conditioning a block is the plain pre-LN `h + GeGLU(LN(h))` (no AdaLN, no unused parameters).

The output layer is zero-initialised (as the reference DiT's), so the initial prediction is uniform.
"""
import flax.linen as nn
import jax.numpy as jnp

from ldlg.networks.attention import Attention, RelativePositionBias
from ldlg.networks.blocks import AdaLayerNorm, GeGLU
from ldlg.networks.embeddings import TimeEmbedding

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _layer_norm(name: str) -> nn.LayerNorm:
  # float32 statistics whatever the compute dtype, as in blocks.py.
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class TokenBlock(nn.Module):
  """Pre-LN block: `h + SelfAttn(LN(h))`, then `h + GeGLU(LN(h))` (through AdaLN when conditioned).

  Attributes:
    num_heads: attention heads.
    ff_mult: GeGLU hidden width = ff_mult * model width.
    dropout: attention-probability and feed-forward hidden dropout.
    dtype: compute dtype; the residual stream stays float32.
  """
  num_heads: int
  ff_mult: int = 4
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jnp.ndarray, mask: jnp.ndarray, rel_bias: jnp.ndarray,
               cond_act: jnp.ndarray | None, *, deterministic: bool = True) -> jnp.ndarray:
    """h: [B, L, D] float32; mask: [B, L] bool key mask; rel_bias: [1, H, L, L]; cond_act: [B, C] or None.

    Returns [B, L, D] float32.
    """
    x = _layer_norm("ln_self")(h)
    h = h + Attention(self.num_heads, self.dropout, self.dtype, name="self_attn")(
        x, x, mask, rel_bias, deterministic=deterministic).astype(jnp.float32)
    x = _layer_norm("ln_ff")(h)
    u = GeGLU(self.ff_mult * h.shape[-1], self.dropout, self.dtype, name="ff")(x, deterministic=deterministic)
    if cond_act is None:
      return h + u.astype(jnp.float32)
    return h + AdaLayerNorm(self.dtype, name="ada_ln")(u, cond_act)


class TokenTransformer(nn.Module):
  """Logits over the vocabulary at every position of a (partly masked) token sequence.

  Attributes:
    vocab_size: V, rows of the token embedding and width of the logits (the mask token included).
    dim: transformer width.
    num_layers: number of blocks.
    num_heads: attention heads; must divide `dim`.
    ff_mult: GeGLU hidden width = ff_mult * dim.
    max_len: number of learned absolute positions (longest sequence accepted).
    num_classes: 0 = unconditional; C > 0 = a (C+1)-row class table, row C = the null class.
    time_conditioning: feed t in [0, 1] (sinusoidal features of 1000 t, as the LD4LG denoiser) through AdaLN.
    rel_pos_buckets: T5 relative-position buckets (both directions together).
    rel_pos_max_distance: offsets at or beyond this share the last bucket.
    dropout: attention and feed-forward dropout (active with `train=True`, rng stream "dropout").
    dtype: compute dtype name, "float32" or "bfloat16"; params are always float32.
  """
  vocab_size: int
  dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  ff_mult: int = 4
  max_len: int = 128
  num_classes: int = 0
  time_conditioning: bool = False
  rel_pos_buckets: int = 32
  rel_pos_max_distance: int = 128
  dropout: float = 0.0
  dtype: str = "float32"

  def _check(self, tokens, mask, t, class_id):
    if self.dtype not in _DTYPES:
      raise ValueError(f"TokenTransformer.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}.")
    if self.dim % self.num_heads:
      raise ValueError(f"TokenTransformer.dim={self.dim} is not divisible by num_heads={self.num_heads}.")
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, L] ids, got shape {tokens.shape}.")
    batch, length = tokens.shape
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}; cut the sequences, sample "
                       "semi-autoregressively, or build the model with a larger max_len.")
    if mask is not None and (mask.shape != (batch, length) or mask.dtype != jnp.bool_):
      raise ValueError(f"mask must be a bool [B, L]={batch, length} array (True = attend), got "
                       f"{mask.dtype} {mask.shape}.")
    if self.time_conditioning and (t is None or jnp.shape(t) != (batch,)):
      raise ValueError(f"time_conditioning=True needs t as a [B]={batch} array in [0, 1], got "
                       f"{None if t is None else jnp.shape(t)}.")
    if self.num_classes > 0 and class_id is not None and jnp.shape(class_id) != (batch,):
      raise ValueError(f"class_id must be [B]={batch} ints in [0, {self.num_classes}], got shape "
                       f"{jnp.shape(class_id)}.")

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, mask: jnp.ndarray | None = None, t: jnp.ndarray | None = None,
               class_id: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    """Logits of the clean token at every position.

    Args:
      tokens: [B, L] int ids (the mask token where a token is hidden).
      mask: [B, L] bool key padding mask, True = the position may be attended to; None = all True.
        Outputs at attended positions do not depend on the tokens at the others.
      t: [B] times in [0, 1]; read only when `time_conditioning` (ignored otherwise).
      class_id: [B] ints in [0, num_classes]; num_classes = the null class; None = all null. Ignored
        when num_classes == 0.
      train: enables dropout (rng stream "dropout").

    Returns:
      logits: [B, L, vocab_size] float32.
    """
    self._check(tokens, mask, t, class_id)
    dtype = _DTYPES[self.dtype]
    batch, length = tokens.shape
    if mask is None:
      mask = jnp.ones((batch, length), bool)
    embed_init = nn.initializers.normal(stddev=0.02)
    tok_emb = nn.Embed(self.vocab_size, self.dim, embedding_init=embed_init, param_dtype=jnp.float32,
                       name="token_embed")(tokens)
    pos_emb = self.param("pos_embed", embed_init, (self.max_len, self.dim), jnp.float32)
    h = tok_emb.astype(jnp.float32) + pos_emb[None, :length]

    cond = None
    if self.time_conditioning:
      # TimeEmbedding rescales its input to 0..1000 by 1000 / num_timesteps: t in [0, 1] -> num_timesteps = 1.
      cond = TimeEmbedding(self.dim, 4 * self.dim, 1, dtype, name="time_embed")(t).astype(jnp.float32)
    if self.num_classes > 0:
      if class_id is None:
        class_id = jnp.full((batch,), self.num_classes, jnp.int32)
      class_vec = nn.Embed(self.num_classes + 1, 4 * self.dim, embedding_init=embed_init,
                           param_dtype=jnp.float32, name="class_embed")(class_id)
      cond = class_vec if cond is None else cond + class_vec
    cond_act = None
    if cond is not None:
      cond_act = nn.gelu(cond)
      h = h + nn.Dense(self.dim, dtype=dtype, param_dtype=jnp.float32, name="cond_to_input")(
          cond_act).astype(jnp.float32)[:, None, :]

    rel_bias = RelativePositionBias(self.num_heads, self.rel_pos_buckets, self.rel_pos_max_distance,
                                    name="rel_pos_bias")(length)
    for i in range(self.num_layers):
      h = TokenBlock(self.num_heads, self.ff_mult, self.dropout, dtype, name=f"block_{i}")(
          h, mask, rel_bias, cond_act, deterministic=not train)
    h = _layer_norm("final_norm")(h)
    logits = nn.Dense(self.vocab_size, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.zeros, name="output_proj")(h)
    return logits.astype(jnp.float32)
