"""Bad raw data names the file, the line or row and the fix; prepared data follows the raw files' content.

Each test writes a few-line raw folder under tmp_path and builds it with the real TFDS builder (no download).
"""

import json
import logging
import os

import pytest

from ldlg.data import DataError
from ldlg.data import builders
from ldlg.data import datasets

SST_HEADER = ",sentence_index,sentence,splitset_label,id,values\n"


def write(folder, files):
  folder.mkdir(parents=True, exist_ok=True)
  for name, content in files.items():
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def e2e_raw(tmp_path, train=b"name : A||A is nice . \nname : B||B is bad . \n", valid=b"name : C||C ok . \n"):
  write(tmp_path / "raw" / "e2e", {"src1_train.txt": train, "src1_valid.txt": valid})
  return tmp_path / "raw"


def load(name, split, raw, tmp_path):
  return datasets.load_split(name, split, raw, tfds_dir=tmp_path / "tfds", allow_download=False)


def test_invalid_utf8_is_replaced_counted_and_named(tmp_path, caplog):
  raw = e2e_raw(tmp_path, train=b"name : A||A is nice . \nname : B||caf\xe9 au lait . \nname : C||\xff ok \n")
  with caplog.at_level(logging.WARNING):
    train = load("e2e", "train", raw, tmp_path)
  assert [r["text"] for r in train] == ["A is nice.", "caf\ufffd au lait.", "\ufffd ok"]
  path = str(raw / "e2e" / "src1_train.txt")
  assert train.provenance["invalid_utf8"] == {path: {"invalid_utf8_lines": 2, "first_line": 2}}
  warning = next(r.getMessage() for r in caplog.records if "UTF-8" in r.getMessage())
  assert path in warning and "first: line 2" in warning and "iconv" in warning
  # Read back from the prepared copy (no re-decoding), the count is still reported.
  assert load("e2e", "train", raw, tmp_path).provenance["invalid_utf8"][path]["invalid_utf8_lines"] == 2


@pytest.mark.parametrize("name,files,bad", [
    ("e2e", {"src1_train.txt": "name : A||A . \n", "src1_valid.txt": "\n \n"}, "src1_valid.txt"),
    ("qqp", {"valid.jsonl": "", "test.jsonl": '{"src": "a?", "trg": "b?"}\n'}, "valid.jsonl"),
    ("sst", {"sentence_float/SSTB_train.csv": SST_HEADER + "0,1,good .,1,1,0.9\n",
             "sentence_float/SSTB_dev.csv": ""}, "sentence_float/SSTB_dev.csv"),
])
def test_empty_split_file_names_the_file(tmp_path, name, files, bad):
  write(tmp_path / "raw" / name, files)
  with pytest.raises(DataError, match="no examples in this 'validation' split file") as err:
    load(name, "validation", tmp_path / "raw", tmp_path)
  assert str(tmp_path / "raw" / name / bad) in str(err.value)


@pytest.mark.parametrize("value,problem", [("positive", "must be a number in \\[0, 1\\], got 'positive'"),
                                           ("1.5", "1.5 is outside \\[0, 1\\]")])
def test_malformed_sst_label_names_file_line_and_row(tmp_path, value, problem):
  train = SST_HEADER + "0,1,good .,1,1,0.9\n1,2,bad .,1,2,0.1\n2,3,odd .,1,3," + value + "\n"
  write(tmp_path / "raw" / "sst", {"sentence_float/SSTB_train.csv": train,
                                   "sentence_float/SSTB_dev.csv": SST_HEADER + "0,1,ok .,2,4,0.5\n"})
  path = tmp_path / "raw" / "sst" / "sentence_float" / "SSTB_train.csv"
  with pytest.raises(DataError, match=f"{path}:4: row 3: the sentiment label \\(column 'values'\\) "
                                      f"{problem}.*Fix that row or delete it"):
    load("sst", "train", tmp_path / "raw", tmp_path)


@pytest.mark.parametrize("name,files,line", [
    ("e2e", {"src1_train.txt": "name : A||A . \nno separator here\n", "src1_valid.txt": "m||t\n"}, 2),
    ("qqp", {"valid.jsonl": '{"src": "a?", "trg": "b?"}\n{"src": "a?"}\n', "test.jsonl": "{}\n"}, 2),
    ("sst2", {"train.tsv": "sentence\tlabel\ngood\t1\nbad\tneg\n", "dev.tsv": "sentence\tlabel\nok\t1\n"}, 3),
])
def test_malformed_row_names_file_and_line(tmp_path, name, files, line):
  write(tmp_path / "raw" / name, files)
  split = "validation" if name == "qqp" else "train"
  first = next(iter(files))
  with pytest.raises(DataError, match=f"{tmp_path / 'raw' / name / first}:{line}: expected .*(F|f)ix"):
    load(name, split, tmp_path / "raw", tmp_path)


def test_missing_raw_file_is_a_data_error_saying_where(tmp_path):
  (tmp_path / "raw" / "qqp").mkdir(parents=True)
  with pytest.raises(DataError, match=f"(?s)Put them in {tmp_path / 'raw' / 'qqp'}.*valid.jsonl.*test.jsonl"):
    load("qqp", "validation", tmp_path / "raw", tmp_path)
  assert issubclass(builders.MissingDataError, FileNotFoundError)  # callers catching that still work


def test_changed_raw_data_is_prepared_again_unchanged_is_reused(tmp_path):
  raw = e2e_raw(tmp_path)
  fp0 = datasets.raw_data_fingerprint("e2e", raw)
  assert [r["text"] for r in load("e2e", "train", raw, tmp_path)] == ["A is nice.", "B is bad."]
  info = next((tmp_path / "tfds").glob("e2e-*/ldlg_e2e/*/dataset_info.json"))
  prepared_at = info.stat().st_mtime_ns

  # Same bytes, new mtime: same fingerprint, the prepared copy is reused.
  train_file = raw / "e2e" / "src1_train.txt"
  os.utime(train_file, ns=(prepared_at + 10**9, prepared_at + 10**9))
  assert datasets.raw_data_fingerprint("e2e", raw) == fp0
  assert [r["text"] for r in load("e2e", "train", raw, tmp_path)] == ["A is nice.", "B is bad."]
  assert info.stat().st_mtime_ns == prepared_at and len(list((tmp_path / "tfds").glob("e2e-*"))) == 1

  # Changed bytes (same size, so only the content hash can tell): prepared anew, new text served.
  train_file.write_bytes(b"name : A||A is good . \nname : B||B is bad . \n")
  fp1 = datasets.raw_data_fingerprint("e2e", raw)
  assert fp1 != fp0
  train = load("e2e", "train", raw, tmp_path)
  assert [r["text"] for r in train] == ["A is good.", "B is bad."]
  assert train.provenance["fingerprint"] == fp1
  assert train.provenance["files"]["train"]["name"] == "src1_train.txt"
  assert len(list((tmp_path / "tfds").glob("e2e-*"))) == 2
  with open((tmp_path / "tfds") / f"e2e-{fp1[:16]}" / "provenance.json", encoding="utf-8") as fh:
    assert json.load(fh)["fingerprint"] == fp1


def test_qqp_is_evaluation_only_until_a_train_file_is_supplied(tmp_path):
  pair = json.dumps({"src": "How do I learn?", "trg": "What is the way to learn?"}) + "\n"
  write(tmp_path / "raw" / "qqp", {"valid.jsonl": pair, "test.jsonl": pair})
  assert datasets.DATASETS["qqp"].has_source and datasets.DATASETS["qqp"].train_split is None
  with pytest.raises(DataError, match="no 'train' split here.*needs train.jsonl"):
    load("qqp", "train", tmp_path / "raw", tmp_path)
  write(tmp_path / "raw" / "qqp", {"train.jsonl": pair * 3})  # the user adds DiffuSeq's train file
  train = load("qqp", "train", tmp_path / "raw", tmp_path)
  assert list(train) == [{"source": "How do I learn?", "text": "What is the way to learn?"}] * 3
