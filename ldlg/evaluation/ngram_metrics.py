r"""Surface-form metrics of a set of generated texts: diversity, memorization, unique tokens, distinct-n.

One word tokenizer, `word_tokenize`, is used by every metric here, so the numbers are comparable with one
another and across runs. (BLEU and ROUGE-L in `seq2seq_metrics` keep their own standard tokenizations.)

Why this tokenizer. The reference LD4LG evaluation tokenizes with spaCy's English rule-based tokenizer
(`en_core_web_sm`'s, case preserved) before counting n-grams. spaCy and its model are heavy and the model is
not on PyPI, so `word_tokenize` is a dependency-free regex that follows spaCy's rules where they matter for
n-gram counts: case is kept (so "The" and "the" are different tokens, as in the reference); punctuation is
split off words; hyphens between words are their own token ("family-friendly" -> family - friendly);
English clitics are split the way spaCy (and the Penn Treebank) split them ("don't" -> do n't, "it's" ->
it 's, "can't" -> ca n't); dotted acronyms stay whole ("U.S."); "..." is one token. A useful consequence:
text that is already PTB-tokenized (SST, E2E as shipped: "it 's", "family - friendly") and the same text
detokenized give the same tokens, so a decoder that detokenizes is not rewarded or punished for it.
Known differences from spaCy: title abbreviations ("Mr.") lose their period to a separate token, and
URLs/emoticons are split at punctuation. The raw counts can therefore differ slightly from spaCy's on such
text; comparisons inside this project use one tokenizer throughout.

Definitions (as the reference code computes them; all pooled over the whole set of texts):
  rep_n       = 1 - |unique n-grams| / |n-grams|       (counts summed over texts, uniques over the union)
  diversity   = prod_{n=2..4} (1 - rep_n)
  memorization = (# generated 4-grams, with multiplicity, that occur anywhere in the training texts)
                 / (# generated 4-grams)
  unique_tokens = number of distinct `word_tokenize` tokens in the generated set (case-sensitive).
  unique_words  = the reference's number (HF `evaluate`'s word_count = scikit-learn CountVectorizer
                  defaults: lowercased, tokens are runs of >= 2 word characters). Reported beside
                  `unique_tokens` only so tables can be compared with the paper's "unique tokens" column.
  distinct_n  = mean over texts of |unique n-grams in the text| / |n-grams in the text| (DiffuSeq's dist-1);
  distinct_n_pooled = |unique n-grams| / |n-grams| over the whole set (DiffuSeq's div-4 for n = 4).

A metric that is undefined because no text has n tokens (e.g. every sample is empty) is returned as NaN,
not raised: a degenerate model is a result to report, not a crash at the end of a sampling job.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

_TOKEN_RE = re.compile(
    r"""
    (?:[A-Za-z]\.){2,}               # dotted acronyms stay whole: U.S., e.g.
    | \w+?(?=n[’']t\b)               # the stem before n't: do|n't, ca|n't, wo|n't
    | n[’']t\b                       # the negation clitic itself
    | [’'](?:s|re|ve|ll|d|m)\b       # 's 're 've 'll 'd 'm split off, as spaCy and the PTB do
    | \d+(?:[.,:]\d+)+               # numbers with separators: 3.5, 1,000, 10:30
    | \w+                            # any other run of word characters
    | \.{2,}                         # an ellipsis is one token
    | [^\w\s]                        # every other symbol on its own (punctuation, hyphen, quote)
    """,
    re.VERBOSE | re.IGNORECASE,
)
# scikit-learn's CountVectorizer default token_pattern, applied to lowercased text.
_COUNT_VECTORIZER_RE = re.compile(r"(?u)\b\w\w+\b")


def word_tokenize(text: str) -> list[str]:
  """Splits `text` into word and punctuation tokens (case preserved); see the module docstring for the rules."""
  return _TOKEN_RE.findall(text)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
  """All contiguous n-grams of `tokens`, in order: len(tokens) - n + 1 of them (none if shorter than n)."""
  if n < 1:
    raise ValueError(f"n-gram order must be >= 1, got {n}")
  return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _check_texts(texts: Sequence[str], name: str) -> None:
  if isinstance(texts, str):
    raise ValueError(f"{name} must be a list of strings, got a single string; wrap it in a list")
  if len(texts) == 0:
    raise ValueError(f"{name} is empty; pass at least one text")


def repetition_rate(token_lists: Iterable[Sequence[str]], n: int) -> float:
  """rep_n = 1 - |unique n-grams| / |n-grams|, pooled over all token lists; NaN if there is no n-gram."""
  unique: set[tuple[str, ...]] = set()
  total = 0
  for tokens in token_lists:
    grams = ngrams(tokens, n)
    unique.update(grams)
    total += len(grams)
  return math.nan if total == 0 else 1.0 - len(unique) / total


def diversity(texts: Sequence[str], orders: Sequence[int] = (2, 3, 4)) -> dict[str, float]:
  """Repetition rates and diversity = prod_n (1 - rep_n) of a set of texts.

  Args:
    texts: the generated texts.
    orders: n-gram orders in the product; the paper uses 2, 3, 4.

  Returns:
    {"rep_2": ..., "rep_3": ..., "rep_4": ..., "diversity": ...}, each in [0, 1] (NaN where undefined).
  """
  _check_texts(texts, "texts")
  token_lists = [word_tokenize(t) for t in texts]
  out: dict[str, float] = {}
  value = 1.0
  for n in orders:
    rep = repetition_rate(token_lists, n)
    out[f"rep_{n}"] = rep
    value *= 1.0 - rep
  out["diversity"] = value
  return out


def training_ngrams(train_texts: Iterable[str], n: int = 4) -> frozenset[tuple[str, ...]]:
  """The set of all n-grams in the training texts; build it once and reuse it across evaluations."""
  grams: set[tuple[str, ...]] = set()
  for text in train_texts:
    grams.update(ngrams(word_tokenize(text), n))
  return frozenset(grams)


def memorization(texts: Sequence[str], train_texts: Iterable[str] | frozenset[tuple[str, ...]],
                 n: int = 4) -> float:
  """Fraction of the generated n-grams (counted with multiplicity) that occur anywhere in the training texts.

  Args:
    texts: the generated texts.
    train_texts: the training texts, or a set from `training_ngrams(train_texts, n)` to skip re-tokenizing.
    n: the n-gram order; 4 in the paper.

  Returns:
    A fraction in [0, 1]; NaN if no generated text has n tokens.
  """
  _check_texts(texts, "texts")
  train_grams = train_texts if isinstance(train_texts, frozenset) else training_ngrams(train_texts, n)
  total = 0
  seen = 0
  for text in texts:
    for gram in ngrams(word_tokenize(text), n):
      total += 1
      seen += gram in train_grams
  return math.nan if total == 0 else seen / total


def unique_tokens(texts: Sequence[str]) -> int:
  """Number of distinct `word_tokenize` tokens (case-sensitive, punctuation included) in the set."""
  _check_texts(texts, "texts")
  vocab: set[str] = set()
  for text in texts:
    vocab.update(word_tokenize(text))
  return len(vocab)


def unique_words(texts: Sequence[str]) -> int:
  """The reference's unique-word count: distinct lowercased runs of >= 2 word characters (CountVectorizer)."""
  _check_texts(texts, "texts")
  vocab: set[str] = set()
  for text in texts:
    vocab.update(_COUNT_VECTORIZER_RE.findall(text.lower()))
  return len(vocab)


def distinct_n(texts: Sequence[str], n: int = 1) -> float:
  """Mean over texts of |unique n-grams| / |n-grams| within each text (texts with no n-gram are skipped)."""
  _check_texts(texts, "texts")
  ratios = []
  for text in texts:
    grams = ngrams(word_tokenize(text), n)
    if grams:
      ratios.append(len(set(grams)) / len(grams))
  return math.nan if not ratios else sum(ratios) / len(ratios)


def distinct_n_pooled(texts: Sequence[str], n: int = 4) -> float:
  """|unique n-grams| / |n-grams| over the whole set (= 1 - rep_n); div-4 for n = 4."""
  _check_texts(texts, "texts")
  return 1.0 - repetition_rate((word_tokenize(t) for t in texts), n)
