"""Latent precompute job: round trip, manifest, counted text outcomes, resumption, stats, errors."""

import json

import ml_dtypes
import numpy as np
import pytest

from ldlg.data import latent_store as ls
from ldlg.data.precompute import compute_latent_stats, precompute_latents
from ldlg.data.testing import HashingAutoencoder, make_word_tokenizer, synthetic_records

MAX_LEN, DIM = 16, 8


@pytest.fixture(scope="module")
def records():
  return synthetic_records(90, seed=3, num_classes=3)


@pytest.fixture(scope="module")
def tokenizer(records):
  return make_word_tokenizer([r["text"] for r in records] + ["extra source words"])


def make_ae(tokenizer, **kw):
  return HashingAutoencoder(tokenizer, latent_dim=DIM, max_length=MAX_LEN, **kw)


def run(ae, records, out, **kw):
  kw = {"split": "train", "shard_size": 25, "batch_size": 8, "label_set": range(3),
        "show_progress": False, **kw}
  return precompute_latents(ae, records, out, **kw)


@pytest.mark.parametrize("dtype,rtol", [("float16", 1e-3), ("bfloat16", 8e-3), ("float32", 0)])
def test_round_trip(tmp_path, records, tokenizer, dtype, rtol):
  ae = make_ae(tokenizer)
  run(ae, records, tmp_path, dtype=dtype)
  store = ls.LatentStore(tmp_path / "train")
  assert store.num_examples == len(records) and store.dtype == dtype
  token_lens = [len(x) for x in tokenizer([r["text"] for r in records])["input_ids"]]
  for i, r in enumerate(records):
    ex = store[i]
    expected = ae.expected(r["text"])
    assert ex["text"] == r["text"] and ex["label"] == r["label"]
    assert ex["length"] == min(token_lens[i], MAX_LEN) == len(expected)
    np.testing.assert_allclose(ex["latents"], expected, rtol=rtol, atol=rtol * 1e-2)
  raw = np.load(tmp_path / "train" / "shard-00000" / "latents.npy")
  assert raw.dtype == {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}[dtype]
  if dtype == "bfloat16":  # the stored bits are exactly the bfloat16 rounding of the encoder output
    np.testing.assert_array_equal(raw[0, :store.lengths[0]],
                                  ae.expected(records[0]["text"]).astype(ml_dtypes.bfloat16).view(np.uint16))
  # Padding is zero on disk even though the encoder returns non-zero values there.
  assert np.all(raw[np.arange(MAX_LEN)[None, :] >= store.lengths[:len(raw), None]] == 0)


def test_manifest_and_counted_text_outcomes(tmp_path, records, tokenizer):
  bad = [{"text": "   ", "label": 0}, {"text": b"caf\xe9 food .", "label": 1}, {"text": "", "label": 2}]
  mixed = records[:10] + bad + records[10:]
  manifest = run(make_ae(tokenizer), mixed, tmp_path)
  on_disk = json.loads((tmp_path / "train" / "manifest.json").read_text())
  assert on_disk == manifest and manifest["complete"]
  assert manifest["autoencoder"] == "hashing-autoencoder"
  assert manifest["tokenizer"] == {"name": "word-tokenizer", "vocab_size": len(tokenizer)}
  assert (manifest["max_length"], manifest["latent_dim"], manifest["dtype"]) == (MAX_LEN, DIM, "float16")
  kept = len(records) + 1  # two empty rows dropped, the invalid UTF-8 row kept with U+FFFD
  assert manifest["num_examples"] == kept == sum(s["num_examples"] for s in manifest["shards"])
  assert [s["num_examples"] for s in manifest["shards"]] == [25, 25, 25, 16]
  ts = manifest["text_stats"]
  assert (ts["total"], ts["kept"], ts["dropped_empty"], ts["invalid_utf8_replaced"]) == (93, 91, 2, 1)
  texts = [r["text"] for r in records[:10]] + ["caf\ufffd food ."] + [r["text"] for r in records[10:]]
  lens = np.asarray([len(x) for x in tokenizer(texts)["input_ids"]])
  assert ts["truncated"] == int((lens > MAX_LEN).sum()) > 0 and ts["max_tokens"] == lens.max()
  store = ls.LatentStore(tmp_path / "train")
  np.testing.assert_array_equal(store.length_counts, np.bincount(np.minimum(lens, MAX_LEN),
                                                                 minlength=MAX_LEN + 1))
  assert store.strings(10)["text"] == "caf\ufffd food ."
  np.testing.assert_array_equal(store.source_index[9:12], [9, 11, 13])  # rows 10 and 12 were dropped
  assert len(manifest["data_sha256"]) == 64


def test_stats_equal_numpy_over_valid_positions(tmp_path, records, tokenizer):
  run(make_ae(tokenizer), records, tmp_path)
  store = ls.LatentStore(tmp_path / "train")
  x = np.concatenate([store[i]["latents"] for i in range(len(store))]).astype(np.float64)
  assert x.shape == (store.lengths.sum(), DIM)
  np.testing.assert_allclose(store.mean, x.mean(0), rtol=1e-6, atol=1e-7)
  assert store.std == pytest.approx(np.std(x - x.mean(0)), rel=1e-9)
  stats = compute_latent_stats(tmp_path / "train", chunk_size=7)  # chunking does not change the result
  np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=1e-12, atol=1e-12)
  assert stats["std"] == pytest.approx(np.std(x - x.mean(0)), rel=1e-12)
  assert stats["num_positions"] == len(x)


def test_resume_skips_finished_shards_and_matches_a_clean_run(tmp_path, records, tokenizer):
  ae = make_ae(tokenizer)
  ae.fail_after_calls = 8  # 4 batches of 8 per 25-example shard: dies inside shard 2
  with pytest.raises(RuntimeError, match="simulated crash"):
    run(ae, records, tmp_path / "resumed")
  partial = json.loads((tmp_path / "resumed" / "train" / "manifest.json").read_text())
  assert not partial["complete"] and [s["name"] for s in partial["shards"]] == ["shard-00000", "shard-00001"]
  with pytest.raises(ValueError, match="incomplete"):
    ls.LatentStore(tmp_path / "resumed" / "train")
  (tmp_path / "resumed" / "train" / ".shard-00002.tmp-999").mkdir()  # debris of the killed run

  ae2 = make_ae(tokenizer)
  run(ae2, records, tmp_path / "resumed")
  assert ae2.num_texts == len(records) - 50  # shards 0 and 1 were not re-encoded
  assert not list((tmp_path / "resumed" / "train").glob(".shard-*"))
  ae3 = make_ae(tokenizer)
  run(ae3, records, tmp_path / "resumed")  # everything done: nothing is encoded again
  assert ae3.num_calls == 0

  run(make_ae(tokenizer), records, tmp_path / "clean")
  a, b = ls.LatentStore(tmp_path / "resumed" / "train"), ls.LatentStore(tmp_path / "clean" / "train")
  idx = np.arange(len(records))
  for key, value in a.gather(idx).items():
    np.testing.assert_array_equal(value, b.gather(idx)[key])
  assert a.mean.tolist() == b.mean.tolist() and a.std == b.std


def test_resume_refuses_different_data_or_settings(tmp_path, records, tokenizer):
  run(make_ae(tokenizer), records, tmp_path)
  changed = records[:5] + [{"text": "a different sentence .", "label": 0}] + records[6:]
  with pytest.raises(ValueError, match=r"different data or settings \(data_sha256: .*use a new out_dir"):
    run(make_ae(tokenizer), changed, tmp_path)
  with pytest.raises(ValueError, match=r"dtype: 'float16' -> 'bfloat16'"):
    run(make_ae(tokenizer), records, tmp_path, dtype="bfloat16")


def test_float16_overflow_is_an_error_bfloat16_is_fine(tmp_path, records, tokenizer):
  with pytest.raises(ValueError, match=r"overflow float16 .*use dtype='bfloat16'"):
    run(make_ae(tokenizer, scale=1e5), records, tmp_path / "a")
  run(make_ae(tokenizer, scale=1e5), records, tmp_path / "b", dtype="bfloat16")
  assert np.isfinite(ls.LatentStore(tmp_path / "b" / "train").std)


def test_bad_inputs(tmp_path, records, tokenizer):
  with pytest.raises(ValueError, match="row 4: label 7 is not in the dataset's label set"):
    run(make_ae(tokenizer), records[:4] + [{"text": "x", "label": 7}], tmp_path / "a")
  with pytest.raises(ValueError, match="no text left after cleaning"):
    run(make_ae(tokenizer), [{"text": " "}], tmp_path / "b")
  ae = make_ae(tokenizer)
  ae.latent_dim = DIM + 1  # claims a width the encoder does not produce
  with pytest.raises(ValueError, match=r"expected \[8, L, 9\]"):
    run(ae, records, tmp_path / "c")
  with pytest.raises(ValueError, match="dtype must be one of"):
    run(make_ae(tokenizer), records, tmp_path / "d", dtype="int8")


def test_unlabelled_records_with_source_field(tmp_path, records, tokenizer):
  pairs = [{"text": r["text"], "source": "extra source words"} for r in records[:30]]
  manifest = run(make_ae(tokenizer), pairs, tmp_path, split="validation", label_set=None)
  assert not manifest["has_labels"] and manifest["string_fields"] == ["text", "source"]
  assert "stats_file" not in manifest  # statistics come from the train split only
  store = ls.LatentStore(tmp_path / "validation")
  assert store.labels is None and store.mean is None
  assert store[3]["source"] == "extra source words" and "label" not in store[3]
  assert not (tmp_path / "validation" / "shard-00000" / "labels.npy").exists()


def test_manifest_records_the_provenance_of_load_split_records(tmp_path, records, tokenizer):
  class WithProvenance(list):
    provenance = {"dataset": "e2e", "fingerprint": "ab" * 32}

  manifest = run(make_ae(tokenizer), WithProvenance(records[:30]), tmp_path)
  assert manifest["provenance"] == WithProvenance.provenance
  manifest = run(make_ae(tokenizer), records[:30], tmp_path / "b", provenance={"fingerprint": "cd"})
  assert manifest["provenance"] == {"fingerprint": "cd"}
