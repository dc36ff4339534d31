"""MAUVE between generated and human texts, from the `mauve-text` package on features of a pluggable featurizer.

The paper reports MAUVE as mean ± std over 5 draws of 1000 samples, against human reference text, with
gpt2-large features (texts cut to 256 tokens) and `mauve-text`'s defaults otherwise (k-means buckets =
n / 10, PCA keeping 90% of the variance, scaling factor 5). Here the texts are featurized once and every
draw picks rows of the feature matrices, so 5 draws cost one featurization. Offline, the featurizer is
MiniLM; every result records which one was used (`featurizer`), because values from different
featurizers are not comparable.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ldlg.evaluation import featurizers as featurizers_lib


def mauve_from_features(p_features: np.ndarray, q_features: np.ndarray, *, seed: int = 25,
                        num_buckets: int | str = "auto", kmeans_num_redo: int = 5,
                        kmeans_max_iter: int = 500) -> float:
  """MAUVE(P, Q) in (0, 1] from precomputed features (1 = indistinguishable).

  Args:
    p_features: [N_p, D] features of the generated texts.
    q_features: [N_q, D] features of the reference texts (same featurizer).
    seed: k-means seed (mauve-text's default is 25).
    num_buckets: histogram size; "auto" = max(2, round(min(N_p, N_q) / 10)) as in mauve-text.
    kmeans_num_redo, kmeans_max_iter: k-means restarts and iterations (mauve-text defaults).
  """
  import mauve  # pylint: disable=import-outside-toplevel  (pulls faiss and scikit-learn)
  p_features = np.asarray(p_features, np.float32)
  q_features = np.asarray(q_features, np.float32)
  if p_features.ndim != 2 or q_features.ndim != 2 or p_features.shape[1] != q_features.shape[1]:
    raise ValueError(f"features must be [N, D] arrays of one width; got {p_features.shape} and "
                     f"{q_features.shape}")
  if min(len(p_features), len(q_features)) < 2:
    raise ValueError("MAUVE needs at least 2 texts on each side (the paper uses 1000)")
  out = mauve.compute_mauve(p_features=p_features, q_features=q_features, num_buckets=num_buckets,
                            kmeans_num_redo=kmeans_num_redo, kmeans_max_iter=kmeans_max_iter, seed=seed,
                            verbose=False)
  return float(out.mauve)


def draw_indices(num_items: int, draw_size: int, num_draws: int, seed: int) -> list[np.ndarray]:
  """Row indices of each draw: disjoint slices of one permutation when there are enough items, else
  independent subsets without replacement (or every item, when there are at most `draw_size`).

  Returns:
    num_draws int arrays of length min(draw_size, num_items).
  """
  if num_items < 1 or draw_size < 1 or num_draws < 1:
    raise ValueError(f"need num_items, draw_size, num_draws >= 1; got {num_items}, {draw_size}, {num_draws}")
  rng = np.random.default_rng(seed)
  size = min(draw_size, num_items)
  if num_items >= size * num_draws:
    perm = rng.permutation(num_items)
    return [np.sort(perm[i * size:(i + 1) * size]) for i in range(num_draws)]
  return [np.sort(rng.choice(num_items, size=size, replace=False)) for _ in range(num_draws)]


def mauve_over_draws(samples: Sequence[str] | np.ndarray, reference: Sequence[str] | np.ndarray, *,
                     featurizer: featurizers_lib.Featurizer | None = None, num_draws: int = 5,
                     draw_size: int = 1000, seed: int = 0, **mauve_kwargs: Any) -> dict[str, Any]:
  """MAUVE of generated vs. reference texts, mean ± std over draws.

  Draw i compares `draw_size` samples with `draw_size` references (fewer if fewer are given), chosen
  by `draw_indices` with seeds derived from `seed`, and runs k-means with seed 25 + i.

  Args:
    samples: generated texts, or their [N, D] features.
    reference: human texts, or their [M, D] features.
    featurizer: used when texts are given; its `name` is recorded.
    num_draws, draw_size: the paper uses 5 draws of 1000.
    seed: selects the draws.
    **mauve_kwargs: passed to `mauve_from_features` (num_buckets, kmeans_num_redo, kmeans_max_iter).

  Returns:
    {"mean", "std" (population std over draws), "values", "num_draws", "draw_size", "featurizer"}.
  """
  p = _as_features(samples, featurizer, "samples")
  q = _as_features(reference, featurizer, "reference")
  p_draws = draw_indices(len(p), draw_size, num_draws, seed)
  q_draws = draw_indices(len(q), draw_size, num_draws, seed + 1)
  values = [mauve_from_features(p[pi], q[qi], seed=25 + i, **mauve_kwargs)
            for i, (pi, qi) in enumerate(zip(p_draws, q_draws))]
  return {
      "mean": float(np.mean(values)),
      "std": float(np.std(values)),
      "values": [float(v) for v in values],
      "num_draws": num_draws,
      "draw_size": int(min(len(p_draws[0]), len(q_draws[0]))),
      "featurizer": getattr(featurizer, "name", "precomputed features"),
  }


def _as_features(texts_or_features: Sequence[str] | np.ndarray, featurizer: Any, what: str) -> np.ndarray:
  if isinstance(texts_or_features, np.ndarray):
    return texts_or_features
  if isinstance(texts_or_features, str) or not texts_or_features:
    raise ValueError(f"{what} must be a non-empty list of texts or an [N, D] feature array")
  if featurizer is None:
    raise ValueError(f"{what} are texts, so a featurizer is needed (e.g. featurizers.get_featurizer('auto'))")
  return featurizer(list(texts_or_features))
