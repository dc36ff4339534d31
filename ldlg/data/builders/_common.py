"""Shared base for the project's TFDS builders: find files in `manual_dir`, else download, else explain.

Every builder declares its files as `DataFile`s. `_split_generators` resolves each file from the manual
directory first (candidates tried in order); files still missing are downloaded with
`dl_manager.download` when the builder has a public URL for them and downloads are allowed. When a required
file can be found neither way, `MissingDataError` says exactly which files to put in which folder.

Bad input is reported, never silently mangled: every data problem raises `ldlg.data.DataError` naming the
file, the line or row, and the fix (a split file with no examples, a malformed row). Bytes that are not
valid UTF-8 are decoded with U+FFFD replacement characters (one bad byte should not lose a sentence), and
counted per file in `LdlgBuilder.decode_report` with a warning naming the file and its first bad line.

The builders write `array_record` files and are read with `builder.as_data_source()`, so no TensorFlow is
needed. Examples are written in generation order (`disable_shuffling=True`): the order of the source files
(or of the paper's seeded shuffle) is kept, which makes row-level checks and reproductions possible.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import socket
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, MutableMapping

import tensorflow_datasets as tfds
from absl import logging

from ldlg.data.errors import DataError


class MissingDataError(DataError, FileNotFoundError):
  """Raised when a builder's required files are neither in manual_dir nor downloadable.

  A `DataError` (the message says which files to put where) and, as before, a `FileNotFoundError`.
  """


@dataclasses.dataclass(frozen=True)
class DataFile:
  """One file a builder reads.

  Attributes:
    key: the name the builder uses for it ("train", "validation", ...).
    candidates: paths relative to manual_dir, tried in order (e.g. the gzipped and the plain file).
    description: what it is, for the error message.
    required: whether the dataset can be built without it (optional files only add splits).
    url: public download URL used when the file is not in manual_dir (None: manual only).
  """
  key: str
  candidates: tuple[str, ...]
  description: str
  required: bool = True
  url: str | None = None


@dataclasses.dataclass(frozen=True)
class ResolvedFile:
  path: Path
  name: str  # the candidate that matched, or candidates[0] for a download
  downloaded: bool


def _read_bytes(path: Path) -> bytes:
  if path.suffix == ".gz":
    with gzip.open(path, "rb") as fh:
      return fh.read()
  return path.read_bytes()


def open_text(path: Path | str, decode_report: MutableMapping[str, Any] | None = None) -> io.TextIOBase:
  """Opens a UTF-8 text file, transparently gunzipping `*.gz`; newlines are kept as written.

  Lines that are not valid UTF-8 are decoded with U+FFFD replacement characters, logged with a warning that
  names the file and the first such line, and counted in `decode_report[str(path)]` as
  {"invalid_utf8_lines": n, "first_line": k}. (Decoding line by line is exact: no UTF-8 multi-byte sequence
  contains a newline byte.) The file is read into memory whole; raw split files are at most tens of MB.
  """
  path = Path(path)
  data = _read_bytes(path)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    lines, bad = [], []
    for line_no, line in enumerate(data.splitlines(keepends=True), start=1):
      try:
        lines.append(line.decode("utf-8"))
      except UnicodeDecodeError:
        lines.append(line.decode("utf-8", errors="replace"))
        bad.append(line_no)
    text = "".join(lines)
    logging.warning("%s: %d line(s) are not valid UTF-8 (first: line %d); their bad bytes were replaced "
                    "by U+FFFD. To keep the original characters, re-save the file as UTF-8 (e.g. "
                    "`iconv -f latin1 -t utf-8`).", path, len(bad), bad[0])
    if decode_report is not None:
      decode_report[str(path)] = {"invalid_utf8_lines": len(bad), "first_line": bad[0]}
  return io.StringIO(text, newline="")


def check_nonempty(examples: Iterable[Any], path: Path | str, what: str) -> Iterator[Any]:
  """Passes `examples` through; raises a DataError naming `path` if there were none.

  TFDS would otherwise fail later with a bare AssertionError that names no file.
  """
  count = 0
  for example in examples:
    count += 1
    yield example
  if not count:
    raise DataError(f"{path}: no examples in this {what} file (it is empty or holds only blank lines). "
                    f"Put the data in it, or restore the original file (see SOURCE.md beside it).")


def _unreachable_reason(url: str, timeout_s: float = 5.0) -> str | None:
  """Why `url` cannot be fetched (None if it looks reachable).

  TFDS retries failed HTTP connections 10 times with exponential back-off (minutes when offline), so an
  unreachable host is detected up front with one short TCP connect and reported at once.
  """
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme in ("http", "https"):
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
      socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as e:
      return f"cannot connect to {parsed.hostname}:{port} ({e})"
  return None


class LdlgBuilder(tfds.core.GeneratorBasedBuilder):
  """Base class; subclasses set the class attributes below and implement `_make_splits`.

  Constructor: `Builder(data_dir=<tfds dir>, file_format="array_record", allow_download=True)`; the raw
  files' folder is given as `tfds.download.DownloadConfig(manual_dir=...)` to `download_and_prepare`.
  """
  FILES: tuple[DataFile, ...] = ()
  DESCRIPTION: str = ""
  HOMEPAGE: str = ""
  CITATION: str = ""
  RAW_DIR_NAME: str = ""  # the folder under the raw-data root (e.g. "e2e")

  def __init_subclass__(cls, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    # TFDS only exposes dl_manager.manual_dir when instructions exist; derive them from FILES.
    if cls.FILES and "MANUAL_DOWNLOAD_INSTRUCTIONS" not in cls.__dict__:
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = "Place these files in the manual_dir:\n" + "\n".join(
          f"  {' or '.join(f.candidates)}: {f.description}" for f in cls.FILES)

  def __init__(self, *, allow_download: bool = True, **kwargs: Any):
    self._allow_download = allow_download
    # str(path) -> {"invalid_utf8_lines", "first_line"} for every file read with bad UTF-8 (see open_text).
    self.decode_report: dict[str, dict[str, int]] = {}
    super().__init__(**kwargs)

  def open_text(self, path: Path | str) -> io.TextIOBase:
    """`open_text` that records invalid UTF-8 in `self.decode_report`."""
    return open_text(path, self.decode_report)

  def _features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, features=self._features(),
        homepage=self.HOMEPAGE, citation=self.CITATION, disable_shuffling=True)

  def _make_splits(self, files: Mapping[str, ResolvedFile]) -> dict[str, Iterator[Any]]:
    """Split name -> generator of (key, example), from the resolved files (optional ones may be absent)."""
    raise NotImplementedError

  def _download(self, dl_manager: tfds.download.DownloadManager,
                wanted: list[DataFile]) -> dict[str, ResolvedFile]:
    """Downloads `wanted` (all have a URL); override for archives. Raises OSError-like on failure."""
    for f in wanted:
      reason = _unreachable_reason(f.url)
      if reason:
        raise ConnectionError(reason)
    paths = dl_manager.download({f.key: f.url for f in wanted})
    return {f.key: ResolvedFile(Path(paths[f.key]), f.candidates[0], True) for f in wanted}

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = self._resolve_files(dl_manager)
    splits = self._make_splits(files)
    # A split read from its own file (same key) that yields nothing names that file.
    return {key: (check_nonempty(gen, files[key].path, f"{key!r} split") if key in files else gen)
            for key, gen in splits.items()}

  @classmethod
  def find_manual_files(cls, manual_dir: Path | str | None) -> dict[str, ResolvedFile]:
    """The files of `FILES` present in `manual_dir`: key -> the first candidate that exists."""
    found: dict[str, ResolvedFile] = {}
    if manual_dir is None:
      return found
    manual_dir = Path(manual_dir)
    for f in cls.FILES:
      for cand in f.candidates:
        if (manual_dir / cand).is_file():
          found[f.key] = ResolvedFile(manual_dir / cand, cand, False)
          break
    return found

  def _resolve_files(self, dl_manager: tfds.download.DownloadManager) -> dict[str, ResolvedFile]:
    try:
      manual_dir = Path(dl_manager.manual_dir)
    except AssertionError:  # manual_dir not given, missing or empty
      manual_dir = None
    configured = getattr(dl_manager, "_manual_dir", None)
    found = self.find_manual_files(manual_dir)
    missing_required = [f for f in self.FILES if f.required and f.key not in found]
    if not missing_required:
      return found
    download_error = None
    if self._allow_download and all(f.url for f in missing_required):
      try:
        found.update(self._download(dl_manager, missing_required))
      except Exception as e:  # any download failure becomes the instructions below
        download_error = f"{type(e).__name__}: {e}"
      else:
        # Optional files (extra splits) are fetched too when available; failing to get one is not fatal.
        for f in self.FILES:
          if not f.required and f.key not in found and f.url:
            try:
              found.update(self._download(dl_manager, [f]))
            except Exception as e:  # pylint: disable=broad-except
              logging.warning("%s: optional file %s not downloaded (%s: %s)", self.name,
                              f.candidates[0], type(e).__name__, e)
        return found
    raise MissingDataError(self._missing_message(configured, missing_required, download_error))

  def _missing_message(self, manual_dir: Any, missing: list[DataFile],
                       download_error: str | None) -> str:
    where = manual_dir if manual_dir else f"<raw data root>/{self.RAW_DIR_NAME}"
    lines = [f"{self.name}: required data files not found. Put them in {where} (the manual_dir):"]
    for f in missing:
      alts = " or ".join(f.candidates)
      lines.append(f"  - {alts}: {f.description}")
    optional = [f for f in self.FILES if not f.required]
    if optional:
      lines.append("Optional files (each adds a split):")
      lines += [f"  - {' or '.join(f.candidates)}: {f.description}" for f in optional]
    if download_error is not None:
      lines.append(f"Automatic download failed: {download_error}")
    elif not self._allow_download and any(f.url for f in missing):
      lines.append("Automatic download is disabled (allow_download=False).")
    elif not all(f.url for f in missing):
      lines.append("This dataset has no public download; the files must be obtained by hand.")
    lines.append(f"See the {self.RAW_DIR_NAME}/SOURCE.md beside the raw data and "
                 f"ldlg/data/builders/{self.RAW_DIR_NAME}.py for formats.")
    return "\n".join(lines)
