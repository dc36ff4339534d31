"""The sampler quality–speed benchmark: every planned point sampled, scored and timed from one compiled program,
the NFE each sampler reports equal to what it was asked, the plot written, and a re-run resuming from its rows."""
import json

import pytest

from configs import tiny
from ldlg.benchmarks import sampler_nfe
from ldlg.methods.gaussian import text_sampler


def test_plan_counts_network_calls_per_sampler():
  points = sampler_nfe.plan(["ddim", "pc", "ode_adaptive"], [3, 4], corrector_steps=1, ode_tolerances=[1e-2, 1e-4])
  got = [(p["sampler"], p["num_steps"], p["nfe"], p["tolerance"]) for p in points]
  # pc makes 2 calls a grid time: NFE 3 is not reachable and is skipped; NFE 4 is 2 grid times.
  assert got == [("ddim", 3, 3, None), ("ddim", 4, 4, None), ("pc", 2, 4, None),
                 ("ode_adaptive", 0, None, 1e-2), ("ode_adaptive", 0, None, 1e-4)]
  # NFE-major in the order asked, so a benchmark cut short has every sampler at the first NFEs.
  order = [(p["sampler"], p["nfe"]) for p in sampler_nfe.plan(["ddim", "dpm_solver_pp_2m"], [25, 250])]
  assert order == [("ddim", 25), ("dpm_solver_pp_2m", 25), ("ddim", 250), ("dpm_solver_pp_2m", 250)]
  with pytest.raises(ValueError, match="unknown sampler"):
    sampler_nfe.plan(["euler"], [4])
  with pytest.raises(ValueError, match="NFE must be >= 1"):
    sampler_nfe.plan(["ddim"], [0])


def test_compare_flags_a_difference_beyond_the_reference_noise():
  ref = {"sampler": "ddim", "nfe": 250, "latent_samples_per_s": 1.0,
         "mauve": {"mean": 0.5, "std": 0.05}, "perplexity": {"mean": 10.0, "std": 1.0}}
  fast = {"sampler": "dpm_solver_pp_2m", "nfe": 25, "latent_samples_per_s": 10.0,
          "mauve": {"mean": 0.46, "std": 0.1}, "perplexity": {"mean": 12.5, "std": 1.0}}
  result = sampler_nfe.compare([ref, fast])
  assert result["speedup_latent_sampler"] == 10.0
  assert result["mauve"]["within_noise"] and result["mauve"]["difference"] == pytest.approx(-0.04)
  assert not result["perplexity"]["within_noise"]
  assert sampler_nfe.compare([ref]) is None
  # The SDE form is compared the same way when asked for by name.
  sde = dict(fast, sampler="dpm_solver_pp_2m_sde", perplexity={"mean": 10.5, "std": 1.0})
  result = sampler_nfe.compare([ref, fast, sde], fast_sampler="dpm_solver_pp_2m_sde")
  assert result["fast"] == "dpm_solver_pp_2m_sde@25" and result["perplexity"]["within_noise"]


def test_a_row_is_keyed_by_the_sampling_fields_the_point_does_not_set():
  config = tiny.get_config()
  kwargs = dict(checkpoint_step=20, num_draws=2, draw_size=2, seed=0, judge="", featurizer="minilm")
  point = sampler_nfe.plan(["ddim"], [4])[0]
  key = sampler_nfe._settings_key(point, sampler_nfe.run_settings(config, **kwargs))
  assert key == sampler_nfe._settings_key(point, sampler_nfe.run_settings(tiny.get_config(), **kwargs))
  for field, value in (("eta", 0.0), ("guidance_scale", 3.0), ("length_bucket", 0)):
    other = tiny.get_config()
    other.sample[field] = value
    assert sampler_nfe._settings_key(point, sampler_nfe.run_settings(other, **kwargs)) != key, field


@pytest.mark.slow
def test_benchmark_on_a_tiny_run_then_resumes(tiny_cli_run, data_dir, tmp_path, monkeypatch):
  config = tiny.get_config()
  kwargs = dict(data_dir=str(data_dir), samplers=["ddim", "dpm_solver_pp_2m", "ode_adaptive"], nfes=[4],
                num_draws=2, draw_size=2, repeats=1, ode_tolerances=[1e-2], out_dir=tmp_path, reference_nfe=4,
                fast_nfe=4)
  report = sampler_nfe.run(config, tiny_cli_run, **kwargs)
  rows = report["rows"]
  assert [(r["sampler"], r["num_steps"], r["nfe"]) for r in rows[:-1]] == [("ddim", 4, 4), ("dpm_solver_pp_2m", 4, 4)]
  for r in rows:
    assert r["retraces"] == 0, r  # one compiled program per point: timed calls never trace again
    assert r["latent_samples_per_s"] > 0
    assert 0.0 <= r["mauve"]["mean"] <= 1.0 and len(r["mauve"]["values"]) == 2
    if r["sampler"] != "ode_adaptive":
      assert r["measured_nfe"] == r["nfe"]  # what the sampler counted is what was asked
  ode = rows[-1]
  assert ode["sampler"] == "ode_adaptive" and ode["nfe"] == ode["measured_nfe"] > 0
  assert report["comparison"]["fast"] == "dpm_solver_pp_2m@4" and "within_noise" in report["comparison"]["mauve"]
  assert 0.0 <= report["human_train_text"]["mauve"]["mean"] <= 1.0
  assert (tmp_path / "sampler_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads((tmp_path / "sampler_nfe.json").read_text())["rows"][0]["sampler"] == "ddim"

  # A re-run with the same settings reuses every finished point: nothing is sampled again.
  def no_sampling(*args, **kwargs):
    raise AssertionError("a finished point was sampled again")
  monkeypatch.setattr(text_sampler.TextSampler, "sample", no_sampling)
  again = sampler_nfe.run(config, tiny_cli_run, **kwargs)
  assert [r["mauve"] for r in again["rows"]] == [r["mauve"] for r in rows]
  # A run asking for fewer points still reports every finished point of the same settings.
  fewer = sampler_nfe.run(config, tiny_cli_run, **{**kwargs, "samplers": ["dpm_solver_pp_2m"]})
  assert [(r["sampler"], r["nfe"]) for r in fewer["rows"]] == [(r["sampler"], r["nfe"]) for r in rows]
