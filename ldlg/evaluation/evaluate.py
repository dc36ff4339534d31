"""Library entry of the evaluation job: every unconditional / class-conditional metric of a set of samples.

`evaluate_texts` returns the dict written to `metrics.json` (see its docstring for the keys);
`save_metrics` writes it as strict JSON (NaN -> null). The paper's protocol: 1000 samples per draw,
MAUVE mean ± std over 5 draws against human reference text, perplexity under gpt2-large, diversity,
memorization against the training set, unique tokens and, for class-conditional models, the accuracy of a
classifier trained on real data. Offline the MAUVE/classifier features are MiniLM's and the perplexity judge
is whatever `CausalLM` is passed (the project's AR baseline); every result names its model.

MiniLM features barely see word order (word-shuffled human text still scores MAUVE 0.6-0.9 on them),
so always print control rows beside a model's row: `evaluate_texts` on held-out human text and on
`shuffle_words(human text)`, with the same reference and featurizer.

  from ldlg.evaluation import evaluate
  from ldlg.evaluation import featurizers
  feats = featurizers.get_featurizer("auto")   # gpt2-large if available, else all-MiniLM-L6-v2
  metrics = evaluate.evaluate_texts(samples, reference, train_texts, featurizer=feats)
  evaluate.save_metrics(metrics, workdir / "metrics.json")
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Iterable, Sequence

from absl import logging
import numpy as np
from scipy import stats

from ldlg.evaluation import classifier as classifier_lib
from ldlg.evaluation import featurizers as featurizers_lib
from ldlg.evaluation import mauve_score
from ldlg.evaluation import ngram_metrics
from ldlg.evaluation import perplexity as perplexity_lib


def evaluate_texts(samples: Sequence[str], reference: Sequence[str],
                   train_texts: Iterable[str] | frozenset[tuple[str, ...]], *,
                   featurizer: featurizers_lib.Featurizer,
                   ppl_model: perplexity_lib.CausalLM | None = None,
                   sample_labels: Sequence[int] | None = None,
                   train_labels: Sequence[int] | None = None,
                   classifier: classifier_lib.TextClassifier | None = None,
                   classifier_featurizer: featurizers_lib.Featurizer | None = None,
                   num_draws: int = 5, draw_size: int = 1000, seed: int = 0,
                   ppl_batch_size: int = 16, ppl_max_length: int | None = 256) -> dict[str, Any]:
  """Computes the paper's metrics of generated texts.

  Args:
    samples: generated texts (e.g. 5 x 1000).
    reference: human texts for MAUVE (e.g. the test split).
    train_texts: the training texts (for memorization; and for the classifier when `train_labels` is
      given), or `ngram_metrics.training_ngrams(train_texts)` to reuse a prebuilt 4-gram set.
    featurizer: MAUVE features (and the classifier's, when it is trained here).
    ppl_model: perplexity judge; None skips perplexity.
    sample_labels: intended class of each sample (class-conditional); enables class accuracy.
    train_labels: labels of `train_texts`, to train the classifier when `classifier` is None.
    classifier: a trained `TextClassifier` to reuse.
    classifier_featurizer: features of the classifier trained here; default `featurizer`. When MAUVE uses
      gpt2-large, pass a `MiniLMFeaturizer` here: mean-pooled sentence embeddings suit a linear probe
      better than GPT-2's last-token state.
    num_draws, draw_size, seed: MAUVE draws (`mauve_score.mauve_over_draws`).
    ppl_batch_size, ppl_max_length: perplexity batching and truncation (tokens, BOS included).

  Returns:
    {"num_samples", "num_empty_samples", "mean_length_tokens",
     "mauve": {"mean", "std", "values", "num_draws", "draw_size", "featurizer"},
     "diversity", "rep_2", "rep_3", "rep_4", "memorization", "unique_tokens", "unique_words", "dist_1",
     "perplexity": {"mean", "median", "model", "num_texts", "num_skipped_empty"} or None,
     "class_accuracy": {"accuracy", "num_texts", "featurizer"} (only with sample_labels)}.
  """
  if isinstance(samples, str) or not samples:
    raise ValueError("samples must be a non-empty list of texts")
  if isinstance(reference, str) or not reference:
    raise ValueError("reference must be a non-empty list of human texts (for MAUVE)")
  samples = list(samples)
  is_gram_set = isinstance(train_texts, frozenset)
  train_list = None if is_gram_set else list(train_texts)
  lengths = [len(ngram_metrics.word_tokenize(t)) for t in samples]
  metrics: dict[str, Any] = {
      "num_samples": len(samples),
      "num_empty_samples": sum(n == 0 for n in lengths),
      "mean_length_tokens": float(np.mean(lengths)),
      "mauve": mauve_score.mauve_over_draws(samples, list(reference), featurizer=featurizer,
                                            num_draws=num_draws, draw_size=draw_size, seed=seed),
  }
  metrics.update(ngram_metrics.diversity(samples))
  metrics["memorization"] = ngram_metrics.memorization(samples, train_texts if is_gram_set else train_list)
  metrics["unique_tokens"] = ngram_metrics.unique_tokens(samples)
  metrics["unique_words"] = ngram_metrics.unique_words(samples)
  metrics["dist_1"] = ngram_metrics.distinct_n(samples, 1)

  metrics["perplexity"] = None
  if ppl_model is not None:
    scored = [t for t in samples if ppl_model.encode(t)]
    ppl = (perplexity_lib.perplexities(scored, ppl_model, batch_size=ppl_batch_size, max_length=ppl_max_length)
           if scored else np.array([math.nan]))
    metrics["perplexity"] = {"mean": float(np.mean(ppl)), "median": float(np.median(ppl)),
                             "model": ppl_model.name, "num_texts": len(scored),
                             "num_skipped_empty": len(samples) - len(scored)}

  if sample_labels is not None:
    if len(sample_labels) != len(samples):
      raise ValueError(f"got {len(sample_labels)} sample_labels for {len(samples)} samples")
    if classifier is None:
      if train_labels is None or train_list is None:
        raise ValueError("class accuracy needs a trained `classifier`, or train_texts (as texts) with "
                         "train_labels to train one")
      classifier = classifier_lib.train_classifier(train_list, train_labels, classifier_featurizer or featurizer)
    metrics["class_accuracy"] = {"accuracy": classifier.accuracy(samples, sample_labels),
                                 "num_texts": len(samples), "featurizer": classifier.featurizer.name}
  return metrics


def shuffle_words(texts: Sequence[str], seed: int = 0) -> list[str]:
  """Each text with its whitespace-separated words in a random order: the control row for MAUVE."""
  rng = np.random.default_rng(seed)
  out = []
  for text in texts:
    words = text.split()
    out.append(" ".join(words[i] for i in rng.permutation(len(words))))
  return out


def _json_safe(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (np.floating, float)):
    return None if not math.isfinite(float(value)) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def save_metrics(metrics: dict[str, Any], path: str | pathlib.Path) -> None:
  """Writes `metrics` as strict JSON (NaN and inf become null), creating the folder if needed."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(_json_safe(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
  values = [float(v) for v in values]
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def compare_draws(a: dict[str, Any], b: dict[str, Any],
                  metrics: Sequence[str] = ("mauve", "perplexity", "diversity", "class_accuracy")) -> dict[str, Any]:
  """Row a against row b, both `evaluate_draws` results: is their difference more than the draws' noise?

  For every metric both rows have: the difference of means a - b, its standard error
  sqrt(s_a^2 / n_a + s_b^2 / n_b) (sample variances), Welch's t and its two-sided p-value (scipy.stats.ttest_ind,
  equal_var=False). The draws are sampling draws of one trained model per row, so p says whether sampling noise
  explains the difference, not whether another training seed would reproduce it.

  Returns:
    {metric: {"difference", "std_error", "t", "p_value", "num_draws": (n_a, n_b)}}.
  """
  out = {}
  for m in metrics:
    if m not in a or m not in b:
      continue
    va, vb = np.asarray(a[m]["values"], np.float64), np.asarray(b[m]["values"], np.float64)
    if len(va) < 2 or len(vb) < 2:
      raise ValueError(f"{m}: comparing rows needs at least 2 draws each, got {len(va)} and {len(vb)}")
    se = float(np.sqrt(va.var(ddof=1) / len(va) + vb.var(ddof=1) / len(vb)))
    if se == 0.0:  # Both rows constant over their draws: the difference is exact, or there is none.
      t, p = (0.0, 1.0) if va.mean() == vb.mean() else (math.copysign(math.inf, va.mean() - vb.mean()), 0.0)
    else:
      t, p = stats.ttest_ind(va, vb, equal_var=False)
    out[m] = {"difference": float(va.mean() - vb.mean()), "std_error": se, "t": float(t), "p_value": float(p),
              "num_draws": (len(va), len(vb))}
  return out


def evaluate_draws(samples: Sequence[str], reference: Sequence[str],
                   train_texts: Sequence[str] | frozenset[tuple[str, ...]], *,
                   featurizer: featurizers_lib.Featurizer, num_draws: int = 5,
                   ppl_model: perplexity_lib.CausalLM | None = None,
                   sample_labels: Sequence[int] | None = None,
                   classifier: classifier_lib.TextClassifier | None = None, seed: int = 0,
                   reference_features: np.ndarray | None = None) -> dict[str, Any]:
  """The paper's protocol: the samples are `num_draws` independent sets (e.g. 5 seeds x 1000); every metric
  is computed on each set and reported as mean ± std over the sets.

  Texts are featurized once (samples and reference); the 4-gram set of the training data is built once.
  `reference_features`: `featurizer(reference)` computed already (callers scoring several sample sets against
  one reference pass it to featurize the reference once); `train_texts` may be a prebuilt 4-gram set.
  Draw i compares its samples with an equally large draw of the reference.

  Returns:
    {"mauve", "diversity", "memorization", "unique_tokens", "perplexity" and "perplexity_median" (per-draw mean
     and median of the per-text perplexities; if ppl_model), "class_accuracy" (if sample_labels): each
     {"mean", "std", "values"}; plus "featurizer",
     "num_draws", "draw_size", "num_samples", "num_empty_samples"}.
  """
  samples = list(samples)
  if len(samples) < num_draws:
    raise ValueError(f"{len(samples)} samples cannot be split into num_draws={num_draws} sets")
  draws = np.array_split(np.arange(len(samples)), num_draws)
  logging.info("Evaluating %d samples as %d draws: featurizing them (%s)%s.", len(samples), num_draws,
               featurizer.name, "" if reference_features is not None else f" and {len(reference)} reference texts")
  sample_feats = featurizer(samples)
  ref_feats = featurizer(list(reference)) if reference_features is None else reference_features
  if len(ref_feats) != len(reference):
    raise ValueError(f"reference_features has {len(ref_feats)} rows for {len(reference)} reference texts")
  grams = train_texts if isinstance(train_texts, frozenset) else ngram_metrics.training_ngrams(train_texts)
  per: dict[str, list[float]] = {k: [] for k in ("mauve", "diversity", "memorization", "unique_tokens")}
  if ppl_model is not None:
    per["perplexity"], per["perplexity_median"] = [], []
  if sample_labels is not None:
    per["class_accuracy"] = []
  for i, idx in enumerate(draws):
    texts = [samples[j] for j in idx]
    per["mauve"].append(mauve_score.mauve_over_draws(
        sample_feats[idx], ref_feats, num_draws=1, draw_size=len(idx), seed=seed + i)["mean"])
    per["diversity"].append(ngram_metrics.diversity(texts)["diversity"])
    per["memorization"].append(ngram_metrics.memorization(texts, grams))
    per["unique_tokens"].append(ngram_metrics.unique_tokens(texts))
    if ppl_model is not None:
      mean, median = _draw_perplexity(texts, ppl_model)
      per["perplexity"].append(mean)
      per["perplexity_median"].append(median)
    if sample_labels is not None:
      per["class_accuracy"].append(classifier.accuracy(texts, [sample_labels[j] for j in idx]))
    logging.info("Draw %d/%d: %s", i + 1, num_draws, ", ".join(f"{k} {v[-1]:.4g}" for k, v in per.items()))
  out: dict[str, Any] = {k: _mean_std(v) for k, v in per.items()}
  out.update(featurizer=featurizer.name, num_draws=num_draws, draw_size=int(len(draws[0])),
             num_samples=len(samples), num_empty_samples=sum(not t.strip() for t in samples))
  if ppl_model is not None:
    out["perplexity"]["model"] = out["perplexity_median"]["model"] = ppl_model.name
  return out


def _draw_perplexity(texts: Sequence[str], ppl_model: perplexity_lib.CausalLM) -> tuple[float, float]:
  """Mean and median per-text perplexity of one draw's non-empty texts (NaN, NaN if none). The mean is the
  papers' number; a few unreadable texts of perplexity 10^4 move it by hundreds, the median not."""
  scored = [t for t in texts if ppl_model.encode(t)]
  if not scored:
    return math.nan, math.nan
  ppl = perplexity_lib.perplexities(scored, ppl_model)
  return float(np.mean(ppl)), float(np.median(ppl))


def perplexity_over_draws(samples: Sequence[str], ppl_model: perplexity_lib.CausalLM,
                          num_draws: int) -> dict[str, Any]:
  """`evaluate_draws`' "perplexity" and "perplexity_median" alone, on the same draws: for rows scored before the
  median was kept."""
  per = [_draw_perplexity([samples[j] for j in idx], ppl_model)
         for idx in np.array_split(np.arange(len(samples)), num_draws)]
  return {name: dict(_mean_std([p[i] for p in per]), model=ppl_model.name)
          for i, name in enumerate(("perplexity", "perplexity_median"))}
