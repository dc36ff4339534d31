"""TFDS builders: row counts and contents from the real raw data, errors, and the download code path.

All datasets are built once per session into a temp TFDS dir (about 8 s on 2 CPU cores, printed by
`test_build_times`); the tests then read the prepared array_record files.
"""

import collections
import dataclasses
import functools
import http.server
import json
import re
import socket
import threading
import time
import zipfile

import numpy as np
import pytest

from ldlg.data import builders
from ldlg.data import datasets
from ldlg.data.builders import e2e as e2e_lib
from ldlg.data.builders import sst2 as sst2_lib
from ldlg.data.seq2seq import group_references
from ldlg.data.text import clean_up_tokenization

BUILD_SECONDS = {}


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory, data_dir):
  """A TFDS dir with every dataset (and config) prepared once; the build time of each is recorded."""
  path = tmp_path_factory.mktemp("tfds")
  for name in ["e2e", "rocstories", "sst", "sst2", "ag_news", "ag_news/clean", "qqp"]:
    start = time.perf_counter()
    datasets.prepare_builder(name, data_dir, tfds_dir=path, allow_download=False)
    BUILD_SECONDS[name] = time.perf_counter() - start
  return path


@pytest.fixture(scope="session")
def load(tfds_dir, data_dir):
  return functools.lru_cache(maxsize=None)(
      lambda name, split: list(datasets.load_split(name, split, data_dir, tfds_dir=tfds_dir)))


def test_build_times(tfds_dir, data_dir):
  """Prints each build's time, and checks that preparing again reuses the prepared copy (no rebuild): the
  second prepare of unchanged raw data writes nothing and is much cheaper than the first build."""
  print("build seconds:", {k: round(v, 2) for k, v in BUILD_SECONDS.items()})
  before = {p: p.stat().st_mtime_ns for p in tfds_dir.rglob("*") if p.is_file() and p.suffix != ".json"}
  start = time.perf_counter()
  datasets.prepare_builder("sst", data_dir, tfds_dir=tfds_dir, allow_download=False)
  again = time.perf_counter() - start
  after = {p: p.stat().st_mtime_ns for p in tfds_dir.rglob("*") if p.is_file() and p.suffix != ".json"}
  assert before == after, "unchanged raw data must reuse the prepared files, not rewrite them"
  assert again < BUILD_SECONDS["sst"], (again, BUILD_SECONDS["sst"])


@pytest.mark.parametrize("name,split,count", [
    ("e2e", "train", 42061), ("e2e", "validation", 4672),
    ("sst", "train", 8544), ("sst", "validation", 1101),
    ("sst2", "train", 67349), ("sst2", "validation", 872),
    ("ag_news", "train", 9001), ("ag_news", "validation", 1000), ("ag_news", "test", 7600),
    ("rocstories", "validation", 1000), ("rocstories", "test", 4000),
    ("qqp", "validation", 2048), ("qqp", "test", 2500),
])
def test_row_counts(tfds_dir, data_dir, name, split, count):
  records = datasets.load_split(name, split, data_dir, tfds_dir=tfds_dir)
  assert len(records) == count
  assert set(records[0]) == set(datasets.DATASETS[name].fields)


def test_records_are_plain_python_and_random_access(tfds_dir, data_dir):
  records = datasets.load_split("sst", "dev", data_dir, tfds_dir=tfds_dir)  # "dev" is an alias
  assert records.split == "validation"
  last = records[-1]
  assert type(last["text"]) is str and type(last["label"]) is int and type(last["score"]) is float
  assert records[len(records) - 1] == last and records[1:3] == [records[1], records[2]]
  with pytest.raises(IndexError):
    records[len(records)]
  assert len(datasets.load_split("sst", "train[:100]", data_dir, tfds_dir=tfds_dir)) == 100


def test_e2e_contents(load, data_dir):
  valid = load("e2e", "validation")
  assert valid[0] == {
      "text": "There is a place in the city centre, Alimentum, that is not family - friendly.",
      "mr": "name : Alimentum | area : city centre | family friendly : no",
      "source": "name : Alimentum | area : city centre | family friendly : no"}
  with open(data_dir / "e2e" / "src1_valid.txt", encoding="utf-8") as fh:
    raw = [line.rstrip("\n").split("||") for line in fh]
  assert [r["text"] for r in valid] == [clean_up_tokenization(t.strip()) for _, t in raw]
  assert [r["mr"] for r in valid] == [m.strip() for m, _ in raw]
  assert all(r["source"] == r["mr"] for r in valid)
  train = load("e2e", "train")
  assert train[0]["text"] == "The Vaults pub near Café Adriatic has a 5 star rating. Prices start at £ 30."
  assert not any(" ." in r["text"] or "||" in r["text"] or r["text"] != r["text"].strip() for r in train)


def test_e2e_pairs_grouped_by_meaning_representation(load):
  valid = load("e2e", "validation")
  groups = group_references(valid)
  assert len(groups) == 547 and sum(len(refs) for _, refs in groups) == len(valid) == 4672
  assert [src for src, _ in groups] == list(dict.fromkeys(r["source"] for r in valid))  # first-seen order
  source, refs = groups[0]
  assert source == valid[0]["source"] and refs == [r["text"] for r in valid if r["source"] == source]
  with pytest.raises(ValueError, match="needs \\(source, target\\) pairs"):
    group_references(load("sst", "validation"))


def test_sst_labels_follow_the_paper(load):
  train, valid = load("sst", "train"), load("sst", "validation")
  assert collections.Counter(r["label"] for r in train) == {1: 4507, 0: 4037}
  assert collections.Counter(r["label"] for r in valid) == {1: 563, 0: 538}
  assert all(r["label"] == int(r["score"] >= 0.5) for r in train + valid)
  assert valid[0] == {"text": "It's a lovely film with lovely performances by Buy and Accorsi.",
                      "label": 1, "score": pytest.approx(0.79167)}


def test_sst2_labels(load):
  assert collections.Counter(r["label"] for r in load("sst2", "train")) == {1: 37569, 0: 29780}
  assert collections.Counter(r["label"] for r in load("sst2", "validation")) == {1: 444, 0: 428}
  assert load("sst2", "validation")[0]["text"] == "it's a charming and often affecting journey."


def test_rocstories_json_decoded_and_split_as_the_paper(load, data_dir):
  with open(data_dir / "rocstories" / "roc_valid.json", encoding="utf-8") as fh:
    lines = [line.rstrip("\n") for line in fh if line.strip()]
  decoded = [json.loads(line)[0] for line in lines]
  naive = [line[2:-2] for line in lines]  # the paper's strip without decoding
  valid, test = [r["text"] for r in load("rocstories", "validation")], [r["text"] for r in
                                                                         load("rocstories", "test")]
  # The paper's split: HF shuffle(seed=42) == numpy default_rng(42) permutation; first 1,000 = valid.
  perm = np.random.default_rng(42).permutation(len(decoded))
  assert valid == [decoded[i] for i in perm[:1000]] and test == [decoded[i] for i in perm[1000:]]
  assert sorted(valid + test) == sorted(decoded) and len(set(valid) | set(test)) == 5000
  # Decoding only changes the 11 stories with \" escapes (the one with \uXXXX escapes is among them).
  assert sum(a != b for a, b in zip(decoded, naive)) == 11
  assert not any('\\"' in s or "\\u" in s for s in valid + test)


def test_ag_news_split_labels_and_quoting(load):
  train, valid, test = load("ag_news", "train"), load("ag_news", "validation"), load("ag_news", "test")
  assert collections.Counter(r["label"] for r in test) == {0: 1900, 1: 1900, 2: 1900, 3: 1900}
  # alps dev.tsv class counts (SOURCE.md): World 2,509, Sports 2,458, Business 2,496, Sci/Tech 2,538.
  assert collections.Counter(r["label"] for r in train + valid) == {0: 2509, 1: 2458, 2: 2496, 3: 2538}
  assert test[0] == {"label": 2, "text": "Unions representing workers at Turner   Newall say they are "
                                         "'disappointed' after talks with stricken parent firm Federal "
                                         "Mogul."}
  # 397 alps rows are quoted with inner quotes doubled; the CSV reader must undo that.
  assert not any('""' in r["text"] for r in train + valid + test)


def test_ag_news_clean_config_undoes_escapes(load):
  paper, clean = load("ag_news", "test"), load("ag_news/clean", "test")
  assert [r["label"] for r in paper] == [r["label"] for r in clean]
  assert sum("\\" in r["text"] for r in paper) > 100
  assert not any("\\" in r["text"] or re.search(r"#\d+;", r["text"]) or "  " in r["text"] for r in clean)
  assert clean[0]["text"].startswith("Unions representing workers at Turner Newall say")
  i = next(i for i, r in enumerate(paper) if "second\\team" in r["text"])
  assert "second team of rocketeers" in clean[i]["text"] and "$10 million" in clean[i]["text"]


def test_qqp_fields(load):
  assert load("qqp", "validation")[0] == {"source": "Why does he want to have sex with me not her?",
                                          "text": "Why did he chose me to have sex with?"}


def test_registry_metadata_matches_the_data(load):
  for name, spec in datasets.DATASETS.items():
    assert spec.num_classes == len(spec.class_names)
    assert spec.valid_split in spec.splits
    assert spec.train_split is None or spec.train_split in spec.splits
    labels = {r.get("label") for r in load(name, spec.valid_split)}
    assert labels == (set(range(spec.num_classes)) if spec.num_classes else {None})
  assert datasets.DATASETS["rocstories"].train_split is None
  assert "train" in datasets.DATASETS["rocstories"].optional_splits


def test_unknown_names_and_missing_splits(tfds_dir, data_dir):
  with pytest.raises(ValueError, match="known datasets: ag_news, e2e, qqp, rocstories, sst, sst2"):
    datasets.load_split("imdb", "train", data_dir, tfds_dir=tfds_dir)
  with pytest.raises(ValueError, match=r"no config 'fancy'; configs: \['paper', 'clean'\]"):
    datasets.load_split("ag_news/fancy", "train", data_dir, tfds_dir=tfds_dir)
  with pytest.raises(ValueError, match=r"no 'train' split here; available: validation, test\. "
                                       r"The 'train' split needs roc_train\.json"):
    datasets.load_split("rocstories", "train", data_dir, tfds_dir=tfds_dir)
  with pytest.raises(ValueError, match="no 'test' split here; available: train, validation"):
    datasets.load_split("e2e", "test", data_dir, tfds_dir=tfds_dir)


@pytest.mark.parametrize("name", ["e2e", "rocstories", "sst", "sst2", "ag_news", "qqp"])
def test_missing_data_error_lists_files_and_folder(tmp_path, name):
  spec = datasets.DATASETS[name]
  (tmp_path / "raw" / spec.raw_dir).mkdir(parents=True)  # present but empty
  with pytest.raises(builders.MissingDataError) as err:
    datasets.load_split(name, spec.valid_split, tmp_path / "raw", tfds_dir=tmp_path / "tfds",
                        allow_download=False)
  msg = str(err.value)
  assert f"Put them in {tmp_path / 'raw' / spec.raw_dir}" in msg
  for f in spec.builder_cls.FILES:
    if f.required:
      assert all(c in msg for c in f.candidates)
  assert ("disabled (allow_download=False)" in msg) == all(
      f.url for f in spec.builder_cls.FILES if f.required)


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def http_root(tmp_path):
  """Serves tmp_path/www over HTTP on localhost; yields (folder, base url)."""
  root = tmp_path / "www"
  root.mkdir()
  server = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield root, f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


def _with_urls(monkeypatch, builder_cls, url_of):
  monkeypatch.setattr(builder_cls, "FILES", tuple(dataclasses.replace(f, url=url_of(f))
                                                  for f in builder_cls.FILES))


def test_download_path_e2e(monkeypatch, tmp_path, http_root):
  root, base = http_root
  (root / "src1_train.txt").write_text("name : A | area : x||A is nice . \nname : B||B is bad , ok . \n")
  (root / "src1_valid.txt").write_text("name : C||C 's fine . \n")  # no test file: optional, skipped
  names = {"train": "train", "validation": "valid", "test": "test"}
  _with_urls(monkeypatch, e2e_lib.LdlgE2e, lambda f: f"{base}/src1_{names[f.key]}.txt")
  train = datasets.load_split("e2e", "train", tmp_path / "no_raw", tfds_dir=tmp_path / "tfds")
  assert list(train) == [{"text": "A is nice.", "mr": "name : A | area : x", "source": "name : A | area : x"},
                         {"text": "B is bad, ok.", "mr": "name : B", "source": "name : B"}]
  valid = datasets.load_split("e2e", "validation", tmp_path / "no_raw", tfds_dir=tmp_path / "tfds")
  assert list(valid) == [{"text": "C's fine.", "mr": "name : C", "source": "name : C"}]


def test_download_path_sst2_zip(monkeypatch, tmp_path, http_root):
  root, base = http_root
  with zipfile.ZipFile(root / "SST-2.zip", "w") as zf:
    zf.writestr("SST-2/train.tsv", "sentence\tlabel\nit 's good . \t1\nbad film \t0\n")
    zf.writestr("SST-2/dev.tsv", "sentence\tlabel\nok , fine \t1\n")
  url = f"{base}/SST-2.zip"
  monkeypatch.setattr(sst2_lib, "GLUE_URL", url)
  _with_urls(monkeypatch, sst2_lib.LdlgSst2, lambda f: url)
  train = datasets.load_split("sst2", "train", tmp_path / "no_raw", tfds_dir=tmp_path / "tfds")
  assert list(train) == [{"text": "it's good.", "label": 1}, {"text": "bad film", "label": 0}]


def test_failed_download_gives_the_manual_instructions_quickly(monkeypatch, tmp_path):
  port = _closed_port()
  _with_urls(monkeypatch, e2e_lib.LdlgE2e, lambda f: f"http://127.0.0.1:{port}/{f.candidates[-1]}")
  start = time.perf_counter()
  with pytest.raises(builders.MissingDataError, match=r"(?s)src1_valid\.txt.*Automatic download failed: "
                                                      r"ConnectionError: cannot connect"):
    datasets.load_split("e2e", "train", tmp_path / "no_raw", tfds_dir=tmp_path / "tfds")
  assert time.perf_counter() - start < 10  # no TFDS retry back-off
