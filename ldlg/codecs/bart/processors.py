"""Next-token score processors, as Hugging Face `generate` applies them, in jnp (jit-friendly, no bcoo).

Each works on scores [N, V] (logits or log-probabilities, whichever the search feeds) given the sequences
generated so far, a static-shaped buffer `sequences: [N, T]` of which the first `cur_len` columns are real
(column 0 is the decoder start token; HF counts it too, so e.g. BART's start token `</s>` is penalised by
the repetition penalty exactly as in HF). Banned tokens get -inf, as in HF.

`process_scores` applies them in HF's order (`GenerationMixin._get_logits_processor`): repetition penalty,
no-repeat-n-gram, min length, forced BOS, forced EOS.
"""
import jax
import jax.numpy as jnp


def tokens_seen(sequences: jax.Array, cur_len: jax.Array, vocab_size: int) -> jax.Array:
  """Which tokens occur in each row's first `cur_len` positions.

  Args:
    sequences: [N, T] int32.
    cur_len: scalar int, number of real positions.
    vocab_size: V.
  Returns:
    [N, V] bool.
  """
  n, t = sequences.shape
  real = (jnp.arange(t) < cur_len).astype(jnp.int32)
  counts = jnp.zeros((n, vocab_size), jnp.int32).at[jnp.arange(n)[:, None], sequences].add(
      jnp.broadcast_to(real, (n, t)))
  return counts > 0


def apply_repetition_penalty(scores: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
  """HF `RepetitionPenaltyLogitsProcessor` (CTRL, Keskar et al. 2019) on tokens already generated.

  A seen token's score s becomes s / penalty if s > 0 (and 0 stays 0), s * penalty if s < 0: with
  penalty > 1 both make it less likely.

  Args:
    scores: [N, V] float.
    seen: [N, V] bool, from `tokens_seen`.
    penalty: > 0; 1.0 is a no-op.
  Returns:
    [N, V] float.
  """
  penalized = jnp.where(scores < 0, scores * penalty, scores / penalty)
  return jnp.where(seen, penalized, scores)


def no_repeat_ngram_banned(sequences: jax.Array, cur_len: jax.Array, ngram_size: int,
                           vocab_size: int) -> jax.Array:
  """HF `NoRepeatNGramLogitsProcessor`: tokens that would complete an n-gram already in the row.

  For every n-gram `sequences[i : i+n]` fully inside the first `cur_len` positions whose first n-1 tokens
  equal the row's last n-1 tokens, the n-gram's last token is banned.

  Args:
    sequences: [N, T] int32.
    cur_len: scalar int, number of real positions.
    ngram_size: n >= 1.
    vocab_size: V.
  Returns:
    [N, V] bool, True where banned.
  """
  n_rows, t = sequences.shape
  if ngram_size > t:
    return jnp.zeros((n_rows, vocab_size), bool)
  num_windows = t - ngram_size + 1
  # An n-gram starting at i is complete once i + n <= cur_len.
  match = jnp.broadcast_to(jnp.arange(num_windows) <= cur_len - ngram_size, (n_rows, num_windows))
  for j in range(ngram_size - 1):
    # Token j of the row's (n-1)-token suffix; clipped index only matters when no window is valid.
    last_j = jax.lax.dynamic_index_in_dim(
        sequences, jnp.clip(cur_len - (ngram_size - 1) + j, 0, t - 1), axis=1, keepdims=True)
    match = match & (sequences[:, j:j + num_windows] == last_j)
  completing = sequences[:, ngram_size - 1:ngram_size - 1 + num_windows]
  counts = jnp.zeros((n_rows, vocab_size), jnp.int32).at[
      jnp.arange(n_rows)[:, None], completing].add(match.astype(jnp.int32))
  return counts > 0


def process_scores(scores: jax.Array, sequences: jax.Array, cur_len: jax.Array, *,
                   repetition_penalty: float, no_repeat_ngram_size: int, min_length: int,
                   eos_token_id: int, forced_bos_token_id: int | None,
                   forced_eos_token_id: int | None, max_length: int) -> jax.Array:
  """All processors in HF's order. Shapes as above; lengths count the decoder start token (as HF does).

  Args:
    scores: [N, V] float32.
    sequences: [N, T] int32, first `cur_len` columns real.
    cur_len: scalar int, the length of the sequences before the token being scored is appended.
    repetition_penalty: 1.0 disables it.
    no_repeat_ngram_size: 0 disables it.
    min_length: EOS is banned while cur_len < min_length.
    eos_token_id: the end token.
    forced_bos_token_id: forced as the token at index 1 (BART's `<s>` after the `</s>` start); None: off.
    forced_eos_token_id: forced as the token at index max_length - 1; None: off.
    max_length: the total sequence length T (start token included).
  Returns:
    [N, V] float32.
  """
  vocab_size = scores.shape[-1]
  if repetition_penalty != 1.0:
    scores = apply_repetition_penalty(scores, tokens_seen(sequences, cur_len, vocab_size),
                                      repetition_penalty)
  if no_repeat_ngram_size > 0:
    banned = no_repeat_ngram_banned(sequences, cur_len, no_repeat_ngram_size, vocab_size)
    scores = jnp.where(banned, -jnp.inf, scores)
  vocab = jnp.arange(vocab_size)
  if min_length > 0:
    scores = jnp.where((vocab == eos_token_id) & (cur_len < min_length), -jnp.inf, scores)

  def force(scores, token, when):
    forced = jnp.where(vocab == token, 0.0, -jnp.inf).astype(scores.dtype)
    return jnp.where(when, forced[None, :], scores)

  if forced_bos_token_id is not None:
    scores = force(scores, forced_bos_token_id, cur_len == 1)
  if forced_eos_token_id is not None:
    scores = force(scores, forced_eos_token_id, cur_len == max_length - 1)
  return scores
