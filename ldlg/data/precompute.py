"""Latent precompute job: text records -> clean -> frozen encoder -> sharded latents on disk.

    manifest = precompute_latents(autoencoder, load_split("e2e", "train", data_dir), out_dir, split="train")
    store = LatentStore(f"{out_dir}/train")

`autoencoder` is duck-typed: `encode(texts: list[str]) -> (latents float32 [B, L, d], mask bool [B, L])`
with L <= max_length and each row's mask a prefix of True values, plus attributes `latent_dim`,
`max_length`, `name` and `tokenizer` (a Hugging Face fast tokenizer), and optionally `max_tokens` (the encoder's
token limit when it differs from the latent length: a compressing encoder). See `ldlg.data.latent_store` for the
on-disk layout.

Resumable: each shard is written to a temp folder and renamed into place, with a `shard.json` holding the
checksum of the texts it encodes; the manifest is updated after each shard. A re-run with the same
arguments skips every shard whose folder exists with a matching checksum, so an interrupted job loses at
most the shard in progress. A re-run with different data or encoder settings is refused.

For the train split (`compute_stats`), the per-channel mean [d] and one scalar std of the latents at valid
positions (as the reference code normalizes) are computed in one streaming float64 pass over the stored
(rounded) latents and written to stats.json, together with the length histogram.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from ldlg.data import latent_store as ls
from ldlg.data import text as text_lib
from ldlg.data.errors import DataError

# Manifest keys that must match for a re-run to resume an existing folder.
_RESUME_KEYS = ("format_version", "split", "autoencoder", "tokenizer", "max_length", "latent_dim",
                "dtype", "shard_size", "num_examples", "num_shards", "has_labels", "data_sha256")


def _shard_checksum(records: Sequence[Mapping[str, Any]]) -> str:
  h = hashlib.sha256()
  for r in records:
    h.update(json.dumps([r["text"], r.get("label")], ensure_ascii=False).encode("utf-8"))
    h.update(b"\n")
  return h.hexdigest()


def _string_fields(records: Sequence[Mapping[str, Any]]) -> list[str]:
  """String fields stored beside the latents: "text" plus any str field every record has (source, mr)."""
  keys = [k for k, v in records[0].items() if isinstance(v, str) and k != "text"]
  return ["text"] + [k for k in keys if all(isinstance(r.get(k), str) for r in records)]


def _check_encoder_output(latents: Any, mask: Any, n: int, d: int, max_length: int,
                          where: str) -> tuple[np.ndarray, np.ndarray]:
  """Validates one `encode` result; returns (latents [n, L, d] float32, lengths [n] int32)."""
  latents, mask = np.asarray(latents, dtype=np.float32), np.asarray(mask)
  if latents.ndim != 3 or latents.shape[0] != n or latents.shape[2] != d:
    raise ValueError(f"{where}: encode returned latents of shape {latents.shape}, expected "
                     f"[{n}, L, {d}] (latent_dim={d})")
  L = latents.shape[1]
  if not 1 <= L <= max_length:
    raise ValueError(f"{where}: latent length {L} not in [1, max_length={max_length}]")
  if mask.shape != (n, L):
    raise ValueError(f"{where}: mask shape {mask.shape} does not match latents [{n}, {L}]")
  mask = mask.astype(bool)
  lengths = mask.sum(axis=1)
  if np.any(mask != (np.arange(L)[None, :] < lengths[:, None])):
    raise ValueError(f"{where}: mask rows must be a prefix of True values (right padding)")
  if np.any(lengths == 0):
    raise ValueError(f"{where}: encode returned an empty latent for row {int(np.argmin(lengths))}")
  if not np.all(np.isfinite(latents[mask])):
    raise ValueError(f"{where}: encode returned non-finite latents")
  return latents, lengths.astype(np.int32)


def _encode_shard(autoencoder: Any, texts: list[str], token_lens: np.ndarray, batch_size: int,
                  max_length: int, d: int, where: str, pbar: Any) -> tuple[np.ndarray, np.ndarray]:
  """Encodes one shard; returns (latents [n, max_length, d] float32 zero-padded, lengths [n] int32)."""
  n = len(texts)
  out = np.zeros((n, max_length, d), np.float32)
  lengths = np.zeros((n,), np.int32)
  # Encoding in token-length order keeps each batch's padding short; results go back to input order.
  order = np.argsort(token_lens, kind="stable")
  for start in range(0, n, batch_size):
    rows = order[start:start + batch_size]
    latents, lens = _check_encoder_output(*autoencoder.encode([texts[i] for i in rows]), len(rows), d,
                                          max_length, f"{where}, batch at {start}")
    for j, row in enumerate(rows):
      out[row, :lens[j]] = latents[j, :lens[j]]
    lengths[rows] = lens
    pbar.update(len(rows))
  return out, lengths


def _write_shard(split_dir: Path, name: str, arrays: Mapping[str, np.ndarray],
                 strings: Mapping[str, list[str]], info: Mapping[str, Any]) -> None:
  """Writes a shard into a temp folder, then renames it into place (atomic on POSIX)."""
  tmp = split_dir / f".{name}.tmp-{os.getpid()}"
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir()
  for key, value in arrays.items():
    np.save(tmp / f"{key}.npy", value)
  with open(tmp / "strings.json", "w", encoding="utf-8") as fh:
    json.dump(strings, fh, ensure_ascii=False)
  ls.write_json_atomic(tmp / ls.SHARD_INFO_FILE, dict(info))
  final = split_dir / name
  if final.exists():  # a stale shard whose checksum did not match
    shutil.rmtree(final)
  os.replace(tmp, final)


def _shard_is_done(split_dir: Path, name: str, checksum: str, count: int) -> bool:
  info_path = split_dir / name / ls.SHARD_INFO_FILE
  if not info_path.is_file():
    return False
  with open(info_path, "r", encoding="utf-8") as fh:
    info = json.load(fh)
  return info.get("text_sha256") == checksum and info.get("num_examples") == count


def compute_latent_stats(split_dir: str | os.PathLike, *, chunk_size: int = 256) -> dict[str, Any]:
  """Normalization stats of a stored split, over valid positions, in one streaming float64 pass.

  Per-channel running mean and sum of squared deviations are merged chunk by chunk (Chan et al.), so the
  result equals `x.mean(0)` and `sqrt(mean((x - mean)**2))` of all valid positions x [n_pos, d] (the
  reference code's per-channel mean and single population std), without holding x in memory.

  Returns:
    {"mean": [d] list, "std": float, "num_positions": int, "num_examples": int,
     "length_counts": [max_length + 1] list}.
  """
  split_dir = Path(split_dir)
  with open(split_dir / ls.MANIFEST_FILE, "r", encoding="utf-8") as fh:
    manifest = json.load(fh)
  d, max_length, dtype = manifest["latent_dim"], manifest["max_length"], manifest["dtype"]
  count, mean, m2 = 0, np.zeros(d, np.float64), np.zeros(d, np.float64)
  length_counts = np.zeros(max_length + 1, np.int64)
  for entry in manifest["shards"]:
    latents = np.load(split_dir / entry["name"] / "latents.npy", mmap_mode="r")
    lengths = np.load(split_dir / entry["name"] / "lengths.npy")
    length_counts += np.bincount(lengths, minlength=max_length + 1)
    for start in range(0, len(lengths), chunk_size):
      lens = lengths[start:start + chunk_size]
      x = ls.from_storage(latents[start:start + chunk_size], dtype).astype(np.float64)
      x = x[np.arange(x.shape[1])[None, :] < lens[:, None]]  # [n_pos, d] valid positions
      n_b = x.shape[0]
      if n_b == 0:
        continue
      mean_b = x.mean(axis=0)
      m2_b = ((x - mean_b) ** 2).sum(axis=0)
      delta = mean_b - mean
      total = count + n_b
      mean = mean + delta * (n_b / total)
      m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
      count = total
  if count == 0:
    raise ValueError(f"{split_dir}: no valid latent positions to compute statistics from")
  std = float(np.sqrt(m2.sum() / (count * d)))
  return {"mean": mean.tolist(), "std": std, "num_positions": int(count),
          "num_examples": int(length_counts.sum()), "length_counts": length_counts.tolist()}


def precompute_latents(
    autoencoder: Any,
    records: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    split: str,
    dtype: str = "float16",
    shard_size: int = 2048,
    batch_size: int = 64,
    label_set: Iterable[int] | None = None,
    invalid_utf8: text_lib.InvalidUtf8Policy = "replace",
    compute_stats: bool | None = None,
    show_progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Encodes `records` and writes them as a latent store at `<out_dir>/<split>`.

  Args:
    autoencoder: the frozen encoder (interface in the module docstring).
    records: dicts with "text" and optional "label" / string fields (e.g. `load_split(...)`).
    out_dir: root folder; the split goes to `<out_dir>/<split>`.
    split: split name ("train", "validation", ...).
    dtype: on-disk latent dtype, "float16", "bfloat16" (stored as uint16 bits) or "float32".
    shard_size: examples per shard (the unit of resumption). A shard is held in float32 while encoded:
      2048 x 64 x 768 x 4 B = 400 MB at BART-base size.
    batch_size: texts per `encode` call.
    label_set: allowed labels (e.g. `DATASETS[name].label_set`); a label outside it raises.
    invalid_utf8: "replace" or "drop", see `ldlg.data.text`.
    compute_stats: write stats.json (normalization stats); default: only for split == "train".
    show_progress: tqdm progress bar.
    provenance: where the records came from, written to the manifest as "provenance" (default: the
      `provenance` attribute of `records` when it has one, as `load_split` results do; see
      `ldlg.data.datasets.raw_data_provenance`). Informational: `data_sha256` decides resumption.

  Returns:
    The final manifest (also in `<out_dir>/<split>/manifest.json`).

  Raises:
    DataError: no usable text, or a bad label (a ValueError, like the others).
    ValueError: bad encoder output, latents overflowing `dtype`, or an existing folder made with
      different data or settings.
  """
  if provenance is None:
    provenance = getattr(records, "provenance", None)
  if dtype not in ls.LATENT_DTYPES:
    raise ValueError(f"dtype must be one of {ls.LATENT_DTYPES}, got {dtype!r}")
  if shard_size <= 0 or batch_size <= 0:
    raise ValueError(f"shard_size and batch_size must be positive, got {shard_size}, {batch_size}")
  compute_stats = (split == "train") if compute_stats is None else compute_stats
  max_length, d = int(autoencoder.max_length), int(autoencoder.latent_dim)
  tokenizer = autoencoder.tokenizer

  cleaned, source_index, stats = text_lib.clean_records(records, label_set=label_set,
                                                        invalid_utf8=invalid_utf8)
  if not cleaned:
    raise DataError(f"split {split!r}: no text left after cleaning ({stats.summary()}); check that the "
                    f"split's raw file holds text and that config.data names the right dataset and split")
  texts = [r["text"] for r in cleaned]
  token_lens = text_lib.token_lengths(tokenizer, texts)
  # Texts are cut at the encoder's token limit; a compressing encoder's latent (max_length) is shorter than that.
  text_lib.count_truncated(stats, token_lens, int(getattr(autoencoder, "max_tokens", max_length)))
  logging.info("precompute %s: %s", split, stats.summary())
  has_labels = "label" in cleaned[0]
  string_keys = _string_fields(cleaned)

  bounds = list(range(0, len(cleaned), shard_size)) + [len(cleaned)]
  shards = [(f"shard-{i:05d}", bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
  checksums = [_shard_checksum(cleaned[a:b]) for _, a, b in shards]
  data_sha256 = hashlib.sha256("".join(checksums).encode()).hexdigest()

  split_dir = Path(out_dir) / split
  split_dir.mkdir(parents=True, exist_ok=True)
  for stale in split_dir.glob(".shard-*.tmp-*"):  # left by a killed run
    shutil.rmtree(stale, ignore_errors=True)
  manifest = {
      "format_version": ls.FORMAT_VERSION, "split": split,
      "autoencoder": str(autoencoder.name),
      "tokenizer": {"name": str(getattr(tokenizer, "name_or_path", "")), "vocab_size": len(tokenizer)},
      "max_length": max_length, "latent_dim": d, "dtype": dtype, "shard_size": int(shard_size),
      "num_examples": len(cleaned), "num_shards": len(shards), "has_labels": has_labels,
      "label_set": sorted(int(x) for x in label_set) if label_set is not None else None,
      "string_fields": string_keys, "data_sha256": data_sha256,
      "text_stats": stats.as_dict(), "shards": [], "complete": False,
  }
  if provenance:
    manifest["provenance"] = dict(provenance)
  manifest_path = split_dir / ls.MANIFEST_FILE
  if manifest_path.is_file():
    with open(manifest_path, "r", encoding="utf-8") as fh:
      old = json.load(fh)
    diff = {k: (old.get(k), manifest[k]) for k in _RESUME_KEYS if old.get(k) != manifest[k]}
    if diff:
      raise ValueError(f"{split_dir} was written with different data or settings "
                       f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                       f"use a new out_dir or delete {split_dir}")

  pbar = tqdm(total=len(cleaned), desc=f"encode {split}", unit="sent", disable=not show_progress)
  encoded, encode_time = 0, 0.0
  for (name, a, b), checksum in zip(shards, checksums):
    info = {"name": name, "start": a, "num_examples": b - a, "text_sha256": checksum}
    if _shard_is_done(split_dir, name, checksum, b - a):
      pbar.update(b - a)
    else:
      t0 = time.perf_counter()
      latents, lengths = _encode_shard(autoencoder, texts[a:b], token_lens[a:b], batch_size,
                                       max_length, d, f"{split}/{name}", pbar)
      encode_time += time.perf_counter() - t0
      encoded += b - a
      stored = ls.to_storage(latents, dtype)
      del latents  # keep at most one float32 copy of the shard alive
      if not np.all(np.isfinite(stored.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else stored)):
        raise ValueError(f"{split}/{name}: latents overflow {dtype} (|x| > "
                         f"{float(np.finfo(np.float16).max) if dtype == 'float16' else 3.4e38:.4g}); "
                         f"use dtype='bfloat16' or 'float32'")
      arrays = {"latents": stored, "lengths": lengths, "source_index": source_index[a:b]}
      if has_labels:
        arrays["labels"] = np.asarray([r["label"] for r in cleaned[a:b]], np.int32)
      strings = {k: [r[k] for r in cleaned[a:b]] for k in string_keys}
      _write_shard(split_dir, name, arrays, strings, info)
    manifest["shards"].append(info)
    ls.write_json_atomic(manifest_path, manifest)
  pbar.close()
  throughput = encoded / encode_time if encode_time > 0 else None
  logging.info("precompute %s: encoded %d sentences (%d skipped as done) in %.1f s, %s sentences/s",
               split, encoded, len(cleaned) - encoded, encode_time,
               f"{throughput:.1f}" if throughput else "n/a")

  all_lengths = np.concatenate([np.load(split_dir / s["name"] / "lengths.npy") for s in manifest["shards"]])
  manifest["length_counts"] = np.bincount(all_lengths, minlength=max_length + 1).tolist()
  manifest["throughput_sentences_per_s"] = throughput
  if compute_stats:
    latent_stats = compute_latent_stats(split_dir)
    ls.write_json_atomic(split_dir / ls.STATS_FILE, {"split": split, **latent_stats})
    manifest["stats_file"] = ls.STATS_FILE
    logging.info("precompute %s: stats over %d positions: std %.4f, |mean| %.4f", split,
                 latent_stats["num_positions"], latent_stats["std"],
                 float(np.linalg.norm(latent_stats["mean"])))
  manifest["complete"] = True
  ls.write_json_atomic(manifest_path, manifest)
  return manifest
