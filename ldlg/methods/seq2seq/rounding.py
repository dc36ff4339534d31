"""Rounding DiffuSeq's continuous output back to tokens, and cutting the target at its end.

Two rules, both jit-able:
- "logits" (the default, DiffuSeq's final decoding): argmax_w ŷ · EMB[w], the mode of the rounding
  distribution p(w | ŷ) = softmax(ŷ · EMBᵀ) the model was trained with. It returns w for ŷ = EMB[w] only when
  no other row has a larger projection on EMB[w] (always true when all rows have the same norm).
- "nearest": argmin_w ||ŷ - EMB[w]||² = argmax_w (2 ŷ · EMB[w] - ||EMB[w]||²), the nearest row in L2.
  Exact on exact embeddings (distinct rows); DiffuSeq's per-step "clamping" uses this rule.

The target region of a [source ; target] sequence is every position not in `source_mask` (and in `mask`
when given); its text is the rounded tokens up to, not including, the first end or pad token.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

ROUNDINGS = ("logits", "nearest")


def round_to_tokens(y: jax.Array, embedding: jax.Array, rule: str = "logits") -> jax.Array:
  """Token ids of embeddings.

  Args:
    y: [..., d] float vectors.
    embedding: [V, d] the word embedding EMB.
    rule: "logits" (argmax y · EMBᵀ) or "nearest" (nearest row in L2).

  Returns:
    [...] int32 ids.
  """
  if rule not in ROUNDINGS:
    raise ValueError(f"unknown rounding rule {rule!r}; choose one of {ROUNDINGS}")
  scores = jnp.einsum("...d,vd->...v", y.astype(jnp.float32), embedding.astype(jnp.float32))
  if rule == "nearest":
    scores = 2.0 * scores - jnp.sum(jnp.square(embedding.astype(jnp.float32)), axis=-1)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def nearest_embedding(y: jax.Array, embedding: jax.Array) -> jax.Array:
  """y [..., d] replaced by its nearest row of EMB [V, d] (DiffuSeq's clamping of x̂0)."""
  return jnp.take(embedding, round_to_tokens(y, embedding, "nearest"), axis=0)


def truncate_at_stop(tokens: jax.Array, target: jax.Array, stop_ids: Sequence[int],
                     pad_id: int) -> tuple[jax.Array, jax.Array]:
  """Keeps each example's target tokens before the first stop token; everything else becomes pad_id.

  Args:
    tokens: [B, L] int rounded ids.
    target: [B, L] bool, the target region (a suffix of the sequence after the source).
    stop_ids: ids that end the text (the end token, the pad token).
    pad_id: the id written at every position not kept.

  Returns:
    (tokens [B, L] with pad_id outside the kept span, lengths [B] int32 = number of kept tokens).
  """
  is_stop = jnp.isin(tokens, jnp.asarray(list(stop_ids), tokens.dtype)) & target
  after_stop = jnp.cumsum(is_stop.astype(jnp.int32), axis=1) > 0
  keep = target & ~after_stop
  return jnp.where(keep, tokens, pad_id), jnp.sum(keep, axis=1).astype(jnp.int32)


def target_token_lists(tokens, source_mask, lengths) -> list[list[int]]:
  """Host side: each example's kept target ids as a Python list (from `truncate_at_stop`'s output).

  Args:
    tokens: [B, L] ids from `truncate_at_stop`.
    source_mask: [B, L] bool.
    lengths: [B] kept lengths.
  """
  tokens, source_mask, lengths = (np.asarray(x) for x in (tokens, source_mask, lengths))
  return [row[~src][:n].tolist() for row, src, n in zip(tokens, source_mask, lengths)]
