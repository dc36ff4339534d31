"""LatentStore: random access, normalization, and deterministic, resumable, per-process pmap batches."""

import itertools
import json

import numpy as np
import pytest

from ldlg.data import latent_store as ls
from ldlg.data.precompute import precompute_latents
from ldlg.data.testing import HashingAutoencoder, make_word_tokenizer, synthetic_records

N, MAX_LEN, DIM, G = 103, 16, 8, 8  # 12 steps per epoch, 7 examples dropped each epoch


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("latents")
  train = synthetic_records(N, seed=1, num_classes=4, max_words=10)
  valid = synthetic_records(20, seed=2, num_classes=4, max_words=10)
  tok = make_word_tokenizer([r["text"] for r in train + valid])
  ae = HashingAutoencoder(tok, latent_dim=DIM, max_length=MAX_LEN)
  for split, recs in (("train", train), ("validation", valid)):
    precompute_latents(ae, recs, out, split=split, shard_size=40, batch_size=16, label_set=range(4),
                       show_progress=False)
  return out


@pytest.fixture(scope="module")
def store(out_dir):
  return ls.LatentStore(out_dir / "train")


def take(it, n):
  return list(itertools.islice(it, n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_metadata(store):
  assert (store.num_examples, store.max_length, store.latent_dim) == (N, MAX_LEN, DIM)
  mean, std = store.stats
  assert mean.shape == (DIM,) and std > 0
  assert store.length_counts.sum() == N and store.length_counts[0] == 0
  np.testing.assert_array_equal(store.length_counts, np.bincount(store.lengths, minlength=MAX_LEN + 1))
  assert store.length_probs.sum() == pytest.approx(1.0)
  assert set(np.unique(store.labels)) <= {0, 1, 2, 3}


def test_batch_shapes_normalization_and_example_index(store):
  batch = next(store.batches(G, num_local_devices=2, seed=0))
  b = G // 2
  assert batch["latents"].shape == (2, b, MAX_LEN, DIM) and batch["latents"].dtype == np.float32
  assert batch["mask"].shape == (2, b, MAX_LEN) and batch["mask"].dtype == bool
  for key in ("label", "example_index", "dataset_index", "length"):
    assert batch[key].shape == (2, b) and batch[key].dtype == np.int32
  np.testing.assert_array_equal(batch["example_index"], [np.arange(b), b + np.arange(b)])
  mean, std = store.stats
  for d, j in itertools.product(range(2), range(b)):
    ex = store[int(batch["dataset_index"][d, j])]
    n = ex["length"]
    assert batch["mask"][d, j].sum() == n == batch["length"][d, j] and batch["mask"][d, j, :n].all()
    np.testing.assert_allclose(batch["latents"][d, j, :n], (ex["latents"] - mean) / std, rtol=1e-6)
    assert np.all(batch["latents"][d, j, n:] == 0)
    assert batch["label"][d, j] == ex["label"]
  raw = next(store.batches(G, num_local_devices=2, seed=0, normalize=False))
  np.testing.assert_allclose(raw["latents"][0, 0, :batch["length"][0, 0]],
                             store[int(batch["dataset_index"][0, 0])]["latents"])


def test_deterministic_for_a_seed(store):
  a = take(store.batches(G, num_local_devices=2, seed=5), 4)
  b = take(store.batches(G, num_local_devices=2, seed=5), 4)
  assert_batches_equal(a, b)
  c = next(store.batches(G, num_local_devices=2, seed=6))
  assert not np.array_equal(a[0]["dataset_index"], c["dataset_index"])


@pytest.mark.parametrize("group", [0, 4])
@pytest.mark.parametrize("start", [1, 11, 12, 13, 30])  # inside, at and across epoch boundaries
def test_resume_from_step_equals_uninterrupted_run(store, start, group):
  kw = dict(num_local_devices=2, seed=3, length_bucketed=True, group_by_length=group)
  full = take(store.batches(G, **kw), start + 3)
  resumed = take(ls.LatentStore(store.path).batches(G, start_step=start, **kw), 3)
  assert_batches_equal(full[start:], resumed)


def test_length_grouped_batches_pad_less_and_keep_the_epochs(store):
  spe = store.steps_per_epoch(G)
  kw = dict(num_local_devices=1, seed=0, normalize=False, length_bucketed=True, bucket_size=2)
  plain = take(store.batches(G, **kw), spe)
  grouped = take(store.batches(G, group_by_length=4, **kw), spe)
  seen = lambda bs: sorted(np.concatenate([b["dataset_index"].ravel() for b in bs]).tolist())
  assert seen(grouped) == seen(plain)  # the same examples each epoch, the same remainder dropped
  padded = lambda bs: sum(b["latents"].shape[2] for b in bs)
  assert padded(grouped) < padded(plain)
  for b in grouped:  # each batch is read as usual: valid positions first, the rest zero
    assert b["latents"].shape[2] >= b["length"].max()


def test_each_epoch_is_a_permutation_with_the_remainder_dropped(store):
  spe = store.steps_per_epoch(G)
  assert spe == N // G == 12
  batches = take(store.batches(G, num_local_devices=1, seed=0, normalize=False), 2 * spe)
  for epoch in range(2):
    seen = np.concatenate([b["dataset_index"].ravel() for b in batches[epoch * spe:(epoch + 1) * spe]])
    assert len(seen) == len(set(seen.tolist())) == spe * G  # no repeats; N % G examples left out
  first, second = (np.concatenate([b["dataset_index"].ravel() for b in batches[e * spe:(e + 1) * spe]])
                   for e in range(2))
  assert not np.array_equal(first, second)  # a fresh permutation each epoch


def test_processes_take_disjoint_slices_of_the_global_batch(store):
  kw = dict(num_local_devices=2, seed=9, length_bucketed=True)
  single = take(store.batches(G, **kw), 3)
  parts = [take(store.batches(G, process_index=p, process_count=2, **kw), 3) for p in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(
        np.concatenate([parts[p][step]["dataset_index"].ravel() for p in range(2)]),
        single[step]["dataset_index"].ravel())
    assert parts[0][step]["latents"].shape == parts[1][step]["latents"].shape  # same bucket on all hosts
    np.testing.assert_array_equal(parts[1][step]["example_index"], [[4, 5], [6, 7]])


def test_length_bucketing(store):
  plain = take(store.batches(G, num_local_devices=2, seed=4), 12)
  bucketed = take(store.batches(G, num_local_devices=2, seed=4, length_bucketed=True, bucket_size=4), 12)
  widths = set()
  for p, q in zip(plain, bucketed):
    L = q["latents"].shape[2]
    widths.add(L)
    assert L % 4 == 0 and q["length"].max() <= L <= MAX_LEN and L - q["length"].max() < 4
    np.testing.assert_array_equal(q["latents"], p["latents"][:, :, :L])
    assert np.all(p["latents"][:, :, L:] == 0)
  assert len(widths) > 1


def test_divisibility_and_size_errors(store):
  with pytest.raises(ValueError, match=r"global_batch_size 10 is not divisible by process_count 1 x "
                                       r"num_local_devices 4 = 4"):
    next(store.batches(10, num_local_devices=4, seed=0))
  with pytest.raises(ValueError, match=r"global_batch_size 14 is not divisible by process_count 3 x "
                                       r"num_local_devices 2 = 6"):
    next(store.batches(14, num_local_devices=2, seed=0, process_count=3, process_index=0))
  with pytest.raises(ValueError, match="process_index 2 not in"):
    next(store.batches(8, num_local_devices=2, seed=0, process_count=2, process_index=2))
  with pytest.raises(ValueError, match=f"larger than the split \\({N} examples\\)"):
    next(store.batches(2 * N, num_local_devices=2, seed=0))


def test_validation_split_uses_train_stats(out_dir, store):
  valid = ls.LatentStore(out_dir / "validation")
  assert valid.stats_path == out_dir / "train" / "stats.json"
  np.testing.assert_array_equal(valid.mean, store.mean)
  assert valid.std == store.std


def test_missing_stats_and_incomplete_store_errors(out_dir, tmp_path):
  import shutil
  shutil.copytree(out_dir / "validation", tmp_path / "validation")
  alone = ls.LatentStore(tmp_path / "validation")
  assert alone.mean is None
  with pytest.raises(ValueError, match="no normalization stats .* pass stats_path"):
    next(alone.batches(4, num_local_devices=1, seed=0))
  assert next(alone.batches(4, num_local_devices=1, seed=0, normalize=False))["latents"].shape[1] == 4
  explicit = ls.LatentStore(tmp_path / "validation", stats_path=out_dir / "train")
  assert explicit.std == ls.LatentStore(out_dir / "train").std
  manifest = json.loads((tmp_path / "validation" / "manifest.json").read_text())
  manifest["complete"] = False
  (tmp_path / "validation" / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="incomplete .* re-run the precompute job"):
    ls.LatentStore(tmp_path / "validation")
  with pytest.raises(FileNotFoundError, match="run the precompute job first"):
    ls.LatentStore(tmp_path / "nothing")


def test_denormalize_inverts_normalize(store):
  batch = store.gather(np.arange(5), normalize=False)
  mean, std = store.stats
  normed = ls.normalize_latents(batch["latents"], batch["mask"], mean, std)
  back = np.where(batch["mask"][..., None], ls.denormalize_latents(normed, mean, std), 0)
  np.testing.assert_allclose(back, batch["latents"], rtol=1e-5, atol=1e-5)


def test_string_column_reads_every_example_in_order_and_names_the_stored_fields(store):
  texts = store.string_column("text")
  assert len(texts) == N
  assert texts == [store.strings(i)["text"] for i in range(N)]  # Across the store's three shards.
  with pytest.raises(KeyError, match="no 'source' strings.*'text'"):
    store.string_column("source")
