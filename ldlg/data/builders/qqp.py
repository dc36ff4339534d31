"""QQP paraphrase pairs in DiffuSeq's split, for sequence-to-sequence generation (a later capability).

Files (manual_dir = <raw data root>/qqp): `valid.jsonl`, `test.jsonl`, optional `train.jsonl`, one
`{"src": question, "trg": paraphrase}` per line. As in the paper's v2 loader, "text" (the target to generate)
= trg and "source" (the conditioning input) = src, unchanged. Splits: validation (2,048), test (2,500), and
train (144,715) only when train.jsonl is supplied: **no train split is shipped**, so as shipped QQP is an
evaluation-only set of (source, target) pairs; put DiffuSeq's train.jsonl beside the others to train on it.
DiffuSeq distributes the data through Google Drive only, so there is no download code path.
"""

from __future__ import annotations

import json
from typing import Iterator, Mapping

import tensorflow_datasets as tfds

from ldlg.data.builders._common import DataFile, LdlgBuilder, ResolvedFile
from ldlg.data.errors import DataError

_CITATION = """\
@inproceedings{gong2023diffuseq,
  title={{DiffuSeq}: Sequence to Sequence Text Generation with Diffusion Models},
  author={Gong, Shansan and Li, Mukai and Feng, Jiangtao and Wu, Zhiyong and Kong, Lingpeng},
  booktitle={ICLR}, year={2023}
}"""


class LdlgQqp(LdlgBuilder):
  """QQP duplicate-question pairs: source question -> paraphrase."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "DiffuSeq QQP split; text = trg, source = src."}
  RAW_DIR_NAME = "qqp"
  DESCRIPTION = "Quora Question Pairs paraphrases (DiffuSeq split; Quora terms, non-commercial)."
  HOMEPAGE = "https://github.com/Shark-NLP/DiffuSeq"
  CITATION = _CITATION
  FILES = (
      DataFile("validation", ("valid.jsonl",), "2,048 {src, trg} JSON lines"),
      DataFile("test", ("test.jsonl",), "2,500 {src, trg} JSON lines"),
      DataFile("train", ("train.jsonl",), "144,715 {src, trg} JSON lines (not shipped; adds 'train')",
               required=False),
  )

  def _features(self):
    return tfds.features.FeaturesDict({"text": tfds.features.Text(), "source": tfds.features.Text()})

  def _make_splits(self, files: Mapping[str, ResolvedFile]):
    return {key: self._generate_examples(f) for key, f in files.items()}

  def _generate_examples(self, file: ResolvedFile) -> Iterator[tuple[int, dict[str, str]]]:
    with self.open_text(file.path) as fh:
      index = 0
      for line_no, line in enumerate(fh, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
          example = {"text": row["trg"], "source": row["src"]}
          if not (isinstance(example["text"], str) and isinstance(example["source"], str)):
            raise TypeError("'src' and 'trg' must be strings")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise DataError(f"{file.path}:{line_no}: expected a JSON object with string fields 'src' and "
                          f"'trg' ({type(e).__name__}: {e}), got {line!r:.120}. Fix or delete that line."
                          ) from e
        yield index, example
        index += 1
