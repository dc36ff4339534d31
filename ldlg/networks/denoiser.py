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

Options from the paper's later version and the official code (each off by default; at the defaults the
parameters and outputs are exactly the first version's above):
- `time_input`: embed t (default), the noise level ᾱ_t (×1000, as the official HEAD code feeds its time MLP)
  or the log-SNR λ_t (clamped to ±15 and mapped affinely onto 0..1000). The loss and samplers still pass t;
  the denoiser looks the noise level up in the schedule's ᾱ table (`schedules.alphas_cumprod_table` from
  `noise_schedule`, `beta_start`, `beta_end`, `latent_scale`, `num_timesteps`: link them to config.diffusion),
  interpolating linearly for a float t.
- `self_cond_mode="concat"`: the estimate (or a learned null latent) is concatenated to z_t before the input
  projection (official HEAD) instead of being cross-attended. The blocks still have a cross-attention layer;
  its memory is then one learned token (plus the class token), which costs little and changes nothing else.
- `unet_skips`: the outputs of the first k blocks are concatenated to the inputs of the mirrored last k blocks
  (block i feeds block num_layers-1-i) through a Dense(2·dim → dim), as the official HEAD code's
  `num_dense_connections`; k = `unet_skip_count`, 0 = num_layers // 2.
- `init_scales="official_v1"`: x-transformers' scales as the official v1 code has them: the T5 bias table
  N(0,1) times sqrt(head width) in the forward pass, the position table N(0,1) times dim^-1/2 in the forward
  pass, the null self-conditioning vector and the class table N(0,1) (PyTorch nn.Embedding).
- `head_dim`: fixes the head width (official: 64), so the number of heads is dim // head_dim.
- `gelu_approximate=False`: exact (erf) GELU as PyTorch's nn.GELU, in the time MLP, its heads and every GeGLU.
- `class_input="time"` (class-conditional models): the class vector, through a Dense to the time embedding's
  width, is added to the time embedding (official HEAD), so it reaches the input and every block's AdaLN,
  instead of being one token appended to the cross-attention memory ("memory_token", the default). Measured on
  SST (README, issue 13): after 1,500 steps the memory token moved x̂0 by a relative 1e-7, a dead pathway.
"""
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ldlg.networks.attention import RelativePositionBias
from ldlg.networks.blocks import DenoiserBlock
from ldlg.networks.embeddings import ScaledRelativePositionBias, TimeEmbedding

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TIME_INPUTS = ("t", "alpha_bar", "log_snr")
SELF_COND_MODES = ("cross_attention", "concat")
INIT_SCALES = ("default", "official_v1")
CLASS_INPUTS = ("memory_token", "time")


def noise_level_table(time_input: str, alphas_cumprod: np.ndarray) -> np.ndarray:
  """The time-embedding input per timestep [T] (float64) for `time_input` "alpha_bar" or "log_snr".

  alpha_bar: 1000 ᾱ_t (as the official HEAD code: its time MLP reads 1000 × ᾱ).
  log_snr: 1000 (15 - λ_t) / 30 with λ clamped to [-15, 15], so 0 = cleanest and 1000 = noisiest, the range
  and direction of t.
  """
  from ldlg.methods.gaussian import schedules  # pylint: disable=g-import-not-at-top (numpy only, no cycle)
  ab = np.asarray(alphas_cumprod, np.float64)
  if time_input == "alpha_bar":
    return 1000.0 * ab
  if time_input == "log_snr":
    clamp = schedules.LOG_SNR_CLAMP
    return 1000.0 * (clamp - schedules.log_snr(ab, clamp)) / (2 * clamp)
  raise ValueError(f"noise_level_table takes 'alpha_bar' or 'log_snr', got {time_input!r}")


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
    time_input: "t" (default), "alpha_bar" or "log_snr": what the time embedding sees (module docstring).
    noise_schedule, beta_start, beta_end, latent_scale: the diffusion schedule (config.diffusion's
      schedule, beta_start, beta_end, latent_scale), read only when time_input is not "t".
    self_cond_mode: "cross_attention" (default, the first version) or "concat" (the later version).
    unet_skips: long skip connections from the first blocks to the mirrored last ones.
    unet_skip_count: how many (0 = num_layers // 2); at most num_layers // 2.
    init_scales: "default" or "official_v1" (module docstring).
    class_input: "memory_token" (default) or "time": where the class enters (module docstring).
    head_dim: attention head width; 0 = dim // num_heads (default); else num_heads = dim // head_dim.
    gelu_approximate: tanh GELU (default) or exact GELU (False), in the time MLP and every GeGLU.
    attention_impl: "plain" (default), or "xla" / "cudnn" / "auto" through jax.nn.dot_product_attention (fused
      on GPU; see attention.py).
    remat: recompute each block's activations in the backward pass (memory for compute; the paper config on
      accelerators).
    source_dim: 0 = no source (default); Ds > 0 = sequence-to-sequence LD4LG: the call takes a source encoding
      [B, S, Ds], projected to `dim` and appended to the cross-attention memory after one learned null-source
      token that is always there (so a row whose source is dropped, all of source_mask False, still attends to
      something and means "no source").
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
  time_input: str = "t"
  noise_schedule: str = "linear"
  beta_start: float = 1e-4
  beta_end: float = 0.02
  latent_scale: float = 1.0
  self_cond_mode: str = "cross_attention"
  unet_skips: bool = False
  unet_skip_count: int = 0
  init_scales: str = "default"
  class_input: str = "memory_token"
  head_dim: int = 0
  gelu_approximate: bool = True
  attention_impl: str = "plain"
  remat: bool = False
  source_dim: int = 0

  @property
  def heads(self) -> int:
    """The number of attention heads actually used (dim // head_dim when head_dim is set)."""
    return self.dim // self.head_dim if self.head_dim else self.num_heads

  @property
  def skip_count(self) -> int:
    """How many U-Net skip connections (0 when unet_skips is off)."""
    if not self.unet_skips:
      return 0
    return self.unet_skip_count or self.num_layers // 2

  def _check_options(self):
    for field, value, choices in (("time_input", self.time_input, TIME_INPUTS),
                                  ("self_cond_mode", self.self_cond_mode, SELF_COND_MODES),
                                  ("init_scales", self.init_scales, INIT_SCALES),
                                  ("class_input", self.class_input, CLASS_INPUTS)):
      if value not in choices:
        raise ValueError(f"Denoiser.{field} must be one of {choices}, got {value!r}.")
    if self.head_dim and (self.head_dim < 1 or self.dim % self.head_dim):
      raise ValueError(f"Denoiser.head_dim={self.head_dim} must divide dim={self.dim} (or be 0 to use num_heads).")
    if self.unet_skips and not 1 <= self.skip_count <= self.num_layers // 2:
      raise ValueError(f"Denoiser.unet_skip_count={self.unet_skip_count} must be in [1, num_layers // 2 = "
                       f"{self.num_layers // 2}] (0 = num_layers // 2); U-Net skips need num_layers >= 2.")

  def _check(self, z_t, t, mask, self_cond, has_self_cond, class_id, source, source_mask):
    """Shape checks with messages that say what to pass instead (static, so free under jit)."""
    if self.dtype not in _DTYPES:
      raise ValueError(f"Denoiser.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}.")
    self._check_options()
    if self.dim % self.heads:
      raise ValueError(f"Denoiser.dim={self.dim} is not divisible by num_heads={self.heads}.")
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
    if (source is None) != (source_mask is None):
      raise ValueError("pass source and source_mask together (source_mask: [B, S] bool, True = valid).")
    if source is not None:
      if self.source_dim <= 0:
        raise ValueError("a source was given, but the Denoiser has source_dim=0 (no source input); build it "
                         "with source_dim = the source encoding's width.")
      if source.ndim != 3 or source.shape[0] != batch or source.shape[-1] != self.source_dim:
        raise ValueError(f"source must be [B={batch}, S, source_dim={self.source_dim}], got {source.shape}.")
      if source_mask.shape != source.shape[:2] or source_mask.dtype != jnp.bool_:
        raise ValueError(f"source_mask must be a bool [B, S]={source.shape[:2]} array, got "
                         f"{source_mask.dtype} {source_mask.shape}.")

  @nn.compact
  def __call__(self, z_t: jnp.ndarray, t: jnp.ndarray, mask: jnp.ndarray,
               self_cond: jnp.ndarray | None = None, has_self_cond: jnp.ndarray | None = None,
               class_id: jnp.ndarray | None = None, source: jnp.ndarray | None = None,
               source_mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
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
      source: [B, S, source_dim] source encoding (source_dim > 0 only), or None = the null source for all.
      source_mask: [B, S] bool, True = valid source position; an all-False row = that example's null source.
      train: enables dropout (rng stream "dropout").

    Returns:
      x̂: [B, L, latent_dim] float32.
    """
    self._check(z_t, t, mask, self_cond, has_self_cond, class_id, source, source_mask)
    dtype = _DTYPES[self.dtype]
    deterministic = not train
    batch, length, _ = z_t.shape
    valid = mask[..., None]
    dense = lambda features, name, **kw: nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                                                  name=name, **kw)
    official = self.init_scales == "official_v1"
    embed_init = nn.initializers.normal(stddev=1.0 if official else 0.02)
    gelu = lambda x: nn.gelu(x, approximate=self.gelu_approximate)
    concat_self_cond = self.self_cond_mode == "concat"

    # Zero padded inputs: key masks already stop them reaching valid outputs, and zeroing also keeps a
    # NaN/inf in padding from turning into 0 * NaN in the attention-weighted sums.
    z_t = jnp.where(valid, z_t, 0.0)

    if self.time_input == "t":
      time_in, time_steps = t, self.num_timesteps
    else:
      # The noise level of step t, looked up in the schedule's own table (a trace-time constant); a float t
      # interpolates linearly between neighbouring steps.
      from ldlg.methods.gaussian import schedules  # pylint: disable=g-import-not-at-top
      table = noise_level_table(self.time_input, schedules.alphas_cumprod_table(
          self.noise_schedule, self.num_timesteps, beta_start=self.beta_start, beta_end=self.beta_end,
          latent_scale=self.latent_scale))
      time_in = jnp.interp(jnp.asarray(t, jnp.float32), jnp.arange(self.num_timesteps, dtype=jnp.float32),
                           jnp.asarray(table, jnp.float32))
      time_steps = 1000  # Already on the 0..1000 scale: TimeEmbedding's rescale is then x1.
    time_vec = TimeEmbedding(self.dim, 4 * self.dim, time_steps, dtype, gelu_approximate=self.gelu_approximate,
                             name="time_embed")(time_in)
    if self.num_classes > 0:
      if class_id is None:
        class_id = jnp.full((batch,), self.num_classes, jnp.int32)
      class_vec = nn.Embed(self.num_classes + 1, self.dim, embedding_init=embed_init, param_dtype=jnp.float32,
                           name="class_embed")(class_id)
      if self.class_input == "time":
        time_vec = time_vec + dense(4 * self.dim, "class_to_time")(class_vec).astype(time_vec.dtype)
    time_act = gelu(time_vec)  # shared by the input head and every block's AdaLN
    pos_emb = self.param("pos_embed", embed_init, (self.max_len, self.dim), jnp.float32)
    if official:
      pos_emb = pos_emb * self.dim ** -0.5  # x-transformers' AbsolutePositionalEmbedding scale.

    null_init = nn.initializers.normal(stddev=1.0) if official else embed_init
    if concat_self_cond:
      # Official HEAD: [z_t ; estimate or a learned null latent] -> input projection.
      null = self.param("null_self_cond", null_init, (self.latent_dim,), jnp.float32)
      estimate = jnp.broadcast_to(null, z_t.shape)
      if self_cond is not None:
        use = jnp.ones((batch,), bool) if has_self_cond is None else has_self_cond
        estimate = jnp.where(use[:, None, None], jnp.where(valid, self_cond, 0.0), estimate)
      net_in = jnp.concatenate([z_t, jnp.where(valid, estimate, 0.0)], axis=-1)
    else:
      net_in = z_t
    h = (dense(self.dim, "input_proj")(net_in).astype(jnp.float32) + pos_emb[None, :length]
         + dense(self.dim, "time_to_input")(time_act).astype(jnp.float32)[:, None, :])

    if concat_self_cond:
      # The blocks' cross-attention needs a memory: one learned token (the estimate is already in h).
      token = self.param("null_memory", embed_init, (self.dim,), jnp.float32)
      memory = jnp.broadcast_to(token.astype(dtype), (batch, 1, self.dim))
      memory_mask = jnp.ones((batch, 1), bool)
    else:
      # Cross-attention memory: the self-conditioning estimate (or h_null) at every position, then the
      # class token. Padded positions are masked; the class token is always valid.
      null = self.param("null_self_cond", null_init, (self.dim,), jnp.float32)
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
    if self.num_classes > 0 and self.class_input == "memory_token":
      memory = jnp.concatenate([memory, class_vec.astype(dtype)[:, None, :]], axis=1)
      memory_mask = jnp.concatenate([memory_mask, jnp.ones((batch, 1), bool)], axis=1)
    if self.source_dim > 0:
      # [.. ; null-source token ; Dense(source)]: the token is always valid, the source rows where source_mask.
      if source is None:  # Null source for every example (and the projection still exists after init).
        source = jnp.zeros((batch, 1, self.source_dim), dtype)
        source_mask = jnp.zeros((batch, 1), bool)
      null_source = self.param("null_source", embed_init, (self.dim,), jnp.float32)
      src = dense(self.dim, "source_proj")(jnp.where(source_mask[..., None], source, 0.0).astype(dtype))
      memory = jnp.concatenate([memory, jnp.broadcast_to(null_source.astype(dtype), (batch, 1, self.dim)),
                                src.astype(dtype)], axis=1)
      memory_mask = jnp.concatenate([memory_mask, jnp.ones((batch, 1), bool), source_mask], axis=1)

    heads = self.heads
    if official:
      rel_bias = ScaledRelativePositionBias(heads, self.rel_pos_buckets, self.rel_pos_max_distance,
                                            scale=math.sqrt(self.dim // heads), name="rel_pos_bias")(length)
    else:
      rel_bias = RelativePositionBias(heads, self.rel_pos_buckets, self.rel_pos_max_distance,
                                      name="rel_pos_bias")(length)
    block_kw = dict(gelu_approximate=self.gelu_approximate, attention_impl=self.attention_impl, remat=self.remat)
    skips = self.skip_count
    stash = []
    for i in range(self.num_layers):
      mirror = self.num_layers - 1 - i  # the block whose output block i receives, when i is in the last k
      if skips and mirror < skips:
        h = dense(self.dim, f"skip_proj_{mirror}")(jnp.concatenate([h, stash.pop()], axis=-1)).astype(jnp.float32)
      h = DenoiserBlock(heads, self.ff_mult, self.dropout, dtype, name=f"block_{i}", **block_kw)(
          h, mask, rel_bias, memory, memory_mask, time_act, deterministic=deterministic)
      if i < skips:
        stash.append(h)

    h = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name="final_norm")(h)
    out = dense(self.latent_dim, "output_proj", kernel_init=nn.initializers.zeros)(h)
    return out.astype(jnp.float32)
