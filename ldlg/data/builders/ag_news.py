"""AG News topic classification (4 classes), descriptions only, as in the paper.

Text = `clean_up_tokenization(description.strip())`, label = class - 1 (0 World, 1 Sports, 2 Business,
3 Sci/Tech). Parsing uses a CSV reader with `quotechar='"'` (quoted rows have inner quotes doubled).

Two configs:
- `paper` (default): the text exactly as the paper's loader produces it, with the corpus' escapes left in.
- `clean`: also undoes the corpus' escapes. In these files a line break inside a description was written as
  a backslash (the readme says `\\n`, but the files hold `\\` followed by the next word: `second\\team`,
  `gave\\no indication`), so a literal `\\n` cannot be told from a backslash before a word starting with
  "n". `clean` therefore turns every run of backslashes into one space (after `\\$` -> `$`), restores the
  numeric HTML entities whose `&` became a space (` #39;` -> `'`, ` #36;` -> `$`), unescapes named entities
  (`&lt;`, `&amp;`) and collapses whitespace.

Splits: test = official `test.csv` (7,600). Train and validation come from the train rows: the paper holds
out 1,000 rows with HF `train_test_split(test_size=1000, seed=42)`, i.e. the permutation
`numpy.random.default_rng(42).permutation(n)`, first 1,000 -> validation, the rest -> train. With the
official `train.csv` (120,000 rows; downloaded when no train file is in manual_dir) that is the paper's
split (119,000 / 1,000). **This project ships only `partial_train_alps/dev.tsv`** (10,001 real train
descriptions with class names), which gives train 9,001 / validation 1,000: a development stand-in, not the
paper's train set.
"""

from __future__ import annotations

import csv
import html
import re
from typing import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from ldlg.data.builders._common import DataFile, LdlgBuilder, ResolvedFile, open_text
from ldlg.data.errors import DataError
from ldlg.data.text import clean_up_tokenization

CLASS_NAMES = ("World", "Sports", "Business", "Sci/Tech")
SPLIT_SEED = 42
NUM_VALID = 1000
_URL = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/{}.csv"

_CITATION = """\
@inproceedings{zhang2015character,
  title={Character-level Convolutional Networks for Text Classification},
  author={Zhang, Xiang and Zhao, Junbo and LeCun, Yann},
  booktitle={NeurIPS}, year={2015}
}"""

_ENTITY = re.compile(r" ?#(\d{1,6});")


def unescape_ag_news(text: str) -> str:
  """Undoes the AG News escapes (see the module docstring); returns single-spaced, stripped text."""
  text = _ENTITY.sub(lambda m: chr(int(m.group(1))), text)
  text = html.unescape(text)
  text = text.replace("\\$", "$")
  text = re.sub(r"\\+", " ", text)
  return re.sub(r"\s+", " ", text).strip()


def _read_official(path, decode_report: dict | None = None) -> Iterator[tuple[int, str, int]]:
  """Official CSV rows `class(1-4),title,description` -> (row, description, label 0..3)."""
  with open_text(path, decode_report) as fh:
    reader = csv.reader(fh, quotechar='"')
    for i, row in enumerate(reader):
      if len(row) != 3 or row[0].strip() not in ("1", "2", "3", "4"):
        raise DataError(f"{path}:{reader.line_num}: row {i + 1}: expected 'class(1-4),title,description' "
                        f"with a class from 1 to 4, got {row!r:.120}. Fix that row or delete it.")
      yield i, row[2], int(row[0]) - 1


def _read_partial(path, decode_report: dict | None = None) -> Iterator[tuple[int, str, int]]:
  """alps TSV rows `description<TAB>class_name` -> (row, description, label 0..3)."""
  with open_text(path, decode_report) as fh:
    reader = csv.reader(fh, delimiter="\t", quotechar='"')
    for i, row in enumerate(reader):
      if len(row) != 2 or row[1] not in CLASS_NAMES:
        raise DataError(f"{path}:{reader.line_num}: row {i + 1}: expected 'description<TAB>class name' "
                        f"with a class in {CLASS_NAMES}, got {row!r:.120}. Fix that row or delete it.")
      yield i, row[0], CLASS_NAMES.index(row[1])


class LdlgAgNews(LdlgBuilder):
  """AG News descriptions with a 4-way topic label; configs `paper` (default) and `clean`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Descriptions; seed-42 1,000-row validation carved out of train; "
                            "configs paper/clean."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="paper", description="text as the paper's loader gives it"),
      tfds.core.BuilderConfig(name="clean", description="paper text with the corpus escapes undone"),
  ]
  RAW_DIR_NAME = "ag_news"
  DESCRIPTION = "AG News topic classification (4 classes), description text (research/non-commercial)."
  HOMEPAGE = "http://groups.di.unipi.it/~gulli/AG_corpus_of_news_articles.html"
  CITATION = _CITATION
  FILES = (
      DataFile("train", ("train.csv", "partial_train_alps/dev.tsv"),
               "official train.csv (120,000 rows, the paper's), or the 10,001-row alps subset",
               url=_URL.format("train")),
      DataFile("test", ("test.csv",), "official test.csv, 7,600 rows", url=_URL.format("test")),
  )

  def _features(self):
    return tfds.features.FeaturesDict({
        "text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=list(CLASS_NAMES))})

  def _make_splits(self, files: Mapping[str, ResolvedFile]):
    train_file = files["train"]
    reader = _read_official if train_file.name == "train.csv" else _read_partial
    train_rows = list(reader(train_file.path, self.decode_report))
    if len(train_rows) <= NUM_VALID:
      raise DataError(f"{train_file.path}: {len(train_rows)} rows, need more than {NUM_VALID} (the "
                      f"validation split is {NUM_VALID} rows carved out of train). Restore the train file.")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(train_rows))
    return {
        "train": self._generate_examples([train_rows[i] for i in perm[NUM_VALID:]]),
        "validation": self._generate_examples([train_rows[i] for i in perm[:NUM_VALID]]),
        "test": self._generate_examples(list(_read_official(files["test"].path, self.decode_report))),
    }

  def _generate_examples(self, rows: list[tuple[int, str, int]]) -> Iterator[tuple[int, dict]]:
    clean = self.builder_config.name == "clean"
    for i, (_, description, label) in enumerate(rows):
      text = unescape_ag_news(description) if clean else description
      yield i, {"text": clean_up_tokenization(text.strip()), "label": label}
