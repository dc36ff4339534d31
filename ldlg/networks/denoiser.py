"""The LD4LG denoiser x̂_θ(z_t, t, mask, self_cond, class_id) (Lovelace et al. 2023, first version, Sec. 4).

A bidirectional pre-LN transformer over the noisy BART latents:

  h = Dense(z_t) + pos_emb + Dense(GELU(TimeEmbedding(t)))            # [B, L, dim]
  memory = [Dense(self_cond) or h_null broadcast over L ; class token]  # cross-attention memory
  h = DenoiserBlock(...)(h) x num_layers                               # see blocks.py
  x̂ = Dense(LayerNorm(h))                                              # [B, L, latent_dim], float32

Choices the paper leaves open, and why:
- T5 relative position bias: one table shared by all layers (T5 and the reference x-transformers do the
  same; the bias is computed once per call, and per-layer tables would add little beyond the learned
  absolute positions).
- h_null: one learned [dim] vector broadcast over every position of the sequence and masked by `mask`
  like a real estimate (as the reference code's learned null broadcast). The memory then has the same
  static shape with or without an estimate, which is what lets `has_self_cond` switch per example inside
  jit, and an example without an estimate sees exactly what `self_cond=None` would give it.
- AdaLN modulation is zero-initialised (starts as a plain LayerNorm); the output Dense is zero-initialised
  too, so x̂ = 0 (the mean of the normalised latents) at initialisation, as in the reference code.
- Dropout on attention probabilities and on the GeGLU hidden layer (reference: attn_dropout, ff_dropout).
- The residual stream is float32; Dense layers run in `dtype`; LayerNorm and softmax in float32.
"""
import flax.linen as nn
import jax.numpy as jnp

from ldlg.networks.attention import RelativePositionBias
from ldlg.networks.blocks import DenoiserBlock
from ldlg.networks.embeddings import TimeEmbedding

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Denoiser(nn.Module):
  """Predicts the clean latents x̂ from noisy latents z_t (x-parameterisation).

  Attributes:
    latent_dim: width of the BART latents (768 for bart-base).
    dim: transformer width.
    num_layers: number of transformer blocks.
    num_heads: attention heads; must divide `dim`.
    ff_mult: GeGLU hidden width = ff_mult * dim.
    max_len: number of learned absolute positions (longest sequence accepted).
    num_classes: 0 = unconditional (no class token); C > 0 = a (C+1)-row class table, row C = null class.
    rel_pos_buckets: T5 relative-position buckets (both directions together).
    rel_pos_max_distance: offsets at or beyond this share the last bucket.
    dropout: attention and feed-forward dropout rate (active with `train=True`, rng stream "dropout").
    dtype: compute dtype name, "float32" or "bfloat16"; params are always float32.
    num_timesteps: length of the discrete schedule; t in [0, num_timesteps) is rescaled to 0..1000 for the
      sinusoidal embedding.
  """
  latent_dim: int = 768
  dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  ff_mult: int = 4
  max_len: int = 64
  num_classes: int = 0
  rel_pos_buckets: int = 32
  rel_pos_max_distance: int = 128
  dropout: float = 0.0
  dtype: str = "float32"
  num_timesteps: int = 1000

  def _check(self, z_t, t, mask, self_cond, has_self_cond, class_id):
    """Shape checks with messages that say what to pass instead (static, so free under jit)."""
    if self.dtype not in _DTYPES:
      raise ValueError(f"Denoiser.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}.")
    if self.dim % self.num_heads:
      raise ValueError(f"Denoiser.dim={self.dim} is not divisible by num_heads={self.num_heads}.")
    if z_t.ndim != 3 or z_t.shape[-1] != self.latent_dim:
      raise ValueError(f"z_t must be [B, L, latent_dim={self.latent_dim}], got shape {z_t.shape}.")
    batch, length, _ = z_t.shape
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}; truncate the latents "
                       "or build the Denoiser with a larger max_len.")
    if jnp.shape(t) != (batch,):
      raise ValueError(f"t must be [B]={batch} timesteps, got shape {jnp.shape(t)}.")
    if mask.shape != (batch, length) or mask.dtype != jnp.bool_:
      raise ValueError(f"mask must be a bool [B, L]={batch, length} array (True = valid token), got "
                       f"{mask.dtype} {mask.shape}.")
    if self_cond is None:
      if has_self_cond is not None:
        raise ValueError("has_self_cond was given without self_cond; pass self_cond (any values where "
                         "has_self_cond is False) or drop has_self_cond.")
    else:
      if self_cond.shape != z_t.shape:
        raise ValueError(f"self_cond must have the shape of z_t {z_t.shape}, got {self_cond.shape}.")
      if has_self_cond is not None and (jnp.shape(has_self_cond) != (batch,)
                                        or jnp.asarray(has_self_cond).dtype != jnp.bool_):
        raise ValueError(f"has_self_cond must be a bool [B]={batch} array, got "
                         f"{jnp.asarray(has_self_cond).dtype} {jnp.shape(has_self_cond)}.")
    if self.num_classes > 0 and class_id is not None and jnp.shape(class_id) != (batch,):
      raise ValueError(f"class_id must be [B]={batch} ints in [0, {self.num_classes}], got shape "
                       f"{jnp.shape(class_id)}.")

  @nn.compact
  def __call__(self, z_t: jnp.ndarray, t: jnp.ndarray, mask: jnp.ndarray,
               self_cond: jnp.ndarray | None = None, has_self_cond: jnp.ndarray | None = None,
               class_id: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    """Denoise.

    Args:
      z_t: [B, L, latent_dim] noisy latents.
      t: [B] timesteps in [0, num_timesteps), int or float.
      mask: [B, L] bool, True = valid token. Valid outputs do not depend on padded inputs.
      self_cond: [B, L, latent_dim] previous estimate of x̂, or None (no example has one).
      has_self_cond: [B] bool, per example whether `self_cond` is used (False: the learned h_null, exactly
        as with self_cond=None). None with a self_cond given = all True.
      class_id: [B] ints in [0, num_classes]; num_classes = the null class; None = all null. Ignored when
        num_classes == 0. Out-of-range ids give NaN outputs (gather fill), not a silent wrong class.
      train: enables dropout (rng stream "dropout").

    Returns:
      x̂: [B, L, latent_dim] float32.
    """
    self._check(z_t, t, mask, self_cond, has_self_cond, class_id)
    dtype = _DTYPES[self.dtype]
    deterministic = not train
    batch, length, _ = z_t.shape
    valid = mask[..., None]
    dense = lambda features, name, **kw: nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                                                  name=name, **kw)
    embed_init = nn.initializers.normal(stddev=0.02)

    # Zero padded inputs: key masks already stop them reaching valid outputs, and zeroing also keeps a
    # NaN/inf in padding from turning into 0 * NaN in the attention-weighted sums.
    z_t = jnp.where(valid, z_t, 0.0)

    time_vec = TimeEmbedding(self.dim, 4 * self.dim, self.num_timesteps, dtype, name="time_embed")(t)
    time_act = nn.gelu(time_vec)  # shared by the input head and every block's AdaLN
    pos_emb = self.param("pos_embed", embed_init, (self.max_len, self.dim), jnp.float32)
    h = (dense(self.dim, "input_proj")(z_t).astype(jnp.float32) + pos_emb[None, :length]
         + dense(self.dim, "time_to_input")(time_act).astype(jnp.float32)[:, None, :])

    # Cross-attention memory: the self-conditioning estimate (or h_null) at every position, then the
    # class token. Padded positions are masked; the class token is always valid.
    null = self.param("null_self_cond", embed_init, (self.dim,), jnp.float32)
    memory = jnp.broadcast_to(null.astype(dtype), (batch, length, self.dim))
    self_cond_proj = dense(self.dim, "self_cond_proj")
    if self_cond is None and self.is_initializing():
      # Create the projection even when init is called without an estimate, so the params tree is the
      # same however the caller initialises, and later calls with self_cond find their weights.
      self_cond_proj(jnp.zeros((1, 1, self.latent_dim), dtype))
    if self_cond is not None:
      cond = self_cond_proj(jnp.where(valid, self_cond, 0.0))
      use = jnp.ones((batch,), bool) if has_self_cond is None else has_self_cond
      memory = jnp.where(use[:, None, None], cond.astype(dtype), memory)
    memory_mask = mask
    if self.num_classes > 0:
      if class_id is None:
        class_id = jnp.full((batch,), self.num_classes, jnp.int32)
      class_tok = nn.Embed(self.num_classes + 1, self.dim, embedding_init=embed_init,
                           param_dtype=jnp.float32, name="class_embed")(class_id)
      memory = jnp.concatenate([memory, class_tok.astype(dtype)[:, None, :]], axis=1)
      memory_mask = jnp.concatenate([mask, jnp.ones((batch, 1), bool)], axis=1)

    rel_bias = RelativePositionBias(self.num_heads, self.rel_pos_buckets, self.rel_pos_max_distance,
                                    name="rel_pos_bias")(length)
    for i in range(self.num_layers):
      h = DenoiserBlock(self.num_heads, self.ff_mult, self.dropout, dtype, name=f"block_{i}")(
          h, mask, rel_bias, memory, memory_mask, time_act, deterministic=deterministic)

    h = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name="final_norm")(h)
    out = dense(self.latent_dim, "output_proj", kernel_init=nn.initializers.zeros)(h)
    return out.astype(jnp.float32)
