"""Text cleaning and validation before encoding, with every outcome counted.

`clean_records` turns raw records (`{"text": str | bytes, "label"?: int, ...}`) into the records the
latent precompute job encodes, and returns a `TextStats` that counts what happened to each row. The
precompute job writes those counts into its manifest and logs them, so nothing is dropped silently.

Decisions (each tested in tests/test_text_pipeline.py):
- Leading/trailing whitespace is stripped. Empty or whitespace-only text is **dropped and counted**
  (`dropped_empty`): an empty sentence has no latent (BART would encode only `<s></s>`).
- Text given as `bytes` that is not valid UTF-8 is, by default (`invalid_utf8="replace"`), **decoded with
  U+FFFD replacement characters and counted** (`invalid_utf8_replaced`): one bad byte should not lose a
  sentence, and the count tells you whether a source file has an encoding problem. With
  `invalid_utf8="drop"` such rows are **dropped and counted** (`dropped_invalid_utf8`) instead.
  (Text read from raw files by the TFDS builders is already `str`: invalid UTF-8 in a file is replaced and
  counted per file when the dataset is prepared, see `ldlg.data.builders._common.open_text`, and recorded
  in the records' provenance.)
- A label outside the dataset's label set **raises** `DataError` (a `ValueError`) naming the row and the
  allowed labels.
  A wrong label set is a configuration bug (e.g. 1-based classes fed to a 0-based model); dropping those
  rows would silently change the class balance.
- Over-long text is not cut here: the encoder truncates it to `max_length` tokens. `count_truncated`
  counts those rows from the tokenizer's lengths (`truncated`) so the manifest reports them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from ldlg.data.errors import DataError

InvalidUtf8Policy = Literal["replace", "drop"]


def clean_up_tokenization(text: str) -> str:
  """Undoes simple English tokenization artifacts (" ." -> ".", " n't" -> "n't", ...).

  Identical to Hugging Face `PreTrainedTokenizerBase.clean_up_tokenization` (the paper's loaders apply it
  to E2E, SST and AG News); re-implemented so the data builders do not import transformers.
  """
  return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
          .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
          .replace(" 've", "'ve").replace(" 're", "'re"))


@dataclasses.dataclass
class TextStats:
  """What happened to each input row. `total == kept + dropped_empty + dropped_invalid_utf8`."""
  total: int = 0
  kept: int = 0
  dropped_empty: int = 0
  dropped_invalid_utf8: int = 0
  invalid_utf8_replaced: int = 0  # kept rows whose bytes were decoded with U+FFFD replacements
  truncated: int = 0  # kept rows longer than max_length tokens (cut by the encoder)
  max_length: int | None = None  # the token limit `truncated` refers to
  max_tokens: int = 0  # longest kept row in tokens (special tokens included), before truncation
  mean_tokens: float = 0.0

  @property
  def dropped(self) -> int:
    return self.dropped_empty + self.dropped_invalid_utf8

  def as_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "dropped": self.dropped}

  def summary(self) -> str:
    """One log line, e.g. 'kept 998/1000 (dropped: 2 empty, 0 invalid utf-8; ...)'."""
    line = (f"kept {self.kept}/{self.total} (dropped: {self.dropped_empty} empty, "
            f"{self.dropped_invalid_utf8} invalid utf-8); {self.invalid_utf8_replaced} decoded with "
            f"replacement characters")
    if self.max_length is not None:
      line += (f"; {self.truncated} longer than {self.max_length} tokens (truncated by the encoder; "
               f"longest {self.max_tokens}, mean {self.mean_tokens:.1f})")
    return line


def _decode(text: Any, row: int, invalid_utf8: InvalidUtf8Policy) -> tuple[str | None, bool]:
  """Returns (text or None when dropped, whether replacement characters were inserted)."""
  if isinstance(text, str):
    return text, False
  if isinstance(text, (bytes, bytearray, np.bytes_)):
    try:
      return bytes(text).decode("utf-8"), False
    except UnicodeDecodeError:
      if invalid_utf8 == "drop":
        return None, False
      return bytes(text).decode("utf-8", errors="replace"), True
  raise TypeError(f"row {row}: 'text' must be str or bytes, got {type(text).__name__}: {text!r:.80}")


def _check_label(label: Any, row: int, label_set: frozenset[int] | None) -> int:
  if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
    raise DataError(f"row {row}: label must be an integer, got {type(label).__name__} {label!r}; map "
                    f"label names to 0-based class indices before encoding")
  label = int(label)
  if label_set is not None and label not in label_set:
    raise DataError(f"row {row}: label {label} is not in the dataset's label set "
                     f"{sorted(label_set)}; fix the data or the label mapping (e.g. 1-based classes "
                     f"must be shifted to 0-based)")
  return label


def clean_records(
    records: Iterable[Mapping[str, Any]],
    *,
    label_set: Iterable[int] | None = None,
    invalid_utf8: InvalidUtf8Policy = "replace",
) -> tuple[list[dict[str, Any]], np.ndarray, TextStats]:
  """Cleans and validates records; see the module docstring for what happens to bad rows.

  Args:
    records: mappings with "text" (str or UTF-8 bytes) and optionally "label" (int). Either every record
      has a label or none has. Other keys ("source", "mr", ...) are passed through, bytes decoded.
    label_set: the allowed labels (e.g. `range(num_classes)`); None accepts any integer.
    invalid_utf8: "replace" (decode with U+FFFD, count) or "drop" (drop, count).

  Returns:
    (kept records with str "text" and int "label" when present, source_index [N_kept] int64 = position of
    each kept record in the input, stats).
  """
  if invalid_utf8 not in ("replace", "drop"):
    raise ValueError(f"invalid_utf8 must be 'replace' or 'drop', got {invalid_utf8!r}")
  allowed = None if label_set is None else frozenset(int(x) for x in label_set)
  stats = TextStats()
  kept: list[dict[str, Any]] = []
  source_index: list[int] = []
  has_labels: bool | None = None
  for row, record in enumerate(records):
    stats.total += 1
    if "text" not in record:
      raise DataError(f"row {row}: record has no 'text' field (keys: {sorted(record)}); rename the "
                      f"field holding the text to 'text'")
    text, replaced = _decode(record["text"], row, invalid_utf8)
    if text is None:
      stats.dropped_invalid_utf8 += 1
      continue
    text = text.strip()
    if not text:
      stats.dropped_empty += 1
      continue
    labelled = record.get("label") is not None
    if has_labels is None:
      has_labels = labelled
    elif labelled != has_labels:
      raise DataError(f"row {row}: {'has' if labelled else 'has no'} label but earlier rows "
                      f"{'do not' if labelled else 'do'}; labels must be given for all rows or none")
    out = {k: (_decode(v, row, "replace")[0] if isinstance(v, (bytes, np.bytes_)) else v)
           for k, v in record.items()}
    out["text"] = text
    if labelled:
      out["label"] = _check_label(record["label"], row, allowed)
    elif "label" in out:
      del out["label"]
    stats.invalid_utf8_replaced += int(replaced)
    stats.kept += 1
    kept.append(out)
    source_index.append(row)
  return kept, np.asarray(source_index, dtype=np.int64), stats


def token_lengths(tokenizer: Any, texts: Sequence[str], *, batch_size: int = 4096) -> np.ndarray:
  """Untruncated token counts, special tokens included (what the encoder would see before cutting).

  Args:
    tokenizer: a Hugging Face (fast) tokenizer.
    texts: N strings.

  Returns:
    [N] int64 lengths.
  """
  lengths = []
  for start in range(0, len(texts), batch_size):
    ids = tokenizer(list(texts[start:start + batch_size]), add_special_tokens=True,
                    truncation=False, verbose=False)["input_ids"]
    lengths.extend(len(x) for x in ids)
  return np.asarray(lengths, dtype=np.int64)


def count_truncated(stats: TextStats, lengths: np.ndarray, max_length: int) -> TextStats:
  """Records in `stats` how many of the kept texts (token `lengths` [N]) exceed `max_length` tokens."""
  stats.max_length = int(max_length)
  stats.truncated = int(np.sum(lengths > max_length))
  stats.max_tokens = int(lengths.max()) if lengths.size else 0
  stats.mean_tokens = float(lengths.mean()) if lengths.size else 0.0
  return stats
