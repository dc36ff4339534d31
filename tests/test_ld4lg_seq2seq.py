"""Sequence-to-sequence LD4LG: the source encodings (stored once per distinct source, looked up per example,
identical to encoding the text at sampling) and the tiny pipeline end to end."""

import json

import numpy as np
import pytest

from ldlg.codecs.bart import sources as sources_lib
from ldlg.data import latent_store as ls
from ldlg.data.precompute import precompute_latents
from ldlg.data.testing import HashingAutoencoder, make_word_tokenizer, synthetic_records
from ldlg.engine.workdir import Workdir

MAX_LEN, DIM = 16, 8


@pytest.fixture()
def pairs_run(tmp_path):
  """A workdir with target latents of 40 pairs over 7 distinct sources (repeats, as E2E's references)."""
  sources = [r["text"] for r in synthetic_records(7, seed=1, max_words=10)]
  targets = synthetic_records(40, seed=2)
  records = [{"text": t["text"], "source": sources[(3 * i) % 7]} for i, t in enumerate(targets)]
  tokenizer = make_word_tokenizer([r["text"] for r in records] + sources)
  ae = HashingAutoencoder(tokenizer, latent_dim=DIM, max_length=MAX_LEN)
  wd = Workdir(tmp_path / "wd")
  precompute_latents(ae, records, wd.root / "latents", split="train", dtype="float16", shard_size=16,
                     show_progress=False)
  store = ls.LatentStore(wd.latents_dir("train"))
  return wd, ae, store, records


def _precompute(wd, ae, store):
  return sources_lib.precompute_sources(ae, store, wd, "train", dtype="float16", shard_size=4, batch_size=3)


def test_each_distinct_source_is_stored_once_and_every_example_finds_its_own(pairs_run):
  wd, ae, store, records = pairs_run
  assert not sources_lib.sources_done(wd, "train")
  rows = _precompute(wd, ae, store)
  assert sources_lib.sources_done(wd, "train")
  lookup = sources_lib.SourceLookup(wd, "train", store.stats_path)
  assert lookup.store.num_examples == rows["num_sources"] == len({r["source"] for r in records}) == 7
  for i, record in enumerate(records):
    assert lookup.store.strings(int(lookup.example_rows[i]))["text"] == record["source"]
  # Looked up per example (any batch shape), normalized with the *targets'* stats, padded to one width.
  index = np.array([[0, 5, 9], [13, 2, 39]])
  got = lookup.lookup(index)
  assert got["source"].shape == (2, 3, lookup.width, DIM) and got["source_mask"].shape == (2, 3, lookup.width)
  assert lookup.width == max(lookup.store.lengths)
  # What sampling computes from the text alone is bit-identical to what training read from the store.
  mean, std = store.stats
  fresh = sources_lib.encode_sources(ae, [records[i]["source"] for i in index.reshape(-1)], mean=mean, std=std,
                                     dtype="float16", width=lookup.width)
  np.testing.assert_array_equal(fresh["source_mask"], got["source_mask"].reshape(6, lookup.width))
  np.testing.assert_array_equal(fresh["source"], got["source"].reshape(6, lookup.width, DIM))
  assert np.all(fresh["source"][~fresh["source_mask"]] == 0.0)


def test_batches_carry_their_sources_and_new_targets_invalidate_them(pairs_run, tmp_path):
  wd, ae, store, records = pairs_run
  _precompute(wd, ae, store)
  lookup = sources_lib.SourceLookup(wd, "train", store.stats_path)
  batch = next(lookup.attach(store.batches(8, num_local_devices=2, seed=0)))
  assert batch["source"].shape == (2, 4, lookup.width, DIM) and batch["latents"].shape[:2] == (2, 4)
  np.testing.assert_array_equal(batch["source"], lookup.lookup(batch["dataset_index"])["source"])
  # Rewriting the target latents (other data) makes the stored sources stale.
  manifest = json.loads((wd.latents_dir("train") / "manifest.json").read_text())
  manifest["data_sha256"] = "other"
  (wd.latents_dir("train") / "manifest.json").write_text(json.dumps(manifest))
  assert not sources_lib.sources_done(wd, "train")
  # ... and the precompute then makes them again for the targets there are now.
  _precompute(wd, ae, ls.LatentStore(wd.latents_dir("train")))
  assert sources_lib.sources_done(wd, "train")


def test_missing_sources_and_bad_source_texts_are_refused_with_the_fix(pairs_run, tmp_path):
  wd, ae, store, _ = pairs_run
  with pytest.raises(FileNotFoundError, match="--mode=precompute"):
    sources_lib.SourceLookup(wd, "train", store.stats_path)
  mean, std = store.stats
  with pytest.raises(ValueError, match="non-empty"):
    sources_lib.encode_sources(ae, ["ok", "  "], mean=mean, std=std, dtype="float16")
  with pytest.raises(ValueError, match="more than the width 2"):
    sources_lib.encode_sources(ae, ["a b c d"], mean=mean, std=std, dtype="float16", width=2)
  # A target store without sources (an unconditional dataset) cannot feed a seq2seq run.
  plain = Workdir(tmp_path / "plain")
  precompute_latents(ae, synthetic_records(10, seed=4), plain.root / "latents", split="train", show_progress=False)
  with pytest.raises(ValueError, match="no 'source' field"):
    _precompute(plain, ae, ls.LatentStore(plain.latents_dir("train")))


def test_the_method_insists_on_the_latent_width_as_source_width():
  from configs import tiny
  from ldlg import methods
  config = tiny.get_config("ld4lg_seq2seq")
  cls = methods.get(config)
  assert cls.name == "ld4lg_seq2seq" and cls.from_config(config).source_conditioned
  del config.model["source_dim"]  # (Linked to the autoencoder's d_model in the variant: cannot differ by accident.)
  with pytest.raises(ValueError, match="source_dim=0"):
    cls.from_config(config)
