"""The autoregressive baseline: a GPT-2-style Flax causal LM, its config section, and size matching.

The model is `transformers.FlaxGPT2LMHeadModel` built from a project `GPT2Config` (pre-LN transformer, learned
absolute positions, GELU MLP of width 4·d, output layer tied to the token embedding), so a trained baseline is
saved and loaded in Hugging Face format and doubles as the offline perplexity judge
(`ldlg.evaluation.perplexity.load_causal_lm(out_dir)`).

`matched_gpt2_config` picks a depth and width whose parameter count is close to a target (the denoiser's), so
the comparison with LD4LG is at equal model size.
"""

import math
from typing import Any

from absl import logging
import jax
import ml_collections
import transformers

from ldlg.codecs import tokens
from ldlg.evaluation import perplexity


def d(**kwargs) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(kwargs)


def default_ar_config() -> ml_collections.ConfigDict:
  """The `config.baseline` section: a ~denoiser-sized CPU model and its training/sampling settings."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = d(
      max_length=64,   # Tokens per sequence, <s> and </s> included; longer texts are cut (and lose </s>).
      pad_multiple=16,  # Batches are padded to a multiple of this: few compiled shapes, little padding.
  )
  c.model = d(
      n_layer=4,
      n_embd=256,
      n_head=4,
      n_positions=64,  # Must cover data.max_length and sample.max_length.
      dropout=0.1,     # Residual, embedding and attention dropout (GPT-2 uses one rate for all three).
  )
  c.model.n_positions = c.data.get_ref("max_length")
  c.optim = d(  # As ldlg.engine.train_state.make_optimizer reads it.
      lr=5e-4,
      warmup_steps=200,
      schedule="cosine",  # Decays to 0 at max_steps (not at the wall-time cap, which is not known ahead).
      weight_decay=0.01,
      b1=0.9,
      b2=0.98,
      eps=1e-8,
      grad_clip=1.0,
  )
  c.train = d(
      num_steps=3000,     # Default step budget (`max_steps` of train_ar_baseline overrides it).
      max_seconds=0.0,    # Default wall-time cap in seconds, summed over resumes (0 = none).
      batch_size=64,      # Global batch; split over the local devices.
      ema_decay=0.0,      # 0: no averaging (the saved weights are the trained ones).
      ema_warmup=True,
      log_every=50,
      ckpt_every=500,
      keep_checkpoints=2,
      eval_batch_size=64,  # Rows per call when scoring validation texts.
  )
  c.sample = d(
      num_samples=1000,
      batch_size=125,
      max_length=64,      # Tokens per sample, <s> and </s> included.
      top_p=1.0,          # 1.0: ancestral sampling; < 1: nucleus sampling.
      temperature=1.0,    # 0: greedy.
      max_redraws=5,      # Empty generations are re-drawn up to this many rounds (as LD4LG's sampler does).
      seed=0,
  )
  return c


special_ids = tokens.special_ids  # One definition, in the token codec.


def gpt2_config(model: ml_collections.ConfigDict, tokenizer: Any) -> transformers.GPT2Config:
  """The `GPT2Config` of `config.model` with the tokenizer's vocabulary and special ids."""
  if model.n_embd % model.n_head:
    raise ValueError(f"n_embd={model.n_embd} is not divisible by n_head={model.n_head}")
  ids = special_ids(tokenizer)
  return transformers.GPT2Config(
      vocab_size=len(tokenizer), n_positions=model.n_positions, n_embd=model.n_embd, n_layer=model.n_layer,
      n_head=model.n_head, resid_pdrop=model.dropout, embd_pdrop=model.dropout, attn_pdrop=model.dropout,
      bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])


def build_model(model: ml_collections.ConfigDict, tokenizer: Any,
                rng: jax.Array) -> tuple[transformers.FlaxGPT2LMHeadModel, Any]:
  """A freshly initialised model (without params inside; they are returned separately) and its params."""
  net = transformers.FlaxGPT2LMHeadModel(gpt2_config(model, tokenizer), _do_init=False)
  params = jax.jit(net.init_weights, static_argnums=1)(rng, (1, 1))
  return net, params


def count_params(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def gpt2_num_params(n_layer: int, n_embd: int, vocab_size: int, n_positions: int) -> int:
  """Parameters of FlaxGPT2LMHeadModel (tied output layer, MLP width 4·n_embd), in closed form.

  Embeddings (V + P)·d; per block two LayerNorms (4d), qkv (3d² + 3d), attention output (d² + d),
  MLP (4d² + 4d and 4d² + d): 12d² + 13d; final LayerNorm 2d.
  """
  e = n_embd
  return (vocab_size + n_positions) * e + n_layer * (12 * e * e + 13 * e) + 2 * e


def matched_gpt2_config(target_params: int, vocab_size: int, max_len: int, *, n_layer: int | None = None,
                        head_dim: int = 64, aspect: float = 64.0, aspect_weight: float = 0.1,
                        max_layers: int = 48, dropout: float = 0.1) -> tuple[ml_collections.ConfigDict, int]:
  """A GPT-2 size whose parameter count is close to `target_params`, with a GPT-2-like shape.

  Widths are multiples of `head_dim` (n_head = n_embd / head_dim). Each (depth, width) pair is scored
  |count / target - 1| + aspect_weight * |log2(width / depth / aspect)|: with the defaults, a shape one
  octave away from GPT-2's width/depth of 64 (768/12) costs as much as a 10% count mismatch, so a small target
  gets 4 x 256 rather than 17 x 64. The lowest score wins.

  Args:
    target_params: the parameter count to match (e.g. the denoiser's).
    vocab_size: len(tokenizer); the (tied) token embedding counts.
    max_len: n_positions (tokens incl. <s> and </s>).
    n_layer: fix the depth and only choose the width.
    head_dim: attention head width; also the width step.
    aspect, aspect_weight: the preferred width/depth and how much it matters (0: closest count only).
    max_layers: deepest model considered.
    dropout: copied into the returned section.
  Returns:
    (the `config.model` section, its exact parameter count).
  """
  if target_params <= 0:
    raise ValueError(f"target_params must be positive, got {target_params}")
  if head_dim < 1:
    raise ValueError(f"head_dim must be >= 1, got {head_dim}")
  layers = [n_layer] if n_layer else range(1, max_layers + 1)
  best = None
  for num_layers in layers:
    # The count is increasing in the width e: try the multiples of head_dim next to the quadratic's root.
    a, b = 12 * num_layers, vocab_size + max_len + 13 * num_layers + 2
    root = (-b + math.sqrt(b * b + 4 * a * target_params)) / (2 * a)
    for k in range(max(1, math.floor(root / head_dim) - 1), math.ceil(root / head_dim) + 2):
      width = k * head_dim
      count = gpt2_num_params(num_layers, width, vocab_size, max_len)
      score = abs(count / target_params - 1.0) + aspect_weight * abs(math.log2(width / num_layers / aspect))
      if best is None or score < best[0]:
        best = (score, num_layers, width, count)
  _, num_layers, width, count = best
  if abs(count / target_params - 1.0) > 0.1:
    logging.warning("matched_gpt2_config: no GPT-2 size within 10%% of %d parameters with a %d-token vocabulary; "
                    "the closest has %d (%d x %d)", target_params, vocab_size, count, num_layers, width)
  model = d(n_layer=num_layers, n_embd=width, n_head=width // head_dim, n_positions=max_len, dropout=dropout)
  return model, count


def ar_causal_lm(model: transformers.FlaxGPT2LMHeadModel, params: Any, tokenizer: Any,
                 name: str = "ar_baseline") -> perplexity.CausalLM:
  """The baseline as a perplexity judge (`ldlg.evaluation.perplexity`), without a round trip through disk."""
  ids = special_ids(tokenizer)

  def logits_fn(p: Any, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    return model(input_ids=input_ids, attention_mask=mask, params=p).logits

  return perplexity.CausalLM(name=name, logits_fn=logits_fn, params=params,
                             encode=lambda text: tokenizer.encode(text, add_special_tokens=False),
                             bos_id=ids["bos"], pad_id=ids["pad"], max_positions=model.config.n_positions)
