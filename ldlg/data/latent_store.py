"""Reader for precomputed latents: random access, normalization stats, and deterministic pmap batches.

On-disk layout of one split (written by `ldlg.data.precompute.precompute_latents`):

    <out_dir>/<split>/manifest.json      what produced it, counts, text stats, checksums, length counts
    <out_dir>/<split>/stats.json         normalization stats (train split): mean [d], std (scalar)
    <out_dir>/<split>/shard-00000/       latents.npy [n, max_length, d] float16 | uint16 (bfloat16 bits)
                                         lengths.npy [n] int32, labels.npy [n] int32 (labelled sets),
                                         source_index.npy [n] int64, strings.json, shard.json

Latents are stored padded to max_length with zeros after each example's length. Shards are memory-mapped,
so a store of any size opens instantly; only the rows of a batch are read.

`LatentStore.batches` yields `[num_local_devices, per_device_batch, ...]` arrays for pmap. The global batch
of step k is a function of (seed, k) only: epoch e = k // steps_per_epoch uses the permutation
`default_rng([seed, e]).permutation(N)`, and step k takes its (k % steps_per_epoch)-th slice of G
examples. The last N % G examples of each permutation are dropped (not wrapped), so every step has a full
batch and resuming at `start_step=k` reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import ml_dtypes
import numpy as np

from ldlg.data import batching
from ldlg.data import step_batches

MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"
SHARD_INFO_FILE = "shard.json"
FORMAT_VERSION = 1
LATENT_DTYPES = ("float16", "bfloat16", "float32")


def to_storage(latents: np.ndarray, dtype: str) -> np.ndarray:
  """float32 latents -> the array written to disk (bfloat16 as its raw uint16 bits, portable .npy)."""
  if dtype == "float16":
    with np.errstate(over="ignore"):  # overflow becomes inf, which the precompute job reports
      return latents.astype(np.float16)
  if dtype == "bfloat16":
    with np.errstate(over="ignore"):
      return latents.astype(ml_dtypes.bfloat16).view(np.uint16)
  if dtype == "float32":
    return latents.astype(np.float32)
  raise ValueError(f"latent dtype must be one of {LATENT_DTYPES}, got {dtype!r}")


def from_storage(stored: np.ndarray, dtype: str) -> np.ndarray:
  """Inverse of `to_storage`: the stored array -> float32."""
  if dtype == "bfloat16":
    return np.asarray(stored).view(ml_dtypes.bfloat16).astype(np.float32)
  return np.asarray(stored, dtype=np.float32)


def normalize_latents(latents: np.ndarray, mask: np.ndarray, mean: np.ndarray, std: float) -> np.ndarray:
  """(x - mean) / std at valid positions, 0 at padding. latents [..., L, d], mask [..., L], mean [d]."""
  return np.where(mask[..., None], (latents - mean) / std, 0.0).astype(np.float32)


def denormalize_latents(latents: Any, mean: Any, std: float) -> Any:
  """Inverse of `normalize_latents` at valid positions (works on numpy or jax arrays): x * std + mean."""
  return latents * std + mean


def _read_json(path: Path) -> dict[str, Any]:
  with open(path, "r", encoding="utf-8") as fh:
    return json.load(fh)


def write_json_atomic(path: Path, obj: Any) -> None:
  """Writes JSON to a temp file and renames it, so readers never see a half-written file."""
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(obj, fh, indent=1, ensure_ascii=False)
  os.replace(tmp, path)


class LatentStore:
  """A completed split written by `precompute_latents`.

  Attributes:
    path: the split folder.
    manifest: the parsed manifest.json.
    lengths: [N] int32 latent lengths (number of valid positions).
    labels: [N] int32, or None for unlabelled data.
    mean, std: normalization stats ([d] float32, float), or None when no stats were found.
  """

  def __init__(self, path: str | os.PathLike, *, stats_path: str | os.PathLike | None = None):
    """Opens a split folder.

    Args:
      path: `<out_dir>/<split>`.
      stats_path: a stats.json (or a folder holding one). Default: `<path>/stats.json`, else the train
        split's `<path>/../train/stats.json` (validation latents are normalized with train statistics).
    """
    self.path = Path(path)
    if not (self.path / MANIFEST_FILE).is_file():
      raise FileNotFoundError(f"{self.path} has no {MANIFEST_FILE}; run the precompute job first")
    self.manifest = _read_json(self.path / MANIFEST_FILE)
    if not self.manifest.get("complete"):
      done = len(self.manifest.get("shards", []))
      raise ValueError(f"{self.path} is incomplete ({done}/{self.manifest.get('num_shards')} shards); "
                       f"re-run the precompute job with the same arguments to finish it")
    self.dtype = self.manifest["dtype"]
    self.max_length = int(self.manifest["max_length"])
    self.latent_dim = int(self.manifest["latent_dim"])
    self._latents, lengths, labels, source_index = [], [], [], []
    for entry in self.manifest["shards"]:
      shard_dir = self.path / entry["name"]
      self._latents.append(np.load(shard_dir / "latents.npy", mmap_mode="r"))
      lengths.append(np.load(shard_dir / "lengths.npy"))
      source_index.append(np.load(shard_dir / "source_index.npy"))
      if self.manifest["has_labels"]:
        labels.append(np.load(shard_dir / "labels.npy"))
    self.lengths = np.concatenate(lengths).astype(np.int32)
    self.source_index = np.concatenate(source_index)
    self.labels = np.concatenate(labels).astype(np.int32) if labels else None
    self._offsets = np.cumsum([0] + [len(x) for x in self._latents])
    if self._offsets[-1] != self.manifest["num_examples"]:
      raise ValueError(f"{self.path}: shards hold {self._offsets[-1]} examples, manifest says "
                       f"{self.manifest['num_examples']}")
    self._strings: list[dict[str, list[str]] | None] = [None] * len(self._latents)
    self.stats_path = self._find_stats(stats_path)
    self.mean, self.std = None, None
    if self.stats_path is not None:
      stats = _read_json(self.stats_path)
      self.mean = np.asarray(stats["mean"], dtype=np.float32)
      self.std = float(stats["std"])
      if self.mean.shape != (self.latent_dim,):
        raise ValueError(f"{self.stats_path}: mean has shape {self.mean.shape}, latents have "
                         f"d={self.latent_dim}")
    self._perm_cache: tuple[tuple[int, int], np.ndarray] | None = None
    self._grouped_order: tuple[tuple[int, int, int], step_batches.LengthGroupedOrder] | None = None

  def _find_stats(self, stats_path) -> Path | None:
    if stats_path is not None:
      p = Path(stats_path)
      p = p / STATS_FILE if p.is_dir() else p
      if not p.is_file():
        raise FileNotFoundError(f"stats file {p} not found")
      return p
    for p in (self.path / STATS_FILE, self.path.parent / "train" / STATS_FILE):
      if p.is_file():
        return p
    return None

  # --- metadata -------------------------------------------------------------------------------------

  @property
  def num_examples(self) -> int:
    return int(self._offsets[-1])

  def __len__(self) -> int:
    return self.num_examples

  @property
  def stats(self) -> tuple[np.ndarray, float]:
    """(mean [d] float32, std) used to normalize; raises if this store has none."""
    if self.mean is None:
      raise ValueError(f"no normalization stats for {self.path}: precompute the train split (it writes "
                       f"stats.json) or pass stats_path=<train split folder>")
    return self.mean, self.std

  @property
  def length_counts(self) -> np.ndarray:
    """[max_length + 1] int64: number of examples of each latent length (index = length; [0] is 0)."""
    return np.asarray(self.manifest["length_counts"], dtype=np.int64)

  @property
  def length_probs(self) -> np.ndarray:
    """[max_length + 1] float64 empirical length distribution (sample lengths from it at generation)."""
    counts = self.length_counts
    return counts / counts.sum()

  # --- random access --------------------------------------------------------------------------------

  def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
      raise IndexError(f"indices must be in [0, {self.num_examples}), got {indices.min()}..{indices.max()}")
    shard = np.searchsorted(self._offsets, indices, side="right") - 1
    return shard, indices - self._offsets[shard]

  def strings(self, index: int) -> dict[str, str]:
    """The text (and source / mr when stored) of example `index`."""
    (shard,), (local,) = self._locate(np.asarray([index]))
    if self._strings[shard] is None:
      self._strings[shard] = _read_json(self.path / self.manifest["shards"][shard]["name"] / "strings.json")
    return {k: v[local] for k, v in self._strings[shard].items()}

  def string_column(self, field: str) -> list[str]:
    """Every example's stored string `field` ("text", "source", ...), in store order.

    Raises:
      KeyError: naming the fields this store has, when `field` is not one of them.
    """
    stored = self.manifest.get("string_fields", [])
    if field not in stored:
      raise KeyError(f"{self.path} stores no {field!r} strings (it has {stored}); precompute from a dataset that "
                     f"has the field")
    out: list[str] = []
    for shard, entry in enumerate(self.manifest["shards"]):
      if self._strings[shard] is None:
        self._strings[shard] = _read_json(self.path / entry["name"] / "strings.json")
      out.extend(self._strings[shard][field])
    return out

  def __getitem__(self, index: int) -> dict[str, Any]:
    """Example `index`: raw (unnormalized) latents [length, d] float32, length, label, text."""
    index = int(index)
    if index < 0:
      index += self.num_examples
    (shard,), (local,) = self._locate(np.asarray([index]))
    length = int(self.lengths[index])
    out = {"latents": from_storage(self._latents[shard][local, :length], self.dtype),
           "length": length, **self.strings(index)}
    if self.labels is not None:
      out["label"] = int(self.labels[index])
    return out

  def gather(self, indices: Sequence[int] | np.ndarray, *, pad_to: int | None = None,
             normalize: bool = True) -> dict[str, np.ndarray]:
    """Reads a batch of examples.

    Args:
      indices: [n] example indices (any order, repeats allowed).
      pad_to: sequence length L of the output (default max_length); must be >= the longest example.
      normalize: apply the stored stats ((x - mean) / std at valid positions).

    Returns:
      "latents" [n, L, d] float32 (0 at padding), "mask" [n, L] bool, "length" [n] int32,
      "label" [n] int32 when the store has labels.
    """
    indices = np.asarray(indices, dtype=np.int64)
    length = self.lengths[indices]
    pad_to = self.max_length if pad_to is None else int(pad_to)
    if length.size and length.max() > pad_to:
      raise ValueError(f"pad_to={pad_to} is shorter than the longest example ({length.max()})")
    shard, local = self._locate(indices)
    width = min(pad_to, self.max_length)
    stored = np.zeros((len(indices), width, self.latent_dim), self._latents[0].dtype)
    for s in np.unique(shard):
      rows = np.nonzero(shard == s)[0]
      order = np.argsort(local[rows])  # increasing offsets read the memmap sequentially
      stored[rows[order]] = self._latents[s][local[rows][order], :width]
    latents = np.zeros((len(indices), pad_to, self.latent_dim), np.float32)
    latents[:, :width] = from_storage(stored, self.dtype)
    mask = np.arange(pad_to)[None, :] < length[:, None]
    if normalize:
      mean, std = self.stats
      latents = normalize_latents(latents, mask, mean, std)
    out = {"latents": latents, "mask": mask, "length": length.astype(np.int32)}
    if self.labels is not None:
      out["label"] = self.labels[indices]
    return out

  # --- training batches -----------------------------------------------------------------------------

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Full global batches per epoch (the remainder of each epoch's permutation is dropped)."""
    return self.num_examples // global_batch_size

  def global_batch_indices(self, step: int, global_batch_size: int, seed: int,
                           group_by_length: int = 0) -> np.ndarray:
    """[G] int64 example indices of global batch `step`; depends only on (seed, step).

    group_by_length: 0 = random batches; k >= 1 = batches of similar length from length-sorted groups of k
    batches, in a random order (`step_batches.LengthGroupedOrder`; the same epochs and dropped remainder).
    """
    if seed < 0 or step < 0:
      raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    spe = self.steps_per_epoch(global_batch_size)
    if spe == 0:
      raise ValueError(f"global_batch_size {global_batch_size} is larger than the split "
                       f"({self.num_examples} examples)")
    if group_by_length:
      key = (global_batch_size, seed, group_by_length)
      if self._grouped_order is None or self._grouped_order[0] != key:
        self._grouped_order = (key, step_batches.LengthGroupedOrder(self.lengths, global_batch_size, seed,
                                                                    group_by_length))
      return self._grouped_order[1].batch(step)
    epoch, pos = divmod(step, spe)
    if self._perm_cache is None or self._perm_cache[0] != (seed, epoch):
      self._perm_cache = ((seed, epoch), np.random.default_rng([seed, epoch]).permutation(self.num_examples))
    return self._perm_cache[1][pos * global_batch_size:(pos + 1) * global_batch_size]

  def bucket_length(self, longest: int, bucket_size: int) -> int:
    """Smallest multiple of `bucket_size` >= `longest`, capped at max_length (`batching.pad_width`)."""
    return batching.pad_width(longest, bucket_size, self.max_length)

  def batches(self, global_batch_size: int, *, num_local_devices: int, seed: int, start_step: int = 0,
              length_bucketed: bool = False, bucket_size: int = 8, group_by_length: int = 0,
              process_index: int = 0, process_count: int = 1,
              normalize: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Endless iterator of this process's share of each global batch, shaped for pmap.

    Args:
      global_batch_size: G, examples per step over all processes and devices.
      num_local_devices: D, devices of this process (leading axis of every array).
      seed: data-order seed (>= 0).
      start_step: first step to yield; step k's batch is the same whether or not the run was resumed.
      length_bucketed: pad to the smallest multiple of `bucket_size` covering the longest example of the
        *global* batch (identical on every process, so all hosts trace the same shapes; at most
        max_length / bucket_size distinct shapes) instead of max_length.
      bucket_size: granularity of bucket lengths.
      group_by_length: 0, or batches of similar length (see `global_batch_indices`); with `length_bucketed`
        most batches then pad to their own length, not the longest of a random batch.
      process_index, process_count: this host's slice: process p takes examples
        [p * G/P, (p + 1) * G/P) of each global batch.
      normalize: apply the stored stats.

    Yields:
      b = G / (P * D) examples per device:
      "latents" [D, b, L, d] float32, "mask" [D, b, L] bool, "length" [D, b] int32,
      "label" [D, b] int32 (labelled stores), "example_index" [D, b] int32 = position in the global batch
      (process p, device d gets p*G/P + d*b + arange(b)), "dataset_index" [D, b] int32.

    Raises:
      ValueError: G not divisible by P * D, bad process_index, or G larger than the split.
    """
    G, D, P = int(global_batch_size), int(num_local_devices), int(process_count)
    if G <= 0 or D <= 0 or P <= 0:
      raise ValueError(f"global_batch_size, num_local_devices, process_count must be positive; got "
                       f"{G}, {D}, {P}")
    if G % (P * D):
      raise ValueError(f"global_batch_size {G} is not divisible by process_count {P} x "
                       f"num_local_devices {D} = {P * D}")
    if not 0 <= process_index < P:
      raise ValueError(f"process_index {process_index} not in [0, {P})")
    if normalize:
      _ = self.stats  # fail now, not at the first batch
    per_process = G // P
    b = per_process // D
    first = process_index * per_process
    example_index = (first + np.arange(per_process, dtype=np.int32)).reshape(D, b)
    step = int(start_step)
    while True:
      indices = self.global_batch_indices(step, G, seed, group_by_length)
      pad_to = self.max_length
      if length_bucketed:
        pad_to = self.bucket_length(int(self.lengths[indices].max()), bucket_size)
      mine = indices[first:first + per_process]
      batch = self.gather(mine, pad_to=pad_to, normalize=normalize)
      out = {k: v.reshape((D, b) + v.shape[1:]) for k, v in batch.items()}
      out["example_index"] = example_index
      out["dataset_index"] = mine.astype(np.int32).reshape(D, b)
      yield out
      step += 1
