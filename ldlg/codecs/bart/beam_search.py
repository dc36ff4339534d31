"""Our own jit-compiled greedy and beam search over the BART decoder (HF Flax `generate` cannot be used:
it crashes with `no_repeat_ngram_size` and has no repetition penalty).

Semantics follow Hugging Face PyTorch `generate` (transformers 4.57), which the LD4LG reference used:
- sequences start with `decoder_start_token_id`; lengths (`max_length`, `min_length`, the length penalty's
  length) count it, as in HF;
- greedy (`num_beams=1`) applies the processors to the raw logits and takes the argmax (HF `_sample`);
- beam search applies them to the log-softmax (HF `_beam_search`), keeps 2·K candidates per step,
  moves candidates that end in EOS (or reach `max_length`) and rank in the top K into the finished set
  with score `sum_logprobs / generated_len ** length_penalty` (generated_len counts the tokens after the
  start token, EOS included), and stops per HF's `early_stopping` rule (True: once K hypotheses are
  finished; False: HF's heuristic; "never": the canonical rule).

Everything runs in one `lax.while_loop` (no host round trip per token). The search is written against a
`step_fn(tokens [N], position, cache) -> (logits [N, V], cache)` so tests can drive it with any model;
`bart_generate` plugs in the BART decoder of `decoder_step.py`.
"""
import dataclasses
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp

from ldlg.codecs.bart import decoder_step as decoder_lib
from ldlg.codecs.bart import processors

StepFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
_NEG = -1.0e9  # HF's stand-in for "impossible" beam scores (kept finite so sums stay ordered).


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """Static decoding options (hashable, so a jit specialises on them). Defaults: the LD4LG paper's."""
  num_beams: int = 4
  max_length: int = 64
  min_length: int = 0
  no_repeat_ngram_size: int = 3
  repetition_penalty: float = 1.2
  length_penalty: float = 1.0
  early_stopping: Union[bool, str] = True
  decoder_start_token_id: int = 2
  eos_token_id: int = 2
  pad_token_id: int = 1
  forced_bos_token_id: int | None = 0
  forced_eos_token_id: int | None = 2

  def __post_init__(self):
    if self.num_beams < 1:
      raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
    if self.max_length < 2:
      raise ValueError(f"max_length must be >= 2 (start token + one token), got {self.max_length}")
    if self.no_repeat_ngram_size < 0:
      raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 disables), got {self.no_repeat_ngram_size}")
    if not self.repetition_penalty > 0:
      raise ValueError(f"repetition_penalty must be > 0 (1.0 disables), got {self.repetition_penalty}")
    if self.early_stopping not in (True, False, "never"):
      raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")

  def process(self, scores: jax.Array, sequences: jax.Array, cur_len: jax.Array) -> jax.Array:
    return processors.process_scores(
        scores, sequences, cur_len, repetition_penalty=self.repetition_penalty,
        no_repeat_ngram_size=self.no_repeat_ngram_size, min_length=self.min_length,
        eos_token_id=self.eos_token_id, forced_bos_token_id=self.forced_bos_token_id,
        forced_eos_token_id=self.forced_eos_token_id, max_length=self.max_length)


def greedy_search(step_fn: StepFn, cache: Any, batch_size: int,
                  opts: DecodeOptions) -> tuple[jax.Array, jax.Array]:
  """Greedy decoding (HF `_sample` with do_sample=False).

  Args:
    step_fn: (tokens [B], position, cache) -> (logits [B, V], cache).
    cache: the initial cache for B rows.
    batch_size: B.
    opts: decoding options (num_beams is ignored).
  Returns:
    sequences: [B, T] int32, start token first, pad after EOS.
    scores: [B] float32, sum of the chosen tokens' log-probs under the processed distribution divided
      by generated_len ** length_penalty.
  """
  t = opts.max_length
  seqs = jnp.full((batch_size, t), opts.pad_token_id, jnp.int32).at[:, 0].set(opts.decoder_start_token_id)
  init = dict(cur_len=jnp.int32(1), seqs=seqs, done=jnp.zeros((batch_size,), bool),
              logp=jnp.zeros((batch_size,), jnp.float32), gen_len=jnp.zeros((batch_size,), jnp.int32),
              cache=cache)

  def cond(s):
    return (s["cur_len"] < t) & ~jnp.all(s["done"])

  def body(s):
    cur_len = s["cur_len"]
    tokens = jax.lax.dynamic_index_in_dim(s["seqs"], cur_len - 1, axis=1, keepdims=False)
    logits, cache = step_fn(tokens, cur_len - 1, s["cache"])
    scores = opts.process(logits.astype(jnp.float32), s["seqs"], cur_len)
    nxt = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    lp = jnp.take_along_axis(jax.nn.log_softmax(scores), nxt[:, None], axis=-1)[:, 0]
    live = ~s["done"]
    nxt = jnp.where(live, nxt, opts.pad_token_id)
    seqs = jax.lax.dynamic_update_slice_in_dim(s["seqs"], nxt[:, None], cur_len, axis=1)
    return dict(cur_len=cur_len + 1, seqs=seqs, done=s["done"] | (nxt == opts.eos_token_id),
                logp=s["logp"] + jnp.where(live, lp, 0.0), gen_len=s["gen_len"] + live, cache=cache)

  s = jax.lax.while_loop(cond, body, init)
  lengths = jnp.maximum(s["gen_len"], 1).astype(jnp.float32)
  return s["seqs"], s["logp"] / lengths ** opts.length_penalty


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x: [B, K, ...], idx: [B, K'] -> [B, K', ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(step_fn: StepFn, cache: Any, batch_size: int,
                opts: DecodeOptions) -> tuple[jax.Array, jax.Array]:
  """Beam search with HF PyTorch semantics (see module docstring).

  Args:
    step_fn: (tokens [B*K], position, cache) -> (logits [B*K, V], cache); rows are batch-major
      (row b*K + k is beam k of item b).
    cache: the initial cache for B*K rows; every leaf has the row axis first.
    batch_size: B.
    opts: decoding options, K = opts.num_beams.
  Returns:
    sequences: [B, T] int32, the best finished hypothesis of each item (pad after EOS).
    scores: [B] float32, its length-penalised score.
  """
  b, k, t = batch_size, opts.num_beams, opts.max_length
  lp_exp = opts.length_penalty
  start = jnp.full((b, k, t), opts.pad_token_id, jnp.int32).at[:, :, 0].set(opts.decoder_start_token_id)
  init = dict(
      cur_len=jnp.int32(1),
      running_seqs=start,
      # Only beam 0 is live at first, so the K beams do not start as K copies of the same hypothesis.
      running_scores=jnp.full((b, k), _NEG, jnp.float32).at[:, 0].set(0.0),
      seqs=start,
      scores=jnp.full((b, k), _NEG, jnp.float32),
      finished=jnp.zeros((b, k), bool),
      improvable=jnp.ones((b, 1), bool),  # HF's `is_early_stop_heuristic_unsatisfied`
      all_hit=jnp.bool_(False),
      cache=cache,
  )

  def cond(s):
    open_beam = ~(jnp.all(s["finished"]) & (opts.early_stopping is True))
    return (s["cur_len"] < t) & jnp.any(s["improvable"]) & open_beam & ~s["all_hit"]

  def body(s):
    cur_len = s["cur_len"]
    flat_seqs = s["running_seqs"].reshape(b * k, t)
    tokens = jax.lax.dynamic_index_in_dim(flat_seqs, cur_len - 1, axis=1, keepdims=False)
    logits, cache = step_fn(tokens, cur_len - 1, s["cache"])
    logp = opts.process(jax.nn.log_softmax(logits.astype(jnp.float32)), flat_seqs, cur_len)
    vocab = logp.shape[-1]
    acc = (logp.reshape(b, k, vocab) + s["running_scores"][:, :, None]).reshape(b, k * vocab)

    # 2K candidates, so K survive even if K of them end here.
    top_lp, top_idx = jax.lax.top_k(acc, 2 * k)
    src = top_idx // vocab
    tok = (top_idx % vocab).astype(jnp.int32)
    top_seqs = jax.lax.dynamic_update_slice_in_dim(_gather(s["running_seqs"], src), tok[:, :, None],
                                                   cur_len, axis=2)
    hits = (tok == opts.eos_token_id) | (cur_len + 1 >= t)

    # Running beams: the best K candidates that did not stop.
    run_lp = top_lp + hits * _NEG
    keep = jax.lax.top_k(run_lp, k)[1]
    running_seqs, running_scores = _gather(top_seqs, keep), _gather(run_lp, keep)
    cache_rows = (jnp.arange(b)[:, None] * k + _gather(src, keep)).reshape(-1)
    cache = jax.tree_util.tree_map(lambda x: x[cache_rows], cache)

    # Finished set: candidates that stopped among the top K, length-penalised, merged with the old set.
    just_done = hits & (jnp.arange(2 * k) < k)[None, :]
    fin_lp = top_lp / cur_len.astype(jnp.float32) ** lp_exp
    full = jnp.all(s["finished"], axis=1, keepdims=True) & (opts.early_stopping is True)
    fin_lp = fin_lp + full * _NEG + (~s["improvable"]) * _NEG + (~just_done) * _NEG
    merged_scores = jnp.concatenate([s["scores"], fin_lp], axis=1)
    best = jax.lax.top_k(merged_scores, k)[1]
    seqs = _gather(jnp.concatenate([s["seqs"], top_seqs], axis=1), best)
    scores = _gather(merged_scores, best)
    finished = _gather(jnp.concatenate([s["finished"], just_done], axis=1), best)

    # HF's early-stop heuristic, evaluated at the new length.
    cur_len = cur_len + 1
    if opts.early_stopping == "never" and lp_exp > 0:
      best_len = jnp.float32(t - 1)
    else:
      best_len = (cur_len - 1).astype(jnp.float32)
    best_running = running_scores[:, :1] / best_len ** lp_exp
    worst_done = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), _NEG)
    improvable = s["improvable"] & jnp.any(best_running > worst_done, axis=1, keepdims=True)
    return dict(cur_len=cur_len, running_seqs=running_seqs, running_scores=running_scores, seqs=seqs,
                scores=scores, finished=finished, improvable=improvable, all_hit=jnp.all(hits),
                cache=cache)

  s = jax.lax.while_loop(cond, body, init)
  return s["seqs"][:, 0], s["scores"][:, 0]


def search(step_fn: StepFn, cache: Any, batch_size: int,
           opts: DecodeOptions) -> tuple[jax.Array, jax.Array]:
  """Greedy when opts.num_beams == 1, else beam search (cache rows: batch_size * num_beams)."""
  if opts.num_beams == 1:
    return greedy_search(step_fn, cache, batch_size, opts)
  return beam_search(step_fn, cache, batch_size, opts)


def bart_generate(params, spec: decoder_lib.DecoderSpec, latents: jax.Array, mask: jax.Array,
                  opts: DecodeOptions) -> tuple[jax.Array, jax.Array]:
  """Decodes BART encoder latents. Jit this with `spec` and `opts` static.

  Args:
    params: `FlaxBartForConditionalGeneration` params.
    spec: decoder facts.
    latents: [B, L, d] encoder outputs (e.g. denoised latents, un-normalised).
    mask: [B, L] bool, True at valid positions.
    opts: decoding options.
  Returns:
    sequences: [B, T] int32 token ids (decoder start token first); scores: [B] float32.
  """
  if opts.max_length > spec.max_positions:
    raise ValueError(f"max_length={opts.max_length} exceeds the decoder's max_position_embeddings="
                     f"{spec.max_positions}")
  b = latents.shape[0]
  k = opts.num_beams
  # Beam rows are batch-major: repeat each item K times.
  latents = jnp.repeat(latents.astype(spec.dtype), k, axis=0)
  mask = jnp.repeat(mask.astype(bool), k, axis=0)
  cross_kv = decoder_lib.precompute_cross_kv(params, spec, latents)
  cache = decoder_lib.init_cache(spec, b * k, opts.max_length)

  def step_fn(tokens, position, cache):
    return decoder_lib.decoder_step(params, spec, tokens, position, cache, cross_kv, mask)

  return search(step_fn, cache, b, opts)
