"""Class accuracy of class-conditional samples: a probe trained on real data judges generated text.

The paper judges class-conditional samples with a classifier trained on the real training set, applied to
samples generated with balanced, known classes. (The official code trains that classifier on the frozen BART
latents of the real sentences — a transformer over latents, its `train_latent_classifier.py` — not on text with
a separate pretrained language model.) Here the classifier is a multinomial logistic regression
(scikit-learn, which `mauve-text` already requires) on frozen sentence features of the decoded text, MiniLM by
default, so it judges the text a reader sees. Its numbers are not comparable with the paper's; report its
accuracy on held-out *real* text beside the samples' accuracy (`TextClassifier.accuracy` on a validation split):
the samples' number means something only relative to that ceiling.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ldlg.evaluation import featurizers as featurizers_lib


@dataclasses.dataclass
class TextClassifier:
  """A fitted feature -> label classifier.

  Attributes:
    featurizer: maps texts to [N, D] features; its `name` is reported.
    model: a fitted scikit-learn LogisticRegression.
  """
  featurizer: featurizers_lib.Featurizer
  model: Any

  def predict(self, texts: Sequence[str]) -> np.ndarray:
    """Predicted labels: int64 [N]."""
    return np.asarray(self.model.predict(self.featurizer(list(texts))), np.int64)

  def accuracy(self, texts: Sequence[str], labels: Sequence[int]) -> float:
    """Fraction of texts whose predicted label equals the given (intended) label."""
    labels = np.asarray(labels, np.int64)
    if len(texts) != len(labels) or len(texts) == 0:
      raise ValueError(f"need one label per text and at least one text; got {len(texts)} texts and "
                       f"{len(labels)} labels")
    return float(np.mean(self.predict(texts) == labels))


def train_classifier(texts: Sequence[str], labels: Sequence[int], featurizer: featurizers_lib.Featurizer,
                     *, l2_inverse_strength: float = 1.0, max_iter: int = 2000, seed: int = 0,
                     features: np.ndarray | None = None) -> TextClassifier:
  """Fits multinomial logistic regression on the features of real labelled texts.

  Args:
    texts: real training texts.
    labels: their integer class ids.
    featurizer: the frozen feature extractor (MiniLM by default in `evaluate_texts`).
    l2_inverse_strength: scikit-learn's C (inverse L2 regularization strength).
    max_iter: L-BFGS iterations.
    seed: scikit-learn's random_state.
    features: precomputed featurizer(texts), to skip encoding twice.
  """
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  labels = np.asarray(labels, np.int64)
  if len(texts) != len(labels):
    raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
  if len(np.unique(labels)) < 2:
    raise ValueError("a classifier needs at least two classes in the training labels")
  x = featurizer(list(texts)) if features is None else np.asarray(features)
  model = LogisticRegression(C=l2_inverse_strength, max_iter=max_iter, random_state=seed)
  model.fit(x, labels)
  return TextClassifier(featurizer=featurizer, model=model)
