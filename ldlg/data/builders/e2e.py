"""E2E NLG Challenge (restaurant descriptions), in the `src1_*.txt` format the paper used.

Each line is `<MR> || <tokenized reference> `; the paper's loader keeps the right side, `.strip()`s it and
applies `clean_up_tokenization`. We do the same for "text" and keep the left side (stripped) as "mr"
(`name : The Vaults | Type : pub | ...`). "source" holds the same meaning representation under the name
every sequence-to-sequence dataset uses, so data-to-text models read (source, text) pairs from E2E and QQP
alike. Each MR has several references (e.g. 547 distinct MRs in the 4,672 validation lines);
`ldlg.data.seq2seq.group_references` groups them for multi-reference evaluation.

Files (manual_dir = <raw data root>/e2e): `src1_train.txt.gz` (or `src1_train.txt`), `src1_valid.txt`,
optional `src1_test.txt`. Without them the files are downloaded from the Diffusion-LM repository (the same
blobs, pinned commit).
"""

from __future__ import annotations

from typing import Iterator, Mapping

import tensorflow_datasets as tfds

from ldlg.data.builders._common import DataFile, LdlgBuilder, ResolvedFile
from ldlg.data.errors import DataError
from ldlg.data.text import clean_up_tokenization

_URL = ("https://raw.githubusercontent.com/XiangLi1999/Diffusion-LM/"
        "759889d58ef38e2eed41a8c34db8032e072826f4/datasets/e2e_data/src1_{}.txt")

_CITATION = """\
@inproceedings{novikova2017e2e,
  title={The {E2E} Dataset: New Challenges for End-to-End Generation},
  author={Novikova, Jekaterina and Du{\\v{s}}ek, Ond{\\v{r}}ej and Rieser, Verena},
  booktitle={Proceedings of the 18th Annual SIGdial Meeting on Discourse and Dialogue},
  year={2017}, note={arXiv:1706.09254}
}"""


class LdlgE2e(LdlgBuilder):
  """E2E in the `src1` format of Diffusion-LM / LD4LG: text (cleaned reference), mr and source (the MR)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "src1 format; text = clean_up_tokenization(reference.strip()), mr kept.",
                   "1.1.0": "adds source = mr (the seq2seq input); text and mr unchanged."}
  RAW_DIR_NAME = "e2e"
  DESCRIPTION = "E2E NLG restaurant descriptions (CC BY-SA 4.0), src1 format of Diffusion-LM / LD4LG."
  HOMEPAGE = "https://github.com/tuetschek/e2e-dataset"
  CITATION = _CITATION
  FILES = (
      DataFile("train", ("src1_train.txt.gz", "src1_train.txt"), "train split, 42,061 lines",
               url=_URL.format("train")),
      DataFile("validation", ("src1_valid.txt",), "validation split, 4,672 lines",
               url=_URL.format("valid")),
      DataFile("test", ("src1_test.txt",), "test split, 4,693 lines (withheld in this project)",
               required=False, url=_URL.format("test")),
  )

  def _features(self):
    return tfds.features.FeaturesDict({"text": tfds.features.Text(), "mr": tfds.features.Text(),
                                       "source": tfds.features.Text()})

  def _make_splits(self, files: Mapping[str, ResolvedFile]):
    return {key: self._generate_examples(f) for key, f in files.items()}

  def _generate_examples(self, file: ResolvedFile) -> Iterator[tuple[int, dict[str, str]]]:
    with self.open_text(file.path) as fh:
      index = 0
      for line_no, line in enumerate(fh, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
          continue
        parts = line.split("||")
        if len(parts) != 2 or not parts[1].strip():
          raise DataError(f"{file.path}:{line_no}: expected '<meaning representation>||<reference text>' "
                          f"with non-empty text, got {line!r:.120}. Fix or delete that line (src1 format: "
                          f"one pair per line, one '||').")
        mr = parts[0].strip()
        yield index, {"text": clean_up_tokenization(parts[1].strip()), "mr": mr, "source": mr}
        index += 1
