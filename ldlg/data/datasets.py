"""Dataset registry and the single entry point for reading text data: `load_split`.

    records = load_split("e2e", "train", "/work/shared/data", tfds_dir="/tmp/tfds")
    records[0]  # {"text": "The Vaults pub near Café Adriatic has a 5 star rating. ...",
                #  "mr": "name : The Vaults | ...", "source": "name : The Vaults | ..."}

`load_split` builds the dataset with its TFDS builder on first use (raw files from `<data_dir>/<raw dir>`,
the builder's manual_dir; prepared array_record files under `tfds_dir`), then returns a random-access
sequence of plain dicts: "text" (str; the target of seq2seq sets), "label" (int) for classification sets,
"source" (str) for seq2seq sets (QQP, and E2E's meaning representation), "mr" (str) for E2E, "score"
(float) for SST.

Provenance. The prepared copy is stored under `<tfds_dir>/<name>-<fingerprint[:16]>/`, the fingerprint
being a content hash of the raw files it was built from (`raw_data_fingerprint`). Changed raw files are
therefore prepared anew instead of the stale copy being reused; unchanged files reuse the prepared copy.
`load_split(...).provenance` (also `<that folder>/provenance.json`) records the fingerprint, each raw
file's name, size and SHA-256, and the lines that were not valid UTF-8, for stages to write beside their
outputs.

`DATASETS` describes each dataset: classes, the splits the shipped files give, optional splits that need
files the project does not ship, and which split to train / validate / test on.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from ldlg.data import builders
from ldlg.data import fingerprint as fingerprint_lib
from ldlg.data.errors import DataError

SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}


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

  @property
  def has_source(self) -> bool:
    """Whether records are (source, target) pairs: "source" the input, "text" the target."""
    return "source" in self.fields


DATASETS: dict[str, DatasetSpec] = {
    "e2e": DatasetSpec(
        "e2e", builders.LdlgE2e, 0, (), ("train", "validation"),
        {"test": "src1_test.txt (withheld in this project)"}, "train", "validation", "test",
        ("text", "mr", "source"),
        notes="Same files as the paper (src1 format); test withheld here. source = mr, for data-to-text."),
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
        ("text", "source"),
        notes="Seq2seq pairs (source question -> paraphrase); evaluation only as shipped (no train pairs): "
              "put DiffuSeq's train.jsonl in the raw folder to train."),
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


def _hash_cache_path(tfds_dir: Path) -> Path:
  return tfds_dir / "raw_file_hashes.json"


def raw_data_provenance(name: str, data_dir: str | os.PathLike, *,
                        hash_cache: str | os.PathLike | None = None) -> dict[str, Any]:
  """Describes the raw files `name` would be built from, with their content fingerprint.

  Args:
    name: a key of `DATASETS`, optionally "name/config" (the config does not change the raw files).
    data_dir: the raw-data root (the files are in `<data_dir>/<raw dir>`).
    hash_cache: optional JSON file of earlier hashes keyed on (path, size, mtime) to skip re-reading.

  Returns:
    {"dataset", "raw_dir", "files": {key: {"name", "size", "sha256"} for files present, or {"url"} for
    files the builder would download}, "fingerprint": SHA-256 hex of the dataset name and "files"}.
    Missing files do not raise here; `prepare_builder` reports them.
  """
  spec, _ = get_spec(name)
  raw_dir = Path(data_dir) / spec.raw_dir
  found = spec.builder_cls.find_manual_files(raw_dir)
  cache = fingerprint_lib.load_hash_cache(hash_cache)
  # The builder downloads only when a required file is missing; then every missing file with a URL is fetched.
  downloads = any(f.required and f.key not in found for f in spec.builder_cls.FILES)
  files: dict[str, dict[str, Any]] = {}
  for f in spec.builder_cls.FILES:
    if f.key in found:
      path = found[f.key].path
      files[f.key] = {"name": found[f.key].name, "size": path.stat().st_size,
                      "sha256": fingerprint_lib.file_sha256(path, cache)}
    elif downloads and f.url:
      files[f.key] = {"url": f.url}
  if hash_cache is not None and cache:
    fingerprint_lib.save_hash_cache(hash_cache, cache)
  return {"dataset": spec.name, "raw_dir": str(raw_dir), "files": files,
          "fingerprint": fingerprint_lib.combine({"dataset": spec.name, "files": files})}


def raw_data_fingerprint(name: str, data_dir: str | os.PathLike) -> str:
  """SHA-256 hex fingerprint of the raw files of `name` under `data_dir` (see `raw_data_provenance`).

  Equal fingerprints mean byte-identical raw files; stages record it to say which data they were built from.
  """
  return raw_data_provenance(name, data_dir)["fingerprint"]


def prepare_builder(name: str, data_dir: str | os.PathLike, *, tfds_dir: str | os.PathLike | None = None,
                    allow_download: bool = True) -> builders.LdlgBuilder:
  """Returns the builder of `name` ("name" or "name/config") with its data prepared under `tfds_dir`.

  Raw files are read from `<data_dir>/<spec.raw_dir>`. The prepared copy goes to
  `<tfds_dir>/<name>-<fingerprint[:16]>/` (see the module docstring): it is reused only while the raw files
  are byte-identical. `builder.provenance` holds the provenance record (also written to provenance.json).

  Raises:
    ValueError: unknown dataset or config.
    builders.MissingDataError: raw files neither present nor downloadable (message lists them).
    DataError: a raw file is malformed or empty (the message names file, line and fix).
  """
  spec, config = get_spec(name)
  tfds_dir = Path(tfds_dir) if tfds_dir is not None else default_tfds_dir()
  provenance = raw_data_provenance(name, data_dir, hash_cache=_hash_cache_path(tfds_dir))
  root = tfds_dir / f"{spec.name}-{provenance['fingerprint'][:16]}"
  builder = spec.builder_cls(config=config, data_dir=str(root), file_format="array_record",
                             allow_download=allow_download)
  if not builder.is_prepared():
    stale = sorted(str(p) for p in tfds_dir.glob(f"{spec.name}-*") if p.is_dir() and p != root)
    if stale:
      logging.warning("%s: the raw files in %s differ from those of the copies prepared earlier (%s); "
                      "preparing anew under %s. The old copies are no longer used and can be deleted.",
                      name, provenance["raw_dir"], ", ".join(stale), root)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(Path(data_dir) / spec.raw_dir), try_download_gcs=False))
  record_path = root / "provenance.json"
  if record_path.is_file():
    with open(record_path, "r", encoding="utf-8") as fh:
      invalid_utf8 = json.load(fh).get("invalid_utf8", {})
  else:
    invalid_utf8 = {}
  # Invalid UTF-8 is only seen while preparing; a later config of the same files reads the same bytes.
  invalid_utf8.update(builder.decode_report)
  provenance["invalid_utf8"] = invalid_utf8
  if builder.decode_report or not record_path.is_file():
    _write_json_atomic(record_path, provenance)
  builder.provenance = provenance
  return builder


def _write_json_atomic(path: Path, obj: Any) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(obj, fh, indent=1, ensure_ascii=False)
  os.replace(tmp, path)


class Records(collections.abc.Sequence):
  """Random-access view of one prepared split: `records[i]` is a plain dict (str text, int label)."""

  def __init__(self, source: Any, name: str, split: str, provenance: Mapping[str, Any] | None = None):
    self._source = source
    self.name = name
    self.split = split
    self.provenance = dict(provenance or {})  # see `raw_data_provenance`

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
    `Records`: len() and [i] -> {"text": str, ...} (see the module docstring for the fields);
    `.provenance` describes the raw files (see `raw_data_provenance`).

  Raises:
    ValueError: unknown dataset/config.
    DataError: a split this dataset does not have (the message lists the available splits and, for
      optional splits, the file that would provide them), or a malformed or empty raw file.
    builders.MissingDataError: raw files missing (the message says which to put where).
  """
  spec, _ = get_spec(name)
  split = SPLIT_ALIASES.get(split, split)
  base_split = split.split("[")[0]
  builder = prepare_builder(name, data_dir, tfds_dir=tfds_dir, allow_download=allow_download)
  available = list(builder.info.splits.keys())
  if base_split not in available:
    msg = f"dataset {name!r} has no {base_split!r} split here; available: {', '.join(available)}."
    if base_split in spec.optional_splits:
      msg += (f" The {base_split!r} split needs {spec.optional_splits[base_split]} in "
              f"{Path(data_dir) / spec.raw_dir} (it is picked up on the next run).")
    raise DataError(msg)
  return Records(builder.as_data_source(split=split), name, split, builder.provenance)
