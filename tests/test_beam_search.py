"""Tests of our jit beam search over the BART decoder: equivalences with naive loops over HF's model,
exhaustive optimality on a model small enough to enumerate, and the HF processors' definitions."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from ldlg.codecs.bart import beam_search
from ldlg.codecs.bart import decoder_step
from ldlg.codecs.bart import processors

START, BOS, PAD, EOS = 2, 0, 1, 2


def _tiny_bart(vocab_size: int, seed: int = 0, init_std: float = 0.3, d_model: int = 32):
  # A large init_std makes the random model's next-token distributions peaked and varied.
  config = transformers.BartConfig(
      vocab_size=vocab_size, d_model=d_model, encoder_layers=2, decoder_layers=2,
      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
      max_position_embeddings=64, init_std=init_std, forced_eos_token_id=EOS)
  return transformers.FlaxBartForConditionalGeneration(config, seed=seed)


def _latents(model, batch: int, length: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, model.config.vocab_size, size=(batch, length))
  mask = np.ones((batch, length), np.int32)
  mask[0, length // 2:] = 0  # one padded row, so the encoder mask matters
  return model.encode(ids, mask).last_hidden_state, mask.astype(bool)


def _generate(model, latents, mask, **options):
  spec = decoder_step.DecoderSpec.from_config(model.config)
  opts = beam_search.DecodeOptions(**options)
  fn = jax.jit(beam_search.bart_generate, static_argnums=(1, 4))
  seqs, scores = fn(model.params, spec, latents, mask, opts)
  return np.asarray(seqs), np.asarray(scores)


def _full_logits(model, ids: np.ndarray, latents, mask) -> np.ndarray:
  """HF's full (uncached) decoder over whole sequences: [N, T] ids -> [N, T, V] logits.

  Causal attention makes the logits at position i depend on ids[:, :i+1] only, so prefixes of any length
  can be right-padded to one shape (one compile) and read at their last position.
  """
  return np.asarray(_full_logits_fn(model)(model.params, jnp.asarray(ids), latents, jnp.asarray(mask)),
                    np.float32)


@functools.lru_cache(maxsize=8)
def _full_logits_fn(model):
  return jax.jit(lambda params, ids, latents, mask: model.decode(
      ids, (latents,), encoder_attention_mask=mask, params=params).logits)


def _prefix_log_probs(model, latents, mask, prefixes: list[list[int]], width: int) -> dict:
  """{prefix: log_softmax of the next-token logits after it}, latents: [1, L, d]."""
  ids = np.full((len(prefixes), width), PAD, np.int32)
  for r, p in enumerate(prefixes):
    ids[r, :len(p)] = p
  n = len(prefixes)
  logits = _full_logits(model, ids, jnp.repeat(latents, n, 0), np.repeat(mask, n, 0))
  last = logits[np.arange(n), [len(p) - 1 for p in prefixes]]
  return {tuple(p): lp for p, lp in zip(prefixes, np.asarray(jax.nn.log_softmax(last)))}


# ------------------------------------------------------------------------------ naive HF processors

def _naive_process(scores: np.ndarray, seq: list[int], *, penalty=1.0, ngram=0, min_length=0,
                   forced_bos=None, forced_eos=None, max_length=64) -> np.ndarray:
  """HF's processors for one hypothesis, written as plainly as HF's PyTorch code."""
  scores = scores.copy()
  cur_len = len(seq)
  if penalty != 1.0:
    for tok in set(seq):
      scores[tok] = scores[tok] * penalty if scores[tok] < 0 else scores[tok] / penalty
  if ngram and cur_len + 1 >= ngram:
    grams = {}
    for g in zip(*[seq[i:] for i in range(ngram)]):
      grams.setdefault(tuple(g[:-1]), []).append(g[-1])
    for tok in grams.get(tuple(seq[cur_len - ngram + 1:]), []):
      scores[tok] = -np.inf
  if cur_len < min_length:
    scores[EOS] = -np.inf
  if forced_bos is not None and cur_len == 1:
    scores[:] = -np.inf
    scores[forced_bos] = 0
  if forced_eos is not None and cur_len == max_length - 1:
    scores[:] = -np.inf
    scores[forced_eos] = 0
  return scores


def _naive_greedy(model, latents, mask, max_length, **proc) -> np.ndarray:
  """Greedy decoding one token at a time, re-running the full decoder over the prefix (no cache);
  processors on logits, as HF's greedy search."""
  out = []
  for b in range(latents.shape[0]):
    seq = [START]
    while len(seq) < max_length and (len(seq) == 1 or seq[-1] != EOS):
      ids = np.array([seq + [PAD] * (max_length - len(seq))])
      logits = _full_logits(model, ids, latents[b:b + 1], mask[b:b + 1])[0, len(seq) - 1]
      seq.append(int(np.argmax(_naive_process(logits, seq, max_length=max_length, **proc))))
    out.append(seq + [PAD] * (max_length - len(seq)))
  return np.array(out)


# ------------------------------------------------------------------------------ tests

def test_decoder_step_matches_hf_full_decoder():
  model = _tiny_bart(30, init_std=0.02)
  latents, mask = _latents(model, 3, 7)
  rng = np.random.default_rng(1)
  dec = rng.integers(0, 30, size=(3, 9))
  dec[:, 0] = START
  full = _full_logits(model, dec, latents, mask)
  spec = decoder_step.DecoderSpec.from_config(model.config)
  cross = decoder_step.precompute_cross_kv(model.params, spec, latents)
  cache = decoder_step.init_cache(spec, 3, 9)
  step = jax.jit(decoder_step.decoder_step, static_argnums=1)
  for pos in range(9):
    logits, cache = step(model.params, spec, jnp.asarray(dec[:, pos]), jnp.int32(pos), cache, cross,
                         jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(logits), full[:, pos], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("proc", [
    dict(),
    dict(penalty=1.3, ngram=2, min_length=6, forced_bos=BOS, forced_eos=EOS),
])
def test_greedy_equals_naive_loop(proc):
  model = _tiny_bart(30)
  latents, mask = _latents(model, 3, 6)
  max_length = 12
  seqs, _ = _generate(model, latents, mask, num_beams=1, max_length=max_length,
                      repetition_penalty=proc.get("penalty", 1.0),
                      no_repeat_ngram_size=proc.get("ngram", 0), min_length=proc.get("min_length", 0),
                      forced_bos_token_id=proc.get("forced_bos"),
                      forced_eos_token_id=proc.get("forced_eos"))
  np.testing.assert_array_equal(seqs, _naive_greedy(model, latents, mask, max_length, **proc))


@pytest.fixture(scope="module")
def enumerable():
  """Vocab 6, max_length 6: [start, <s>, x, y, z, </s>] has 3 free slots, 156 sequences in all."""
  vocab, max_length = 6, 6
  model = _tiny_bart(vocab, seed=3, init_std=0.5)
  latents, mask = _latents(model, 2, 5)
  free = [t for t in range(vocab) if t != EOS]
  candidates = [[START, BOS] + list(mid) + [EOS]
                for k in range(max_length - 2) for mid in itertools.product(free, repeat=k)]
  prefixes = sorted({tuple(c[:i]) for c in candidates for i in range(1, len(c))})
  log_probs = [_prefix_log_probs(model, latents[b:b + 1], mask[b:b + 1], [list(p) for p in prefixes],
                                 max_length) for b in range(2)]
  return model, latents, mask, candidates, log_probs, max_length


@pytest.mark.parametrize("penalty,length_penalty", [(1.0, 1.0), (1.5, 1.0), (1.0, 0.0), (1.2, 2.0)])
def test_beam_search_finds_enumerated_optimum(enumerable, penalty, length_penalty):
  """With 160 >= 156 beams the search is exhaustive, so it must return the best sequence under HF's
  beam score: sum of processed log-probs / generated_len ** length_penalty."""
  model, latents, mask, candidates, log_probs, max_length = enumerable
  assert len(candidates) == 156
  seqs, scores = _generate(model, latents, mask, num_beams=160, max_length=max_length,
                           repetition_penalty=penalty, length_penalty=length_penalty,
                           no_repeat_ngram_size=0, forced_bos_token_id=BOS, forced_eos_token_id=EOS)
  proc = dict(penalty=penalty, forced_bos=BOS, forced_eos=EOS, max_length=max_length)
  for b in range(2):
    def score(cand):
      total = sum(_naive_process(log_probs[b][tuple(cand[:i])], cand[:i], **proc)[cand[i]]
                  for i in range(1, len(cand)))
      return total / (len(cand) - 1) ** length_penalty
    scored = sorted(((score(c), c) for c in candidates), reverse=True)
    best_score, best_seq = scored[0]
    assert best_score > scored[1][0] + 1e-4  # a unique optimum, so the comparison is meaningful
    assert seqs[b, :len(best_seq)].tolist() == best_seq
    assert np.all(seqs[b, len(best_seq):] == PAD)
    np.testing.assert_allclose(scores[b], best_score, rtol=1e-4)


def _has_repeated_ngram(seq, n=3) -> bool:
  seq = list(seq)
  if EOS in seq[1:]:
    seq = seq[:seq.index(EOS, 1) + 1]
  grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
  return len(grams) != len(set(grams))


@pytest.mark.parametrize("num_beams", [1, 4])
def test_no_repeat_ngram(num_beams):
  # A near-zero-init random BART copies its input token (tied embeddings), so it repeats a lot.
  model = _tiny_bart(30, init_std=0.05, seed=1)
  latents, mask = _latents(model, 4, 6)
  common = dict(num_beams=num_beams, max_length=24, repetition_penalty=1.0)
  free, _ = _generate(model, latents, mask, no_repeat_ngram_size=0, **common)
  assert any(_has_repeated_ngram(s) for s in free), free  # the ban below has something to do
  banned, _ = _generate(model, latents, mask, no_repeat_ngram_size=3, **common)
  assert not any(_has_repeated_ngram(s) for s in banned), banned


def test_repetition_penalty_definition():
  scores = jnp.array([[2.0, -1.0, 0.5, -3.0, 0.0, 4.0]])
  seen = jnp.array([[True, True, False, False, True, True]])
  out = processors.apply_repetition_penalty(scores, seen, 1.25)
  np.testing.assert_allclose(out, [[1.6, -1.25, 0.5, -3.0, 0.0, 3.2]], rtol=1e-6)
  np.testing.assert_array_equal(processors.apply_repetition_penalty(scores, seen, 1.0), scores)


def test_tokens_seen_counts_only_real_positions():
  seqs = jnp.array([[2, 0, 5, 5, 1, 1], [2, 0, 3, 4, 4, 1]])
  seen = processors.tokens_seen(seqs, jnp.int32(4), 6)
  np.testing.assert_array_equal(seen, [[1, 0, 1, 0, 0, 1], [1, 0, 1, 1, 1, 0]])


def test_no_repeat_ngram_banned_tokens():
  seqs = jnp.array([[2, 7, 8, 9, 7, 8, 1, 1],    # 7 8 9 ... 7 8 -> ban 9
                    [2, 4, 5, 9, 9, 4, 5, 3],    # (9, 4, 5) would ban 5, but index 6 is not real yet
                    [2, 7, 8, 1, 1, 1, 1, 1]])   # 1 1 1 ... 1 1 -> ban 1
  banned = np.asarray(processors.no_repeat_ngram_banned(seqs, jnp.int32(6), 3, 10))
  assert [np.flatnonzero(row).tolist() for row in banned] == [[9], [], [1]]
  # Before any trigram is complete nothing is banned.
  early = np.asarray(processors.no_repeat_ngram_banned(seqs, jnp.int32(2), 3, 10))
  assert not early.any()


def test_decode_options_validate():
  with pytest.raises(ValueError, match="num_beams"):
    beam_search.DecodeOptions(num_beams=0)
  with pytest.raises(ValueError, match="early_stopping"):
    beam_search.DecodeOptions(early_stopping="sometimes")
