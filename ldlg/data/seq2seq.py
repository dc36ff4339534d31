"""(source, target) pairs for sequence-to-sequence data: grouping the references of each source.

Seq2seq datasets (`DatasetSpec.has_source`: E2E's meaning representations, QQP questions) give records
{"source": input, "text": target}. E2E has several human references per meaning representation, and its
evaluation (BLEU and the slot error rate) scores one generation per distinct source against all of that
source's references, so evaluation iterates over `group_references(records)` rather than over records.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ldlg.data.errors import DataError


def group_references(records: Iterable[Mapping[str, Any]], *, source_key: str = "source",
                     target_key: str = "text") -> list[tuple[str, list[str]]]:
  """Groups targets by their source, for multi-reference evaluation.

  Args:
    records: dicts with a source and a target string (e.g. `load_split("e2e", "validation", ...)`).
    source_key / target_key: the fields holding them.

  Returns:
    [(source, [reference, ...])], one entry per distinct source in order of first appearance; each list
    keeps its references in record order (duplicates kept: they are separate human references).

  Raises:
    DataError: a record lacks the source field (the dataset is not a seq2seq dataset).
  """
  groups: dict[str, list[str]] = {}
  for row, record in enumerate(records):
    if source_key not in record or target_key not in record:
      raise DataError(f"record {row} has no {source_key!r} or {target_key!r} field (fields: "
                      f"{sorted(record)}); group_references needs (source, target) pairs, e.g. E2E or QQP")
    groups.setdefault(record[source_key], []).append(record[target_key])
  return list(groups.items())
