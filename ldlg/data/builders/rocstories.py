"""ROCStories five-sentence stories, split as in the paper (valid 1,000 / test 4,000 of the 5,000-story pool).

`roc_valid.json` holds one JSON array `["S1 S2 S3 S4 S5"]` per line. The paper strips the leading `["` and
trailing `"]` without decoding, which leaves `\\"` escapes in 11 stories (one of them also holds
`\\ufffd` escapes, replacement characters already present in the source). **Choice:** we JSON-decode each
line instead (`json.loads(line)[0]`), so those 11 stories contain real `"` (and U+FFFD) characters; the
other 4,989 stories are identical to the paper's text.

Split: the paper shuffles the pool with HF `Dataset.shuffle(seed=42)`, i.e. the permutation
`numpy.random.default_rng(42).permutation(5000)`, and takes the first 1,000 as validation and the remaining
4,000 as test. We use that same permutation, so the split (and its order) is the paper's.

**No train split is shipped**: the paper's `roc_train.json` (~93k stories) is not available here. If it is
put in manual_dir it becomes the "train" split (shuffled with the same seed, as the paper's code does).
ROCStories has no public download (distributed on request), so there is no download code path.
"""

from __future__ import annotations

import json
from typing import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from ldlg.data.builders._common import DataFile, LdlgBuilder, ResolvedFile, open_text
from ldlg.data.errors import DataError

SHUFFLE_SEED = 42
NUM_VALID = 1000

_CITATION = """\
@inproceedings{mostafazadeh2016corpus,
  title={A Corpus and Cloze Evaluation for Deeper Understanding of Commonsense Stories},
  author={Mostafazadeh, Nasrin and Chambers, Nathanael and He, Xiaodong and Parikh, Devi and
          Batra, Dhruv and Vanderwende, Lucy and Kohli, Pushmeet and Allen, James},
  booktitle={NAACL-HLT}, year={2016}
}"""


def read_stories(path, decode_report: dict | None = None) -> list[str]:
  """Decodes one JSON array holding one story string per non-blank line (invalid UTF-8: see open_text)."""
  stories = []
  with open_text(path, decode_report) as fh:
    for line_no, line in enumerate(fh, start=1):
      if not line.strip():
        continue
      try:
        value = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: not a JSON line ({e}): {line!r:.120}. Each line must be "
                        f'a JSON array holding one story, ["..."]; fix or delete that line.') from e
      if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], str)):
        raise DataError(f"{path}:{line_no}: expected a JSON array with one string, got {line!r:.120}. "
                        f"Fix or delete that line.")
      stories.append(value[0])
  return stories


class LdlgRocstories(LdlgBuilder):
  """ROCStories valid/test pool of the paper (JSON-decoded); train only if roc_train.json is supplied."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "JSON-decoded stories; paper's seed-42 split into 1,000 valid / 4,000 test."}
  RAW_DIR_NAME = "rocstories"
  DESCRIPTION = ("ROCStories five-sentence commonsense stories (research use by request); the paper's "
                 "5,000-story valid+test pool. No train split unless roc_train.json is supplied.")
  HOMEPAGE = "https://cs.rochester.edu/nlp/rocstories/"
  CITATION = _CITATION
  FILES = (
      DataFile("pool", ("roc_valid.json",), "the paper's 5,000-story valid+test pool (JSON lines)"),
      DataFile("train", ("roc_train.json",), "the paper's ~93k train stories (not shipped; adds 'train')",
               required=False),
  )

  def _features(self):
    return tfds.features.FeaturesDict({"text": tfds.features.Text()})

  def _make_splits(self, files: Mapping[str, ResolvedFile]):
    pool = read_stories(files["pool"].path, self.decode_report)
    if len(pool) <= NUM_VALID:
      raise DataError(f"{files['pool'].path}: {len(pool)} stories, need more than {NUM_VALID} (the first "
                      f"{NUM_VALID} of the seeded shuffle are the validation split, the rest the test "
                      f"split). Restore the paper's 5,000-story roc_valid.json.")
    perm = np.random.default_rng(SHUFFLE_SEED).permutation(len(pool))
    splits = {"validation": self._generate_examples([pool[i] for i in perm[:NUM_VALID]]),
              "test": self._generate_examples([pool[i] for i in perm[NUM_VALID:]])}
    if "train" in files:
      train = read_stories(files["train"].path, self.decode_report)
      perm = np.random.default_rng(SHUFFLE_SEED).permutation(len(train))
      splits["train"] = self._generate_examples([train[i] for i in perm])
    return splits

  def _generate_examples(self, stories: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    for i, story in enumerate(stories):
      yield i, {"text": story}
