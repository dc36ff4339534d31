"""Source encodings for sequence-to-sequence LD4LG: the frozen BART encoder's states of each distinct source.

The target side of a (source, target) pair is the usual latent store (`precompute` stage). The source side is
what the denoiser cross-attends to: the same frozen encoder's output for the source text (E2E: the meaning
representation), normalized with the *target* latents' training statistics (same encoder, same feature space,
so one scale for both). E2E's 42,061 training pairs have only 4,862 distinct meaning representations, so each
distinct source is encoded and stored once:

  <workdir>/sources/<split>/            a latent store (`ldlg.data.latent_store`) of the distinct sources, in
                                        order of first appearance ("text" = the source string)
  <workdir>/sources/<split>/rows.json   {"example_rows": [N] source row of each target example,
                                         "targets": the target store's data_sha256}

`SourceLookup` turns a training batch's `dataset_index` into "source" [.., S, d] and "source_mask" [.., S] at a
fixed width S (the longest stored source), so every step has one shape. `encode_sources` computes the same arrays
for new source texts at sampling time, rounded through the storage dtype as the stored ones were, so a source
seen in training gets bit-identical states at sampling.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ldlg.data import latent_store as ls
from ldlg.engine.workdir import Workdir

SOURCES_DIR = "sources"
ROWS_FILE = "rows.json"


def sources_dir(workdir: Workdir, split: str) -> Path:
  return workdir.root / SOURCES_DIR / split


def _target_sources(target_store: ls.LatentStore) -> list[str]:
  """The "source" string of every example of a target latent store, in store order."""
  try:
    return target_store.string_column("source")
  except KeyError:
    raise ValueError(f"the latents at {target_store.path} have no 'source' field: sequence-to-sequence LD4LG "
                     "needs a dataset of (source, target) pairs (E2E, QQP); check config.data.name") from None


def precompute_sources(autoencoder: Any, target_store: ls.LatentStore, workdir: Workdir, split: str, *,
                       dtype: str, shard_size: int, batch_size: int) -> dict:
  """Encodes the distinct sources of a target latent store and maps each target example to its source row.

  Resumable like the latent precompute (shards are kept); `rows.json` is written last and marks it done. Sources
  made for other target latents (rows.json names the targets' data_sha256) are deleted and made again.

  Returns:
    The rows.json content.

  Raises:
    ValueError: the store has no sources, or a source encodes to nothing (empty after cleaning).
  """
  from ldlg.data import precompute as precompute_lib  # pylint: disable=import-outside-toplevel
  per_example = _target_sources(target_store)
  distinct = list(dict.fromkeys(per_example))
  out_root = workdir.root / SOURCES_DIR
  rows_file = out_root / split / ROWS_FILE
  if rows_file.exists() and json.loads(rows_file.read_text())["targets"] != target_store.manifest["data_sha256"]:
    shutil.rmtree(out_root / split)  # Made for other target latents (the data changed): start over.
  precompute_lib.precompute_latents(
      autoencoder, [{"text": s} for s in distinct], out_root, split=split, dtype=dtype, shard_size=shard_size,
      batch_size=batch_size, compute_stats=False)
  store = ls.LatentStore(out_root / split, stats_path=None)
  # source_index: the input record each stored row came from (rows whose text cleaned to nothing are absent).
  row_of_distinct = np.full((len(distinct),), -1, np.int64)
  row_of_distinct[store.source_index] = np.arange(store.num_examples)
  distinct_index = {s: i for i, s in enumerate(distinct)}
  rows = row_of_distinct[[distinct_index[s] for s in per_example]]
  if (rows < 0).any():
    bad = per_example[int(np.argmax(rows < 0))]
    raise ValueError(f"the source {bad!r} of split {split!r} has no text after cleaning; drop such pairs from "
                     "the data")
  result = {"example_rows": rows.astype(int).tolist(), "targets": target_store.manifest["data_sha256"],
            "num_sources": store.num_examples, "max_length": int(store.lengths.max())}
  ls.write_json_atomic(rows_file, result)
  return result


def sources_done(workdir: Workdir, split: str) -> bool:
  """Whether the split's sources are complete and were made for the target latents there are now."""
  rows = sources_dir(workdir, split) / ROWS_FILE
  targets = workdir.latents_dir(split) / "manifest.json"
  if not rows.exists() or not targets.exists():
    return False
  return json.loads(rows.read_text())["targets"] == json.loads(targets.read_text())["data_sha256"]


class SourceLookup:
  """The stored source encodings of a split, normalized and padded to one width.

  Attributes:
    store: the latent store of the distinct sources (normalized with the target train split's stats).
    example_rows: [N] int64, the source row of each target example.
    width: S, the padded source length of every lookup (the longest stored source).
  """

  def __init__(self, workdir: Workdir, split: str, stats_path: Path):
    path = sources_dir(workdir, split)
    if not (path / ROWS_FILE).exists():
      raise FileNotFoundError(f"no source encodings for split {split!r} at {path}: the precompute stage of a "
                              "sequence-to-sequence LD4LG run has not finished. Run --mode=precompute (or "
                              "--mode=pipeline) with the same --workdir first.")
    rows = json.loads((path / ROWS_FILE).read_text())
    self.store = ls.LatentStore(path, stats_path=stats_path)
    self.example_rows = np.asarray(rows["example_rows"], np.int64)
    self.width = int(self.store.lengths.max())

  @property
  def latent_dim(self) -> int:
    return self.store.latent_dim

  @property
  def example_lengths(self) -> np.ndarray:
    """[N] int32: the number of encoder positions of each target example's source (what `source_mask.sum(-1)`
    of `encode_sources` gives the same text)."""
    return self.store.lengths[self.example_rows]

  def lookup(self, dataset_index: np.ndarray) -> dict[str, np.ndarray]:
    """dataset_index [...] target example indices -> "source" [..., S, d] float32, "source_mask" [..., S] bool."""
    dataset_index = np.asarray(dataset_index)
    flat = self.store.gather(self.example_rows[dataset_index.reshape(-1)], pad_to=self.width)
    shape = dataset_index.shape
    return {"source": flat["latents"].reshape(shape + flat["latents"].shape[1:]),
            "source_mask": flat["mask"].reshape(shape + (self.width,))}

  def attach(self, batches: Iterator[dict]) -> Iterator[dict]:
    """Adds each batch's sources (looked up by its "dataset_index")."""
    for batch in batches:
      yield {**batch, **self.lookup(batch["dataset_index"])}


def encode_sources(autoencoder: Any, texts: Sequence[str], *, mean: np.ndarray, std: float, dtype: str,
                   width: int | None = None) -> dict[str, np.ndarray]:
  """New source texts -> "source" [n, S, d] float32 (normalized) and "source_mask" [n, S] bool, as stored.

  Args:
    autoencoder: the frozen encoder (`encode(texts) -> (latents [n, L, d], mask [n, L])`).
    texts: the source strings (non-empty).
    mean, std: the target latents' training statistics (the checkpoint's).
    dtype: the latent storage dtype (config.data.latent_dtype): values are rounded through it, as stored.
    width: S (default: the longest source here); longer sources are refused.
  """
  if not len(texts) or any(not t.strip() for t in texts):
    raise ValueError("every source must be non-empty text")
  latents, mask = autoencoder.encode(list(texts))
  latents = ls.from_storage(ls.to_storage(np.asarray(latents, np.float32), dtype), dtype)
  mask = np.asarray(mask, bool)
  longest = int(mask.sum(axis=1).max())
  width = longest if width is None else int(width)
  if longest > width:
    raise ValueError(f"a source encodes to {longest} positions, more than the width {width}")
  out = np.zeros((len(texts), width, latents.shape[-1]), np.float32)
  out_mask = np.zeros((len(texts), width), bool)
  keep = min(width, latents.shape[1])
  out[:, :keep], out_mask[:, :keep] = latents[:, :keep], mask[:, :keep]
  return {"source": ls.normalize_latents(out, out_mask, mean, std), "source_mask": out_mask}
