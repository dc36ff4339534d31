"""Sampling text from the AR baseline: ancestral, nucleus (top-p) or greedy, one compiled program per batch shape.

A batch starts from `<s>` and runs token by token inside a `lax.while_loop` over FlaxGPT2's KV cache, so there
is no host round trip per token; the loop ends when every row has emitted `</s>` or the length limit is reached.
Step t's key is `fold_in(batch_key, t)`, and a batch's key is `fold_in(fold_in(key(seed), round), start)`, so
the same seed gives the same texts. Empty generations (an immediate `</s>`, or only special tokens) are counted
and re-drawn in later rounds, as LD4LG's sampler does.

(HF's `generate(do_sample=True, top_p=...)` also runs on jax 0.10, but it re-traces on every call and keeps
its own conventions for temperature 0 and the nucleus cut; this loop compiles once per shape.)
"""

import functools
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ldlg.methods.autoregressive import model as ar_model


def nucleus_logits(logits: jax.Array, top_p: float) -> jax.Array:
  """Keeps the smallest set of most likely tokens whose probability reaches `top_p`; the rest get -inf.

  A token is kept when the mass of the tokens ranked above it is below top_p, so the most likely token is
  always kept and top_p -> 0 is greedy decoding.

  Args:
    logits: [B, V] (already divided by the temperature).
    top_p: in (0, 1].
  Returns:
    [B, V] logits with the tail set to -inf.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  order = jnp.argsort(-probs, axis=-1)
  sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
  mass_above = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  keep_sorted = mass_above < top_p
  keep_sorted = keep_sorted.at[:, 0].set(True)
  keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
  return jnp.where(keep, logits, -jnp.inf)


class ARSampler:
  """Compiled sampling for one model and one setting of (max_length, top_p, temperature).

  Attributes:
    num_traces: how often the sampling program was traced (one per batch size; a test checks it).
  """

  def __init__(self, model: Any, *, max_length: int, top_p: float = 1.0, temperature: float = 1.0):
    config = model.config
    if not 2 <= max_length <= config.n_positions:
      raise ValueError(f"max_length={max_length} must be in [2, n_positions={config.n_positions}] (it counts "
                       "<s> and </s>); lower max_length or train a model with more positions")
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p={top_p} must be in (0, 1]; 1 samples from the full distribution")
    if temperature < 0:
      raise ValueError(f"temperature={temperature} must be >= 0 (0 is greedy decoding)")
    self.model = model
    self.max_length = max_length
    self.top_p = float(top_p)
    self.temperature = float(temperature)
    self.bos_id, self.eos_id, self.pad_id = config.bos_token_id, config.eos_token_id, config.pad_token_id
    self.num_traces = 0
    self._sample = jax.jit(self._sample_impl, static_argnums=2)

  def _next_token(self, logits: jax.Array, rng: jax.Array, rows: jax.Array) -> jax.Array:
    """logits [B, V] -> token ids [B]; row i draws with fold_in(rng, rows[i]) (its global index), so a batch
    split over devices draws what one device would."""
    if self.temperature == 0.0:
      return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / self.temperature
    if self.top_p < 1.0:
      logits = nucleus_logits(logits, self.top_p)
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(rows)
    return jax.vmap(jax.random.categorical)(keys, logits)

  def _sample_impl(self, params: Any, rng: jax.Array, batch_size: int, example_offset=0) -> jax.Array:
    """Token ids [batch_size, max_length]: <s>, the sample, </s>, then <pad>. Rows are examples
    example_offset.. of a larger batch (default: the whole batch)."""
    self.num_traces += 1
    B, L = batch_size, self.max_length
    cache_shapes = jax.eval_shape(lambda: self.model.init_cache(B, L))
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
    tokens = jnp.full((B, L), self.pad_id, jnp.int32).at[:, 0].set(self.bos_id)
    # The cache masks positions not yet written, so the attention mask can be all ones (no left padding).
    attention_mask = jnp.ones((B, L), jnp.int32)
    rows = example_offset + jnp.arange(B)

    def cond(carry):
      t, _, _, done = carry
      return (t < L - 1) & ~jnp.all(done)

    def body(carry):
      t, tokens, cache, done = carry
      current = jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1)  # [B, 1]
      out = self.model(current, attention_mask=attention_mask, position_ids=jnp.full((B, 1), t, jnp.int32),
                       params=params, past_key_values=cache)
      nxt = self._next_token(out.logits[:, -1], jax.random.fold_in(rng, t), rows).astype(jnp.int32)
      nxt = jnp.where(done, self.pad_id, nxt)
      tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], t + 1, axis=1)
      return t + 1, tokens, out.past_key_values, done | (nxt == self.eos_id)

    _, tokens, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), tokens, cache, jnp.zeros((B,), bool)))
    return tokens

  def sample_ids(self, params: Any, rng: jax.Array, batch_size: int) -> np.ndarray:
    """[batch_size, max_length] int32 token ids (see `_sample_impl`), on the host."""
    return np.asarray(jax.device_get(self._sample(params, rng, batch_size)))


@functools.lru_cache(maxsize=8)
def get_sampler(model: Any, max_length: int, top_p: float, temperature: float) -> ARSampler:
  """One `ARSampler` per (model, settings), so repeated `sample_ar` calls reuse its compilations."""
  return ARSampler(model, max_length=max_length, top_p=top_p, temperature=temperature)


def decode_ids(ids: np.ndarray, tokenizer: Any, eos_id: int) -> list[str]:
  """Texts of sampled rows [N, L]: the tokens after <s> up to </s>, special tokens dropped, stripped."""
  texts = []
  for row in ids:
    body = row[1:]
    end = np.flatnonzero(body == eos_id)
    body = body[:end[0]] if end.size else body
    texts.append(tokenizer.decode(body.tolist(), skip_special_tokens=True).strip())
  return texts


def sample_ar_records(model: Any, params: Any, tokenizer: Any, num_samples: int, *, seed: int,
                      max_length: int = 64, top_p: float = 1.0, temperature: float = 1.0, batch_size: int = 125,
                      max_redraws: int = 5) -> tuple[list[dict], int]:
  """Samples `num_samples` non-empty texts (see `sample_ar`).

  Returns:
    (records {"index", "text", "round" (0 = first draw)}, number of empty generations re-drawn).
  """
  if num_samples < 0 or batch_size < 1:
    raise ValueError(f"need num_samples >= 0 and batch_size >= 1, got {num_samples} and {batch_size}")
  sampler = get_sampler(model, int(max_length), float(top_p), float(temperature))
  special = ar_model.special_ids(tokenizer)
  if (special["bos"], special["eos"]) != (sampler.bos_id, sampler.eos_id):
    raise ValueError(f"the tokenizer's <s>/</s> ids {special['bos']}/{special['eos']} differ from the model's "
                     f"{sampler.bos_id}/{sampler.eos_id}; use the tokenizer saved with the model")
  key = jax.random.PRNGKey(seed)
  todo, results, empties = list(range(num_samples)), {}, 0
  for round_ in range(max_redraws + 1):
    if not todo:
      break
    for start in range(0, len(todo), batch_size):
      idx = todo[start:start + batch_size]
      ids = sampler.sample_ids(params, jax.random.fold_in(jax.random.fold_in(key, round_), start), batch_size)
      for i, text in zip(idx, decode_ids(ids[:len(idx)], tokenizer, sampler.eos_id)):
        if text:
          results[i] = {"index": i, "text": text, "round": round_}
        else:
          empties += 1
    todo = [i for i in todo if i not in results]
  if todo:
    logging.warning("%d of %d AR samples were still empty after %d re-draws; they are returned as empty text.",
                    len(todo), num_samples, max_redraws)
    results.update({i: {"index": i, "text": "", "round": max_redraws} for i in todo})
  return [results[i] for i in range(num_samples)], empties


def sample_ar(model: Any, params: Any, tokenizer: Any, num_samples: int, *, seed: int, max_length: int = 64,
              top_p: float = 1.0, temperature: float = 1.0, batch_size: int = 125, max_redraws: int = 5) -> list[str]:
  """`num_samples` texts from the AR baseline; the same arguments give the same texts.

  Args:
    model, params, tokenizer: as `ar_train.load_ar_baseline` returns them.
    num_samples: texts to return.
    seed: the sampling seed.
    max_length: tokens per sample, <s> and </s> included (at most the model's n_positions).
    top_p: 1.0 is ancestral sampling; below 1, nucleus sampling.
    temperature: divides the logits; 0 is greedy decoding.
    batch_size: rows per compiled call (the last batch is padded to it, so one shape is compiled).
    max_redraws: rounds in which empty generations are re-drawn.
  """
  records, _ = sample_ar_records(model, params, tokenizer, num_samples, seed=seed, max_length=max_length,
                                 top_p=top_p, temperature=temperature, batch_size=batch_size,
                                 max_redraws=max_redraws)
  return [r["text"] for r in records]
