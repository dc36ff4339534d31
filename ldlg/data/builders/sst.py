"""Stanford Sentiment Treebank, sentence level (= HF `sst` default config, what the paper used).

Read from the `sentence_float/SSTB_{train,dev,test}.csv` files (columns
`,sentence_index,sentence,splitset_label,id,values`). As in the paper's loader:
text = `clean_up_tokenization(sentence.strip())`, binary label = 1 if the float sentiment >= 0.5 else 0.
The float is kept as "score". PTB escapes in the text (`\\/`) are kept, as in HF `sst`.

Splits: train (8,544), validation (1,101), test (2,210, only when SSTB_test.csv is present; withheld in this
project). Row order = file order. No download path: the official release needs a phrase-dictionary join
(dictionary.txt) to get sentence labels; supply the csv files by hand.
"""

from __future__ import annotations

import csv
from typing import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from ldlg.data.builders._common import DataFile, LdlgBuilder, ResolvedFile
from ldlg.data.errors import DataError
from ldlg.data.text import clean_up_tokenization

CLASS_NAMES = ("negative", "positive")

_CITATION = """\
@inproceedings{socher2013recursive,
  title={Recursive Deep Models for Semantic Compositionality Over a Sentiment Treebank},
  author={Socher, Richard and Perelygin, Alex and Wu, Jean and Chuang, Jason and Manning, Christopher D.
          and Ng, Andrew and Potts, Christopher},
  booktitle={EMNLP}, year={2013}
}"""


def _file(key: str, stem: str, desc: str, required: bool = True) -> DataFile:
  return DataFile(key, (f"sentence_float/{stem}", stem), desc, required=required)


class LdlgSst(LdlgBuilder):
  """Sentence-level SST with the paper's binarization (float >= 0.5 -> positive)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Sentence-level SST from SSTB csv; label = score >= 0.5; score kept."}
  RAW_DIR_NAME = "sst"
  DESCRIPTION = "Stanford Sentiment Treebank, sentence level, binary label (score >= 0.5)."
  HOMEPAGE = "https://nlp.stanford.edu/sentiment/"
  CITATION = _CITATION
  FILES = (
      _file("train", "SSTB_train.csv", "train sentences with float labels, 8,544 rows"),
      _file("validation", "SSTB_dev.csv", "dev sentences with float labels, 1,101 rows"),
      _file("test", "SSTB_test.csv", "test sentences, 2,210 rows (withheld in this project)", False),
  )

  def _features(self):
    return tfds.features.FeaturesDict({
        "text": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        "score": tfds.features.Scalar(dtype=np.float32),
    })

  def _make_splits(self, files: Mapping[str, ResolvedFile]):
    return {key: self._generate_examples(f) for key, f in files.items()}

  def _generate_examples(self, file: ResolvedFile) -> Iterator[tuple[int, dict]]:
    with self.open_text(file.path) as fh:
      reader = csv.DictReader(fh)
      if reader.fieldnames is None:
        return  # an empty file: the base class reports it, naming the file
      if not {"sentence", "values"} <= set(reader.fieldnames):
        raise DataError(f"{file.path}:1: expected a header with columns 'sentence' and 'values', got "
                        f"{reader.fieldnames}. Restore the SSTB csv header "
                        f"(',sentence_index,sentence,splitset_label,id,values').")
      for i, row in enumerate(reader):
        where = f"{file.path}:{reader.line_num}: row {i + 1}"
        try:
          score = float(row["values"])
        except (TypeError, ValueError):
          raise DataError(f"{where}: the sentiment label (column 'values') must be a number in [0, 1], "
                          f"got {row['values']!r}. Fix that row or delete it.") from None
        if not 0.0 <= score <= 1.0:
          raise DataError(f"{where}: the sentiment label (column 'values') {score} is outside [0, 1]. "
                          f"Fix that row or delete it.")
        if row["sentence"] is None:
          raise DataError(f"{where}: no 'sentence' column in this row. Fix that row or delete it.")
        yield i, {"text": clean_up_tokenization(row["sentence"].strip()),
                  "label": int(score >= 0.5), "score": score}
