"""The diagnostics benchmark on a tiny trained run (the shared CLI run of configs/tiny.py)."""
import json
import shutil

import numpy as np
import pytest

from configs import tiny
from ldlg.benchmarks import diagnostics
from ldlg.engine.workdir import Workdir


@pytest.mark.slow
def test_diagnostics_on_a_tiny_run(tiny_cli_run, tmp_path):
  config = tiny.get_config()
  wd = Workdir(tmp_path / "run")
  shutil.copytree(tiny_cli_run, wd.root, symlinks=True)  # The diagnostics write into the run's folder.
  result = diagnostics.run_diagnostics(wd.root, num_examples=6, num_timesteps=3, noise_scales=(0.0, 0.5, 100.0))
  assert result["num_examples"] == 6
  saved = json.loads((wd.root / "diagnostics.json").read_text())
  assert saved["decoder_robustness"] == result["decoder_robustness"]
  rob = result["decoder_robustness"]
  assert [r["noise_std"] for r in rob] == [0.0, 0.5, 100.0] and all(r["num_sentences"] == 6 for r in rob)
  assert all(0.0 <= r["exact_match"] <= 1.0 and 0.0 <= r["bleu"] <= 100.0 for r in rob)
  den = result["denoiser_by_noise"]
  assert config.diffusion.num_timesteps == 100 and [r["t"] for r in den] == [0, 50, 99]  # even grid, both ends
  # ᾱ falls with t, and every error is finite.
  assert den[0]["alpha_bar"] > den[-1]["alpha_bar"]
  assert all(np.isfinite(r["x0_mse"]) and np.isfinite(r["x0_mse_self_cond"]) for r in den)
  assert sorted(result["plots"]) == ["decoder_robustness.png", "denoiser_by_noise.png"]
  for name in result["plots"]:
    assert (wd.root / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # The decoder's part alone (what a sequence-to-sequence run can have): the same curve, no denoiser pass.
  alone = diagnostics.run_diagnostics(wd.root, num_examples=6, noise_scales=(0.0, 0.5, 100.0),
                                      parts=["decoder_robustness"], out_dir=tmp_path / "decoder_only")
  assert alone["decoder_robustness"] == rob and "denoiser_by_noise" not in alone
  assert alone["plots"] == ["decoder_robustness.png"] and alone["codec"]["kind"] == "bart_latents"
  with pytest.raises(ValueError, match="subset of"):
    diagnostics.run_diagnostics(wd.root, parts=["nope"])
  # The sampler started mid-grid: started at the grid's last point (t = 0, latents all but clean), the run is one
  # denoiser call without an estimate, so its error is denoiser_by_noise's first-pass x̂0 error at t = 0 (up to
  # the two parts' different noise draws, of std 0.01 there).
  samp = diagnostics.run_diagnostics(wd.root, num_examples=6, num_timesteps=3, num_start_points=3,
                                     parts=["denoiser_by_noise", "sampling_from_noise_level"],
                                     out_dir=tmp_path / "sampling")
  rows = samp["sampling_from_noise_level"]
  assert [r["start_step"] for r in rows] == [0, 4, 9] and config.sample.num_steps == 10
  assert [r["t"] for r in rows] == [99, 55, 0]  # the grid's timesteps at those steps, noisiest first
  np.testing.assert_allclose(rows[-1]["latent_mse"], samp["denoiser_by_noise"][0]["x0_mse"], rtol=0.05)
  assert all(len(r["examples"]) == 3 and 0 <= r["exact_match"] <= 1 and r["norm_ratio"] > 0 for r in rows)
  assert "judge_perplexity" not in rows[0] and "sampling_from_noise_level.png" in samp["plots"]
  again = diagnostics.run_diagnostics(wd.root, num_examples=6, num_start_points=3,
                                      parts=["sampling_from_noise_level"], out_dir=tmp_path / "again")
  assert again["sampling_from_noise_level"] == rows  # deterministic from the seed
  # Another sampler setting on the same checkpoint, at chosen start points; only sample.* may change.
  eta0 = diagnostics.run_diagnostics(wd.root, num_examples=6, parts=["sampling_from_noise_level"], start_steps=[4],
                                     sample_overrides="sample.eta=0.0", out_dir=tmp_path / "eta0")
  (row,) = eta0["sampling_from_noise_level"]
  assert eta0["sample"]["eta"] == 0.0 and row["start_step"] == 4 and row["latent_mse"] != rows[1]["latent_mse"]
  with pytest.raises(ValueError, match=r"sample\.\* only"):
    diagnostics.run_diagnostics(wd.root, parts=["sampling_from_noise_level"], sample_overrides="model.dim=8")
  # Samples and validation latents against the re-encodings of their decodings (numbers: the closed-form test).
  reenc = diagnostics.run_diagnostics(wd.root, num_examples=6, parts=["sample_reencoding"],
                                      out_dir=tmp_path / "reenc")["sample_reencoding"]
  assert set(reenc) == {"validation", "samples"} and len(reenc["samples"]["examples"]) == 3
  for part in reenc.values():
    assert 0 <= part["share_same_length"] <= 1 and part["token_norm"] > 0


class _RoundingCodec:
  """A codec whose text is each token's latent rounded to one decimal (d = 1) and which drops the last token of
  the texts in `short`: a round trip then moves a latent by its rounding error, in closed form."""

  def __init__(self, short=()):
    self.short = set(short)

  def decode(self, latents, mask):
    texts = []
    for i, (row, m) in enumerate(zip(latents, mask)):
      values = [f"{v:.1f}" for v in row[m, 0]]
      texts.append(" ".join(values[:-1] if i in self.short else values))
    return texts

  def encode(self, texts):
    width = max(len(t.split()) for t in texts)
    latents, mask = np.zeros((len(texts), width, 1), np.float32), np.zeros((len(texts), width), bool)
    for i, t in enumerate(texts):
      values = [float(w) for w in t.split()]
      latents[i, :len(values), 0], mask[i, :len(values)] = values, True
    return latents, mask


def test_reencoding_distance_is_the_round_trip_s_error_over_same_length_texts():
  rng = np.random.default_rng(0)
  latents = rng.uniform(-2, 2, (6, 5, 1)).astype(np.float32)
  mask = np.arange(5)[None, :] < np.array([5, 4, 3, 5, 2, 4])[:, None]
  latents[~mask] = 0.0
  texts, got = diagnostics._reencoding_distance(_RoundingCodec(short={1, 4}), latents, mask, 0.0, 1.0)
  assert texts[0].count(" ") == 4 and got["share_same_length"] == pytest.approx(4 / 6)
  kept = [0, 2, 3, 5]
  errors = [np.mean(np.square(latents[i, mask[i], 0] - np.round(latents[i, mask[i], 0], 1))) for i in kept]
  np.testing.assert_allclose(got["reencoding_mse"], np.mean(errors), rtol=1e-5)
  np.testing.assert_allclose(got["reencoding_mse_median"], np.median(errors), rtol=1e-5)
  np.testing.assert_allclose(got["token_norm"], np.abs(latents[mask, 0]).mean(), rtol=1e-6)
  # Normalization: the codec sees un-normalized latents, the distance is in normalized units.
  _, scaled = diagnostics._reencoding_distance(_RoundingCodec(), latents / 10, mask, 0.0, 10.0)
  assert scaled["share_same_length"] == 1.0 and scaled["reencoding_mse"] < got["reencoding_mse"] / 50


def test_sampling_from_noise_level_rejects_what_cannot_start_mid_grid():
  import jax
  import ml_collections
  from ldlg.methods.gaussian.method import GaussianDiffusion
  config = tiny.get_config()
  method = GaussianDiffusion.from_config(config)
  params = method.init_params(jax.random.PRNGKey(0))
  batch = {"latents": np.zeros((2, 4, config.model.latent_dim), np.float32), "mask": np.ones((2, 4), bool)}
  call = lambda sample_cfg, starts: diagnostics.sampling_from_noise_level(
      method, params, None, batch, ["a", "b"], 0.0, 1.0, starts, sample_config=sample_cfg)
  with pytest.raises(ValueError, match="sampler='ddim'"):
    call(ml_collections.ConfigDict(dict(config.sample.to_dict(), sampler="dpm_solver_pp_2m")), [0])
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    call(config.sample, [0, 10])


def test_class_sensitivity_sees_a_class_pathway_and_reads_zero_when_the_classes_are_one_vector():
  import jax
  from ldlg.methods.gaussian.method import GaussianDiffusion
  from tests.helpers.denoiser_params import perturbed
  config = tiny.get_config()
  config.model.num_classes = 2
  method = GaussianDiffusion.from_config(config)
  params = perturbed(method.init_params(jax.random.PRNGKey(0)), scale=0.1)
  rng = np.random.default_rng(0)
  n, length, d = 4, 8, config.model.latent_dim
  batch = {"latents": rng.standard_normal((n, length, d)).astype(np.float32), "mask": np.ones((n, length), bool),
           "label": np.array([0, 1, 1, 0])}
  rows = diagnostics.class_sensitivity(method, params, batch, [10, 90])
  assert [r["t"] for r in rows] == [10, 90]
  assert all(r["relative_change_wrong"] > 1e-6 and r["relative_change_null"] > 1e-6 for r in rows)
  # One vector for every class (and the null): the class input cannot move x̂0, and the diagnostic says 0.
  table = params["class_embed"]["embedding"]
  dead = dict(params, class_embed={"embedding": np.broadcast_to(table[:1], table.shape)})
  for r in diagnostics.class_sensitivity(method, dead, batch, [10, 90]):
    assert r["relative_change_wrong"] == 0.0 and r["relative_change_null"] == 0.0
    assert r["x0_mse_true"] == r["x0_mse_wrong"] == r["x0_mse_null"]
  with pytest.raises(ValueError, match="class-conditional run"):
    diagnostics.class_sensitivity(GaussianDiffusion.from_config(tiny.get_config()), params, batch, [10])
