"""Content fingerprints of raw data files, so a prepared dataset is rebuilt exactly when its raw files change.

The TFDS copy of a dataset is prepared once and then reused. Reusing it after the raw files changed would
silently train on stale data, so the prepared copy is stored under a folder named by a fingerprint of the
raw files it was built from (`ldlg.data.datasets.prepare_builder`): changed files give a new folder and a
fresh build; unchanged files give the same folder and no rebuild.

The fingerprint is a SHA-256 over each file's key, name and content hash (content is authoritative: touching
a file without changing it keeps the fingerprint). Hashing is skipped for a file whose (size, mtime_ns)
match an entry of an optional JSON cache of earlier hashes, which keeps repeated runs over large corpora fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike, cache: dict[str, Any] | None = None) -> str:
  """SHA-256 hex digest of a file's bytes (as stored: a .gz file is hashed compressed).

  Args:
    path: the file.
    cache: {absolute path: [size, mtime_ns, sha256]}; an entry whose size and mtime match is used instead
      of reading the file, and a fresh hash is written back into it.
  """
  path = Path(path)
  st = path.stat()
  key = str(path.resolve())
  if cache is not None:
    entry = cache.get(key)
    if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
      return entry[2]
  h = hashlib.sha256()
  with open(path, "rb") as fh:
    for chunk in iter(lambda: fh.read(_CHUNK), b""):
      h.update(chunk)
  digest = h.hexdigest()
  if cache is not None:
    cache[key] = [st.st_size, st.st_mtime_ns, digest]
  return digest


def load_hash_cache(path: str | os.PathLike | None) -> dict[str, Any]:
  """Reads a hash cache written by `save_hash_cache` ({} when absent or unreadable: it is only a cache)."""
  if path is None or not Path(path).is_file():
    return {}
  try:
    with open(path, "r", encoding="utf-8") as fh:
      cache = json.load(fh)
  except (OSError, ValueError):
    return {}
  return cache if isinstance(cache, dict) else {}


def save_hash_cache(path: str | os.PathLike | None, cache: Mapping[str, Any]) -> None:
  """Writes the cache atomically (temp file + rename), so concurrent readers never see half a file."""
  if path is None:
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(dict(cache), fh, indent=0, sort_keys=True)
  os.replace(tmp, path)


def combine(description: Mapping[str, Any]) -> str:
  """SHA-256 hex digest of a JSON-serializable description (keys sorted, so order does not matter)."""
  blob = json.dumps(description, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode("ascii")).hexdigest()
