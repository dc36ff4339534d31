"""N-gram metrics, seq2seq scores, perplexity and the GPT-2 featurizer, on hand-computed cases and tiny models."""
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from ldlg.evaluation import evaluate
from ldlg.evaluation import batching
from ldlg.evaluation import classifier as classifier_lib
from ldlg.evaluation import featurizers
from ldlg.evaluation import ngram_metrics as ng
from ldlg.evaluation import perplexity as ppl_lib
from ldlg.evaluation import seq2seq_metrics as s2s

# ---------------------------------------------------------------- tokenizer and n-gram metrics


def test_tokenizer_splits_like_spacy_and_ignores_ptb_spacing():
  assert ng.word_tokenize("It's a family-friendly place, isn't it?") == [
      "It", "'s", "a", "family", "-", "friendly", "place", ",", "is", "n't", "it", "?"]
  assert ng.word_tokenize("We can't go to the U.S. in 3.5 hours...") == [
      "We", "ca", "n't", "go", "to", "the", "U.S.", "in", "3.5", "hours", "..."]
  # SST/E2E ship PTB-tokenized text; detokenized text must give the same tokens.
  ptb = "It 's not a family - friendly venue , is n't it ?"
  detok = "It's not a family-friendly venue, isn't it?"
  assert ng.word_tokenize(ptb) == ng.word_tokenize(detok)


TEXTS = ["the cat sat on the cat", "the cat sat down"]


def test_diversity_hand_computed():
  # 2-grams: text 1 has (the cat)(cat sat)(sat on)(on the)(the cat) = 5, text 2 (the cat)(cat sat)(sat down) = 3;
  #   8 in all, 5 distinct -> rep_2 = 1 - 5/8 = 3/8.
  # 3-grams: 4 + 2 = 6, distinct: the cat sat, cat sat on, sat on the, on the cat, cat sat down = 5 -> rep_3 = 1/6.
  # 4-grams: 3 + 1 = 4, all distinct -> rep_4 = 0.   diversity = (5/8)(5/6)(1) = 25/48.
  out = ng.diversity(TEXTS)
  assert out["rep_2"] == pytest.approx(3 / 8)
  assert out["rep_3"] == pytest.approx(1 / 6)
  assert out["rep_4"] == pytest.approx(0.0)
  assert out["diversity"] == pytest.approx(25 / 48)
  assert ng.distinct_n_pooled(TEXTS, 2) == pytest.approx(5 / 8)


def test_memorization_hand_computed_and_case_sensitive():
  train = ["The cat sat on the mat", "the cat sat on the mat"]
  # Training 4-grams (case kept): The cat sat on / the cat sat on / cat sat on the / sat on the mat.
  # Generated 4-grams: the cat sat on (yes), cat sat on the (yes), sat on the cat (no), the cat sat down (no) -> 2/4.
  assert ng.memorization(TEXTS, train) == pytest.approx(0.5)
  assert ng.memorization(TEXTS, ng.training_ngrams(train)) == pytest.approx(0.5)
  assert ng.memorization(["The cat sat on"], ["the cat sat on"]) == 0.0
  assert ng.memorization(TEXTS, TEXTS) == 1.0


def test_unique_tokens_and_reference_word_count():
  texts = ["The cat, the dog.", "a cat"]
  # word_tokenize: The cat , the dog . a cat -> {The, cat, ",", the, dog, ".", a} = 7 (case and punctuation count).
  assert ng.unique_tokens(texts) == 7
  # CountVectorizer style: lowercased, >= 2 word characters: {the, cat, dog} = 3.
  assert ng.unique_words(texts) == 3


def test_distinct_n_is_a_mean_over_texts():
  # "a a b": unigrams 3, distinct 2 -> 2/3; "c d": 2/2 = 1; mean 5/6.
  assert ng.distinct_n(["a a b", "c d"], 1) == pytest.approx(5 / 6)


def test_degenerate_sets_give_nan_and_bad_input_raises():
  assert math.isnan(ng.diversity(["", "one"])["diversity"])
  assert math.isnan(ng.memorization(["too short"], ["whatever text is here"]))
  with pytest.raises(ValueError, match="single string"):
    ng.diversity("the cat sat")
  with pytest.raises(ValueError, match="empty"):
    ng.unique_tokens([])
  with pytest.raises(ValueError, match=">= 1"):
    ng.ngrams(["a"], 0)


# ---------------------------------------------------------------- seq2seq metrics


def test_bleu_identical_is_100_and_multi_reference():
  hyps = ["the cat sat on the mat today", "a dog barked at the postman loudly"]
  assert s2s.corpus_bleu(hyps, hyps) == pytest.approx(100.0)
  # A variable number of references per example; the matching one anywhere gives 100.
  refs = [["something else entirely here", hyps[0]], [hyps[1]]]
  assert s2s.corpus_bleu(hyps, refs) == pytest.approx(100.0)
  assert s2s.corpus_bleu(hyps, ["completely unrelated words", "nothing shared whatsoever"]) < 1.0
  assert s2s.self_bleu([hyps[0]] * 3) == pytest.approx(100.0)
  with pytest.raises(ValueError, match="one reference entry per hypothesis"):
    s2s.corpus_bleu(hyps, hyps[:1])


def test_rouge_l_hand_example():
  # hyp: the gunman was killed by police (6), ref: police killed the gunman (4).
  # Common subsequences: "the gunman" (2), "killed" (1), "police" (1) -> LCS = 2.
  # P = 2/6, R = 2/4, F = 2PR/(P+R) = (1/3)/(5/6) = 0.4.
  out = s2s.rouge_l("The gunman was killed by police.", "Police killed the gunman!")
  assert out["precision"] == pytest.approx(1 / 3)
  assert out["recall"] == pytest.approx(1 / 2)
  assert out["f1"] == pytest.approx(0.4)
  assert s2s.mean_rouge_l(["a b c", "x"], ["a b c", "y"]) == pytest.approx(0.5)


def test_lcs_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(30):
    a = list(rng.choice(list("abc"), size=rng.integers(0, 7)))
    b = list(rng.choice(list("abc"), size=rng.integers(0, 7)))
    brute = max((k for k in range(len(a) + 1) for sub in itertools.combinations(a, k)
                 if _is_subsequence(sub, b)), default=0)
    assert s2s.lcs_length(a, b) == brute


def _is_subsequence(sub, seq):
  it = iter(seq)
  return all(x in it for x in sub)


def test_greedy_match_closed_form():
  e = np.eye(3, dtype=np.float32)
  # hyp tokens e0, e1 against ref tokens e0, e2: each side matches one token exactly, the other at cos 0.
  p, r, f = s2s.greedy_match(e[[0, 1]], e[[0, 2, 2]])
  assert (p, r) == pytest.approx((0.5, 1 / 3))
  assert f == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
  assert s2s.greedy_match(e[:0], e) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------- tiny GPT-2: perplexity and featurizer

WORDS = "the cat sat on mat a dog ran home fast slow big small red blue".split()


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
  """A randomly initialised 2-layer FlaxGPT2LMHeadModel and a word-level tokenizer, saved to a folder."""
  folder = tmp_path_factory.mktemp("tiny_gpt2")
  vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                                   eos_token="<|endoftext|>", unk_token="[UNK]")
  config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                   bos_token_id=0, eos_token_id=0)
  model = transformers.FlaxGPT2LMHeadModel(config, seed=0)
  # Random init gives nearly uniform predictions; scale the embeddings so perplexities differ per text.
  model.params = jax.tree_util.tree_map(lambda x: x * 8.0 if x.ndim == 2 and x.shape[0] == len(vocab) else x,
                                        model.params)
  model.save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  return folder, model, tokenizer


PPL_TEXTS = ["the cat sat on the mat", "a dog ran home", "red", "big small red blue dog cat the sat on mat a"]


def _forward(model):
  """The model's plain call, jitted (op-by-op Flax is slow); one trace per text length."""
  if not hasattr(model, "_test_forward"):
    model._test_forward = jax.jit(lambda ids: model(ids))
  return model._test_forward


def _naive_perplexity(model, tokenizer, text):
  """exp(mean NLL) from one unbatched, unpadded forward pass and a per-token loop in float64 numpy."""
  ids = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)
  logits = np.asarray(_forward(model)(jnp.array([ids])).logits[0], np.float64)  # [L, V]
  nll = []
  for t in range(1, len(ids)):
    row = logits[t - 1]  # position t-1 predicts token t
    log_z = row.max() + math.log(np.exp(row - row.max()).sum())
    nll.append(log_z - row[ids[t]])
  return math.exp(sum(nll) / len(nll))


def test_perplexity_matches_naive_loop(tiny_gpt2):
  _, model, tokenizer = tiny_gpt2
  lm = ppl_lib.causal_lm_from_hf(model, tokenizer, name="tiny")
  got = ppl_lib.perplexities(PPL_TEXTS, lm, batch_size=3, max_length=32)
  want = [_naive_perplexity(model, tokenizer, t) for t in PPL_TEXTS]
  np.testing.assert_allclose(got, want, rtol=1e-4)
  assert len(set(np.round(got, 3))) == len(PPL_TEXTS)  # the texts are told apart: the check has teeth
  assert ppl_lib.mean_perplexity(PPL_TEXTS, lm, batch_size=3, max_length=32) == pytest.approx(np.mean(want),
                                                                                               rel=1e-4)
  # max_length counts BOS: keeping 3 tokens scores the first 2 words only.
  cut = ppl_lib.perplexities(["the cat sat on"], lm, max_length=3)
  np.testing.assert_allclose(cut, [_naive_perplexity(model, tokenizer, "the cat")], rtol=1e-4)


def test_perplexity_compiles_once_per_bucket(tiny_gpt2):
  _, model, tokenizer = tiny_gpt2
  traces = []
  base = ppl_lib.causal_lm_from_hf(model, tokenizer)

  def counting_logits(params, ids, mask):
    traces.append(ids.shape)
    return base.logits_fn(params, ids, mask)

  lm = ppl_lib.CausalLM("tiny", counting_logits, base.params, base.encode, base.bos_id)
  ppl_lib.perplexities(PPL_TEXTS, lm, batch_size=2, max_length=32)
  ppl_lib.perplexities(PPL_TEXTS[::-1], lm, batch_size=2, max_length=32)
  assert traces == [(2, 16)]  # every text fits the 16 bucket: one trace for both calls


def test_perplexity_rejects_empty_text(tiny_gpt2):
  _, model, tokenizer = tiny_gpt2
  lm = ppl_lib.causal_lm_from_hf(model, tokenizer)
  with pytest.raises(ValueError, match=r"texts \[1\] have no tokens"):
    ppl_lib.perplexities(["the cat", ""], lm)


def test_load_causal_lm_from_folder_and_offline_error(tiny_gpt2):
  folder, model, tokenizer = tiny_gpt2
  lm = ppl_lib.load_causal_lm(str(folder))
  assert lm.name == folder.name
  np.testing.assert_allclose(ppl_lib.perplexities(PPL_TEXTS, lm),
                             ppl_lib.perplexities(PPL_TEXTS, ppl_lib.causal_lm_from_hf(model, tokenizer)),
                             rtol=1e-5)
  with pytest.raises(RuntimeError, match="local folder"):
    ppl_lib.load_causal_lm(str(folder / "missing"))


def test_gpt2_featurizer_is_last_token_state_and_padding_invariant(tiny_gpt2):
  folder, _, tokenizer = tiny_gpt2
  feats = featurizers.get_featurizer(str(folder), batch_size=3, max_length=32)
  assert feats.name == folder.name
  base = transformers.FlaxGPT2Model.from_pretrained(folder)
  got = feats(PPL_TEXTS)
  for i, text in enumerate(PPL_TEXTS):
    ids = jnp.array([tokenizer.encode(text)])
    np.testing.assert_allclose(got[i], _forward(base)(ids).last_hidden_state[0, -1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(feats(PPL_TEXTS[::-1])[::-1], got, rtol=1e-5, atol=1e-6)
  assert feats.num_traces == 1
  assert feats([""]).shape == (1, 32)  # empty text is featurized as [eos], keeping rows aligned


def test_featurizer_selection_offline(monkeypatch):
  with pytest.raises(featurizers.FeaturizerUnavailableError, match="auto"):
    featurizers.get_featurizer("gpt2-large")
  sentinel = object()
  monkeypatch.setattr(featurizers, "MiniLMFeaturizer", lambda **kw: sentinel)
  assert featurizers.get_featurizer("auto") is sentinel  # falls back only when asked to


# ---------------------------------------------------------------- classifier, batching, evaluate_texts


class BagOfWords:
  """A transparent featurizer for tests: counts of a fixed word list."""
  name = "bag-of-words"

  def __init__(self, words):
    self.words = words

  def __call__(self, texts):
    return np.array([[t.split().count(w) for w in self.words] for t in texts], np.float32)


def test_classifier_separable_case():
  bow = BagOfWords(["good", "great", "bad", "awful", "film"])
  train = ["good film", "great film", "good great", "bad film", "awful film", "bad awful"]
  clf = classifier_lib.train_classifier(train, [1, 1, 1, 0, 0, 0], bow)
  assert clf.accuracy(["a good one", "great", "awful", "so bad"], [1, 1, 0, 0]) == 1.0
  assert clf.accuracy(["a good one", "great", "awful", "so bad"], [0, 0, 1, 1]) == 0.0
  with pytest.raises(ValueError, match="two classes"):
    classifier_lib.train_classifier(train, [1] * 6, bow)


def test_batches_cover_every_text_once_with_bucketed_shapes():
  ids = [[1] * n for n in (3, 17, 1, 40, 5)]
  batches = list(batching.iterate_batches(ids, batch_size=2, buckets=batching.bucket_lengths(64)))
  assert batching.bucket_lengths(64) == (16, 32, 64)
  assert sorted(np.concatenate([b.indices for b in batches]).tolist()) == list(range(5))
  for b in batches:
    assert b.input_ids.shape[0] == 2 and b.input_ids.shape[1] in (16, 32, 64)
    np.testing.assert_array_equal(b.attention_mask[:len(b.indices)].sum(1), [len(ids[i]) for i in b.indices])
  with pytest.raises(ValueError, match="truncate"):
    list(batching.iterate_batches([[1] * 70], batch_size=2, buckets=(16, 64)))


def test_evaluate_texts_structure(tiny_gpt2, tmp_path):
  _, model, tokenizer = tiny_gpt2
  bow = BagOfWords(WORDS)
  rng = np.random.default_rng(0)
  samples = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(40)] + [""]
  reference = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(40)]
  train = ["the cat sat on the mat", "a dog ran home fast", "the red cat", "a blue dog"]
  out = evaluate.evaluate_texts(samples, reference, train, featurizer=bow,
                                ppl_model=ppl_lib.causal_lm_from_hf(model, tokenizer, "tiny"),
                                sample_labels=[int("cat" in s) for s in samples], train_labels=[1, 0, 1, 0],
                                num_draws=2, draw_size=20)
  assert out["num_samples"] == 41 and out["num_empty_samples"] == 1
  assert out["mauve"]["featurizer"] == "bag-of-words" and len(out["mauve"]["values"]) == 2
  assert out["mauve"]["draw_size"] == 20
  assert out["diversity"] == pytest.approx(ng.diversity(samples)["diversity"])
  assert out["memorization"] == pytest.approx(ng.memorization(samples, train))
  assert out["perplexity"]["num_texts"] == 40 and out["perplexity"]["num_skipped_empty"] == 1
  assert out["perplexity"]["model"] == "tiny"
  assert 0.0 <= out["class_accuracy"]["accuracy"] <= 1.0
  evaluate.save_metrics(out, tmp_path / "m" / "metrics.json")
  assert json.loads((tmp_path / "m" / "metrics.json").read_text())["unique_tokens"] == out["unique_tokens"]
  with pytest.raises(ValueError, match="train_labels"):
    evaluate.evaluate_texts(samples, reference, train, featurizer=bow, sample_labels=[0] * 41,
                            num_draws=1, draw_size=20)


def test_evaluate_draws_with_precomputed_reference_features_and_grams_is_the_same(caplog):
  """Scoring several sample sets against one reference featurizes it once: the result must not change."""
  caplog.set_level("INFO")
  bow = BagOfWords(WORDS)
  rng = np.random.default_rng(1)
  samples = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(30)]
  reference = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(30)]
  train = ["the cat sat on the mat", "a dog ran home fast", "the red cat", "a blue dog"]
  plain = evaluate.evaluate_draws(samples, reference, train, featurizer=bow, num_draws=3)
  shared = evaluate.evaluate_draws(samples, reference, ng.training_ngrams(train), featurizer=bow, num_draws=3,
                                   reference_features=bow(reference))
  assert shared == plain
  # Progress: one line per draw with that draw's scores, as the stage goes.
  mauve_2 = plain["mauve"]["values"][1]
  assert f"Draw 2/3: mauve {mauve_2:.4g}, diversity" in caplog.text
  with pytest.raises(ValueError, match="reference_features has 29 rows"):
    evaluate.evaluate_draws(samples, reference, train, featurizer=bow, reference_features=bow(reference[:29]))


def test_perplexity_over_draws_is_evaluate_draws_perplexity_and_its_median_resists_outliers(tiny_gpt2):
  """The judge alone (the recipe's back-fill of the median) gives evaluate_draws' own perplexity entries."""
  _, model, tokenizer = tiny_gpt2
  lm = ppl_lib.causal_lm_from_hf(model, tokenizer, "tiny")
  bow = BagOfWords(WORDS)
  rng = np.random.default_rng(2)
  samples = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(12)] + [""]
  reference = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(13)]
  full = evaluate.evaluate_draws(samples, reference, ["the cat sat"], featurizer=bow, num_draws=2, ppl_model=lm)
  alone = evaluate.perplexity_over_draws(samples, lm, num_draws=2)
  assert alone == {k: full[k] for k in ("perplexity", "perplexity_median")}
  assert alone["perplexity_median"]["model"] == "tiny" and len(alone["perplexity_median"]["values"]) == 2
  # Each draw's median is one of its middle texts' perplexities; the empty text is skipped, not scored.
  for idx, med, mean in zip(np.array_split(np.arange(13), 2), alone["perplexity_median"]["values"],
                            alone["perplexity"]["values"]):
    ppl = np.sort(ppl_lib.perplexities([samples[i] for i in idx if samples[i]], lm))
    assert ppl[(len(ppl) - 1) // 2] <= med <= ppl[len(ppl) // 2] and mean == pytest.approx(ppl.mean())


def test_shuffle_words_keeps_the_multiset():
  texts = ["the cat sat on the mat", "a b c d e f g"]
  shuffled = evaluate.shuffle_words(texts, seed=1)
  assert [sorted(t.split()) for t in shuffled] == [sorted(t.split()) for t in texts]
  assert shuffled != texts


def _row(**values):
  return {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": list(v)} for m, v in values.items()}


def test_compare_draws_gives_the_welch_difference_with_its_closed_form_error():
  compare_draws = evaluate.compare_draws
  out = compare_draws(_row(mauve=[1.0, 2.0, 3.0], diversity=[0.5, 0.5]), _row(mauve=[4.0, 5.0, 6.0]))
  assert set(out) == {"mauve"}                         # Only metrics both rows have.
  c = out["mauve"]
  assert c["difference"] == -3.0 and c["num_draws"] == (3, 3)
  assert c["std_error"] == pytest.approx(math.sqrt(2 / 3))   # Sample variances 1 and 1, 3 draws each.
  assert c["t"] == pytest.approx(-3.0 / math.sqrt(2 / 3))
  assert 0.01 < c["p_value"] < 0.05                    # t = -3.67 on 4 degrees of freedom: p = 0.021.
  same = compare_draws(_row(perplexity=[10.0, 12.0]), _row(perplexity=[10.0, 12.0]))["perplexity"]
  assert same["difference"] == 0.0 and same["p_value"] == pytest.approx(1.0)
  exact = compare_draws(_row(mauve=[0.5, 0.5]), _row(mauve=[0.25, 0.25]))["mauve"]
  assert exact["p_value"] == 0.0 and exact["t"] == math.inf
  with pytest.raises(ValueError, match="at least 2 draws"):
    compare_draws(_row(mauve=[0.5]), _row(mauve=[0.4, 0.6]))


def test_the_quality_table_tests_the_self_conditioning_ablation():
  from ldlg.benchmarks import quality
  rows = {"LD4LG": _row(mauve=[0.30, 0.32, 0.34]), "LD4LG w/o self-cond": _row(mauve=[0.20, 0.22, 0.24])}
  line = quality.comparison_line(rows, "LD4LG", "LD4LG w/o self-cond")
  assert line.startswith("LD4LG − LD4LG w/o self-cond") and "MAUVE +0.1 ± 0.016" in line and "Welch p = " in line
