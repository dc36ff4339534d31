"""SST-2, the GLUE binary sentiment version of the Stanford Sentiment Treebank (not used by the paper).

Files (manual_dir = <raw data root>/sst2): `train.tsv.gz` (or `train.tsv`) and `dev.tsv`, GLUE format
`sentence<TAB>label` with a header. text = `clean_up_tokenization(sentence.strip())` (the same processing
as our `sst`), label 0 = negative, 1 = positive. Splits: train (67,349) and validation (872); the GLUE test
split is unlabeled and not built. Without manual files, GLUE's `SST-2.zip` is downloaded and extracted.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Iterator, Mapping

import tensorflow_datasets as tfds

from ldlg.data.builders._common import DataFile, LdlgBuilder, ResolvedFile, _unreachable_reason
from ldlg.data.errors import DataError
from ldlg.data.text import clean_up_tokenization

CLASS_NAMES = ("negative", "positive")
GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"

_CITATION = """\
@inproceedings{socher2013recursive,
  title={Recursive Deep Models for Semantic Compositionality Over a Sentiment Treebank},
  author={Socher, Richard and others}, booktitle={EMNLP}, year={2013}
}
@inproceedings{wang2018glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and
          Bowman, Samuel R.}, booktitle={ICLR}, year={2019}
}"""


class LdlgSst2(LdlgBuilder):
  """GLUE SST-2 (train/validation)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "GLUE SST-2 train/dev; text stripped and clean_up_tokenization applied."}
  RAW_DIR_NAME = "sst2"
  DESCRIPTION = "GLUE SST-2 binary sentiment (phrases and sentences, lowercased, PTB-tokenized)."
  HOMEPAGE = "https://gluebenchmark.com/"
  CITATION = _CITATION
  # Both files come from one archive; `url` marks them downloadable and `_download` fetches the zip.
  FILES = (
      DataFile("train", ("train.tsv.gz", "train.tsv"), "GLUE SST-2 train, 67,349 rows + header",
               url=GLUE_URL),
      DataFile("validation", ("dev.tsv",), "GLUE SST-2 dev, 872 rows + header", url=GLUE_URL),
  )

  def _features(self):
    return tfds.features.FeaturesDict({
        "text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=list(CLASS_NAMES))})

  def _download(self, dl_manager, wanted):
    reason = _unreachable_reason(GLUE_URL)
    if reason:
      raise ConnectionError(reason)
    # TFDS's extractor needs TensorFlow; unzip with the standard library next to the download instead.
    archive = Path(dl_manager.download(GLUE_URL))
    root = archive.with_name(archive.name + ".extracted")
    if not root.is_dir():
      tmp = archive.with_name(archive.name + ".extracting")
      with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
      tmp.rename(root)
    names = {"train": "train.tsv", "validation": "dev.tsv"}
    out = {}
    for f in wanted:
      path = root / "SST-2" / names[f.key]
      if not path.is_file():
        raise FileNotFoundError(f"{GLUE_URL} has no SST-2/{names[f.key]}")
      out[f.key] = ResolvedFile(path, names[f.key], True)
    return out

  def _make_splits(self, files: Mapping[str, ResolvedFile]):
    return {key: self._generate_examples(f) for key, f in files.items()}

  def _generate_examples(self, file: ResolvedFile) -> Iterator[tuple[int, dict]]:
    with self.open_text(file.path) as fh:
      reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
      header = next(reader, None)
      if header is None:
        return  # an empty file: the base class reports it, naming the file
      if [h.strip() for h in header] != ["sentence", "label"]:
        raise DataError(f"{file.path}:1: expected the GLUE header 'sentence<TAB>label', got {header}. "
                        f"Restore the header line.")
      for i, row in enumerate(reader):
        if len(row) != 2 or row[1].strip() not in ("0", "1"):
          raise DataError(f"{file.path}:{reader.line_num}: expected 'sentence<TAB>label' with label 0 or 1, "
                          f"got {row!r:.120}. Fix that row or delete it.")
        yield i, {"text": clean_up_tokenization(row[0].strip()), "label": int(row[1])}
