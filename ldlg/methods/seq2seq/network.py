"""The DiffuSeq network: a word embedding and one bidirectional transformer over [source ; target] (Gong et al. 2022).

  EMB: [V, d]  learned word embedding, shared by source and target, tied to the rounding softmax
  h = Dense(z_t) + pos_emb + Dense(GELU(TimeEmbedding(t)))         # [B, L, dim]
      (+ seg_emb[is_source] with `segment_embedding`, an option DiffuSeq does not have)
  h = block(h) x num_layers,  block: h += SelfAttn(LN(h)); h += AdaLN(GeGLU(LN(h)), t)
  ŷ0 = Dense(LayerNorm(h))                                         # [B, L, d], the x0 estimate

There is no cross-attention and no separate encoder: the (clean, anchored) source embeddings sit in the
same sequence as the noisy target, so self-attention does the conditioning. The layers are the LD4LG
denoiser's (`ldlg.networks`: `Attention`, `GeGLU`, `AdaLayerNorm`, `TimeEmbedding`) minus its cross-attention;
DiffuSeq itself uses a BERT encoder with the time embedding added to the input only, and learned absolute
positions (no relative bias), as here.

The module has three entry points (flax `method=`): `__call__` (the denoiser), `embed` (ids -> EMB rows) and
`logits` (y · EMBᵀ); `init_all` touches every parameter, so `init(..., method=Seq2SeqDenoiser.init_all)`
builds the whole tree.
"""
import flax.linen as nn
import jax.numpy as jnp

from ldlg.networks.attention import Attention
from ldlg.networks.blocks import AdaLayerNorm, GeGLU
from ldlg.networks.embeddings import TimeEmbedding

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _layer_norm(name: str | None = None) -> nn.LayerNorm:
  # float32 statistics whatever the compute dtype (as the LD4LG denoiser).
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class Seq2SeqBlock(nn.Module):
  """Pre-LN block: self-attention over the whole sequence, then GeGLU with AdaLN time modulation."""
  num_heads: int
  ff_mult: int = 4
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, mask, time_act, *, deterministic=True):
    """h: [B, L, D] float32; mask: [B, L] bool key mask; time_act: [B, T]. Returns [B, L, D] float32."""
    x = _layer_norm("ln_self")(h)
    h = h + Attention(self.num_heads, self.dropout, self.dtype, name="self_attn")(
        x, x, mask, deterministic=deterministic).astype(jnp.float32)
    x = _layer_norm("ln_ff")(h)
    u = GeGLU(self.ff_mult * h.shape[-1], self.dropout, self.dtype, name="ff")(x, deterministic=deterministic)
    return h + AdaLayerNorm(self.dtype, name="ada_ln")(u, time_act)


class Seq2SeqDenoiser(nn.Module):
  """x0-predicting transformer over word embeddings, with its own (learned, tied) embedding table.

  Attributes:
    vocab_size: V, rows of the embedding (the codec's vocabulary, pad and separator included).
    embed_dim: d, the width of the embedding space diffusion runs in (DiffuSeq: 128).
    dim: transformer width.
    num_layers: transformer blocks.
    num_heads: attention heads; must divide `dim`.
    ff_mult: GeGLU hidden width = ff_mult * dim.
    max_len: learned absolute positions (longest [source ; target] sequence).
    dropout: attention and feed-forward dropout (rng stream "dropout", active with train=True).
    dtype: "float32" or "bfloat16" compute dtype; params are float32.
    num_timesteps: T of the schedule (t is rescaled to 0..1000 for the sinusoids).
    embed_init_std: standard deviation of the embedding's initial rows (DiffuSeq: 1, torch's default).
    segment_embedding: add a learned vector per segment (source / target) to the input, so that every position
      is told which side of the separator it is on (not in DiffuSeq, which leaves that to attention: at high
      noise a target position's input is noise, and the network must find the variable-length source's end
      from the separator token). Off by default. Measured on the memorise benchmark (README, "Memorising 8
      pairs"): it does not shorten the copy plateau.
  """
  vocab_size: int
  embed_dim: int = 128
  dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  ff_mult: int = 4
  max_len: int = 128
  dropout: float = 0.0
  dtype: str = "float32"
  num_timesteps: int = 2000
  embed_init_std: float = 1.0
  segment_embedding: bool = False

  def setup(self):
    if self.dtype not in _DTYPES:
      raise ValueError(f"Seq2SeqDenoiser.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
    if self.dim % self.num_heads:
      raise ValueError(f"Seq2SeqDenoiser.dim={self.dim} is not divisible by num_heads={self.num_heads}")
    dtype = _DTYPES[self.dtype]
    self.word_embedding = self.param("word_embedding", nn.initializers.normal(stddev=self.embed_init_std),
                                     (self.vocab_size, self.embed_dim), jnp.float32)
    self.time_embed = TimeEmbedding(self.dim, 4 * self.dim, self.num_timesteps, dtype)
    self.pos_embed = self.param("pos_embed", nn.initializers.normal(stddev=0.02), (self.max_len, self.dim),
                                jnp.float32)
    self.input_proj = nn.Dense(self.dim, dtype=dtype, param_dtype=jnp.float32)
    if self.segment_embedding:
      self.segment_embed = self.param("segment_embed", nn.initializers.normal(stddev=0.02), (2, self.dim),
                                      jnp.float32)
    self.time_to_input = nn.Dense(self.dim, dtype=dtype, param_dtype=jnp.float32)
    self.blocks = [Seq2SeqBlock(self.num_heads, self.ff_mult, self.dropout, dtype)
                   for _ in range(self.num_layers)]
    self.final_norm = _layer_norm()
    self.output_proj = nn.Dense(self.embed_dim, dtype=dtype, param_dtype=jnp.float32)

  def embed(self, ids: jnp.ndarray) -> jnp.ndarray:
    """ids [B, L] int -> EMB(ids) [B, L, d] float32 (a gather: exact copies of the table's rows)."""
    return jnp.take(self.word_embedding, ids, axis=0)

  def logits(self, y: jnp.ndarray) -> jnp.ndarray:
    """y [..., d] -> y · EMBᵀ [..., V] float32, the rounding logits p(w | y) = softmax(y · EMBᵀ)."""
    return jnp.einsum("...d,vd->...v", y.astype(jnp.float32), self.word_embedding)

  def __call__(self, z_t: jnp.ndarray, t: jnp.ndarray, mask: jnp.ndarray, source_mask: jnp.ndarray | None = None,
               *, train: bool = False) -> jnp.ndarray:
    """The x0 estimate.

    Args:
      z_t: [B, L, d] the partially noised sequence (clean source, noisy target).
      t: [B] timesteps in [0, num_timesteps).
      mask: [B, L] bool, positions in play (attention keys); others do not reach valid outputs.
      source_mask: [B, L] bool, True at source positions; read only with `segment_embedding` (then required).
      train: enables dropout.

    Returns:
      ŷ0: [B, L, d] float32.
    """
    batch, length, width = z_t.shape
    if width != self.embed_dim:
      raise ValueError(f"z_t must be [B, L, embed_dim={self.embed_dim}], got {z_t.shape}")
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}; build the network with a "
                       "larger max_len or truncate the pairs")
    if mask.shape != (batch, length) or mask.dtype != jnp.bool_:
      raise ValueError(f"mask must be bool [B, L]={batch, length}, got {mask.dtype} {mask.shape}")
    z_t = jnp.where(mask[..., None], z_t, 0.0)
    time_act = nn.gelu(self.time_embed(t))
    h = (self.input_proj(z_t).astype(jnp.float32) + self.pos_embed[None, :length]
         + self.time_to_input(time_act).astype(jnp.float32)[:, None, :])
    if self.segment_embedding:
      if source_mask is None or source_mask.shape != (batch, length):
        raise ValueError("segment_embedding needs source_mask [B, L] (True at source positions), got "
                         f"{None if source_mask is None else source_mask.shape}")
      h = h + self.segment_embed[source_mask.astype(jnp.int32)]
    for block in self.blocks:
      h = block(h, mask, time_act, deterministic=not train)
    return self.output_proj(self.final_norm(h)).astype(jnp.float32)

  def init_all(self, ids: jnp.ndarray, t: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Touches every parameter (for `init`): embeds ids, denoises them at t, and takes the logits."""
    return self.logits(self(self.embed(ids), t, mask, jnp.zeros_like(mask)))
