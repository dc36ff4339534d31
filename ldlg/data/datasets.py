"""Dataset registry and the single entry point for reading text data: `load_split`.

    records = load_split("e2e", "train", "/work/shared/data", tfds_dir="/tmp/tfds")
    records[0]  # {"text": "The Vaults pub near Café Adriatic has a 5 star rating. ...", "mr": "name : ..."}

`load_split` builds the dataset with its TFDS builder on first use (raw files from `<data_dir>/<raw dir>`,
the builder's manual_dir; prepared array_record files under `tfds_dir`), then returns a random-access
sequence of plain dicts: "text" (str), "label" (int) for classification sets, "source" (str) for seq2seq
sets, "mr" (str) for E2E, "score" (float) for SST.

`DATASETS` describes each dataset: classes, the splits the shipped files give, optional splits that need
files the project does not ship, and which split to train / validate / test on.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from ldlg.data import builders

_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Metadata of one dataset.

  Attributes:
    name: registry key (the raw-data folder name too, e.g. "e2e").
    builder_cls: its TFDS builder class.
    num_classes: number of labels; 0 for unconditional / seq2seq data (no "label" field).
    class_names: label names, index = label.
    splits: splits built from the files this project ships.
    optional_splits: split -> the file it needs, for splits the shipped data lacks.
    train_split / valid_split / test_split: what to train, tune and evaluate on (train_split None: the
      shipped files have no training data).
    fields: the keys of each record.
    configs: TFDS builder configs (first = default), selected with "name/config".
    notes: how the shipped data differs from the paper's.
  """
  name: str
  builder_cls: type
  num_classes: int
  class_names: tuple[str, ...]
  splits: tuple[str, ...]
  optional_splits: Mapping[str, str]
  train_split: str | None
  valid_split: str
  test_split: str | None
  fields: tuple[str, ...]
  configs: tuple[str, ...] = ()
  notes: str = ""

  @property
  def raw_dir(self) -> str:
    return self.builder_cls.RAW_DIR_NAME

  @property
  def label_set(self) -> tuple[int, ...] | None:
    return tuple(range(self.num_classes)) if self.num_classes else None


DATASETS: dict[str, DatasetSpec] = {
    "e2e": DatasetSpec(
        "e2e", builders.LdlgE2e, 0, (), ("train", "validation"),
        {"test": "src1_test.txt (withheld in this project)"}, "train", "validation", "test",
        ("text", "mr"), notes="Same files as the paper (src1 format); test withheld here."),
    "rocstories": DatasetSpec(
        "rocstories", builders.LdlgRocstories, 0, (), ("validation", "test"),
        {"train": "roc_train.json (the paper's ~93k train stories; not shipped)"},
        None, "validation", "test", ("text",),
        notes="Only the paper's 5,000-story valid+test pool is shipped (JSON-decoded, paper's seed-42 "
              "split); no train stories."),
    "sst": DatasetSpec(
        "sst", builders.LdlgSst, 2, ("negative", "positive"), ("train", "validation"),
        {"test": "sentence_float/SSTB_test.csv (withheld in this project)"}, "train", "validation",
        "test", ("text", "label", "score"), notes="HF `sst` sentences; label = score >= 0.5 (paper)."),
    "sst2": DatasetSpec(
        "sst2", builders.LdlgSst2, 2, ("negative", "positive"), ("train", "validation"), {},
        "train", "validation", None, ("text", "label"),
        notes="GLUE SST-2 (not used by the paper); the unlabeled GLUE test split is not built."),
    "ag_news": DatasetSpec(
        "ag_news", builders.LdlgAgNews, 4, ("World", "Sports", "Business", "Sci/Tech"),
        ("train", "validation", "test"), {}, "train", "validation", "test", ("text", "label"),
        configs=("paper", "clean"),
        notes="Shipped train = the 10,001-row alps subset of the official train set: train 9,001 / "
              "validation 1,000 (paper: 119,000 / 1,000 from the official train.csv, used when present)."),
    "qqp": DatasetSpec(
        "qqp", builders.LdlgQqp, 0, (), ("validation", "test"),
        {"train": "train.jsonl (DiffuSeq's 144,715 pairs; not shipped)"}, None, "validation", "test",
        ("text", "source"), notes="Seq2seq (later capability); no train pairs shipped."),
}


def get_spec(name: str) -> tuple[DatasetSpec, str | None]:
  """Looks up "name" or "name/config"; returns (spec, config or None for the default)."""
  base, _, config = name.partition("/")
  if base not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
  spec = DATASETS[base]
  if config and config not in spec.configs:
    raise ValueError(f"dataset {base!r} has no config {config!r}; configs: {list(spec.configs) or 'none'}")
  return spec, (config or None)


def default_tfds_dir() -> Path:
  """$LDLG_TFDS_DIR, else ~/tensorflow_datasets (the TFDS default)."""
  return Path(os.environ.get("LDLG_TFDS_DIR", Path.home() / "tensorflow_datasets"))


def prepare_builder(name: str, data_dir: str | os.PathLike, *, tfds_dir: str | os.PathLike | None = None,
                    allow_download: bool = True) -> builders.LdlgBuilder:
  """Returns the builder of `name` ("name" or "name/config") with its data prepared under `tfds_dir`.

  Raw files are read from `<data_dir>/<spec.raw_dir>`; a dataset already prepared under `tfds_dir` is
  reused (delete `builder.data_dir` to rebuild after changing the raw files).

  Raises:
    ValueError: unknown dataset or config.
    builders.MissingDataError: raw files neither present nor downloadable (message lists them).
  """
  spec, config = get_spec(name)
  tfds_dir = Path(tfds_dir) if tfds_dir is not None else default_tfds_dir()
  builder = spec.builder_cls(config=config, data_dir=str(tfds_dir), file_format="array_record",
                             allow_download=allow_download)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(Path(data_dir) / spec.raw_dir), try_download_gcs=False))
  return builder


class Records(collections.abc.Sequence):
  """Random-access view of one prepared split: `records[i]` is a plain dict (str text, int label)."""

  def __init__(self, source: Any, name: str, split: str):
    self._source = source
    self.name = name
    self.split = split

  def __len__(self) -> int:
    return len(self._source)

  @staticmethod
  def _decode(record: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
      if isinstance(value, bytes):
        out[key] = value.decode("utf-8")
      elif isinstance(value, (np.integer, int)):
        out[key] = int(value)
      elif isinstance(value, (np.floating, float)):
        out[key] = float(value)
      else:
        out[key] = value
    return out

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    n = len(self)
    index = int(index)
    if not -n <= index < n:
      raise IndexError(f"index {index} out of range for {self.name}/{self.split} of {n} records")
    return self._decode(self._source[index % n])

  def __iter__(self):
    chunk = 1024
    for start in range(0, len(self), chunk):
      for record in self._source.__getitems__(list(range(start, min(start + chunk, len(self))))):
        yield self._decode(record)

  def __repr__(self) -> str:
    return f"Records({self.name!r}, split={self.split!r}, n={len(self)})"


def load_split(name: str, split: str, data_dir: str | os.PathLike, *,
               tfds_dir: str | os.PathLike | None = None, allow_download: bool = True) -> Records:
  """Reads one split of a dataset as a random-access sequence of dicts.

  Args:
    name: a key of `DATASETS`, optionally with a builder config ("ag_news/clean").
    split: "train", "validation" (aliases "valid", "val", "dev") or "test"; TFDS slicing works
      ("train[:1000]").
    data_dir: the raw-data root holding one folder per dataset (`e2e/`, `sst/`, ...).
    tfds_dir: where the prepared TFDS data goes (default `default_tfds_dir()`).
    allow_download: fetch missing raw files from their public source when one exists.

  Returns:
    `Records`: len() and [i] -> {"text": str, ...} (see the module docstring for the fields).

  Raises:
    ValueError: unknown dataset/config, or a split this dataset does not have (the message lists the
      available splits and, for optional splits, the file that would provide them).
    builders.MissingDataError: raw files missing (the message says which to put where).
  """
  spec, _ = get_spec(name)
  split = _SPLIT_ALIASES.get(split, split)
  base_split = split.split("[")[0]
  builder = prepare_builder(name, data_dir, tfds_dir=tfds_dir, allow_download=allow_download)
  available = list(builder.info.splits.keys())
  if base_split not in available:
    msg = f"dataset {name!r} has no {base_split!r} split here; available: {', '.join(available)}."
    if base_split in spec.optional_splits:
      msg += (f" The {base_split!r} split needs {spec.optional_splits[base_split]} in "
              f"{Path(data_dir) / spec.raw_dir}; if you added it after the dataset was prepared, delete "
              f"{builder.data_dir} to rebuild.")
    raise ValueError(msg)
  return Records(builder.as_data_source(split=split), name, split)
