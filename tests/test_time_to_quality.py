"""The time-to-quality benchmark: curves from per-budget quality results, the crossing of two curves (measured,
or extrapolated in log(steps) with a closed-form answer), and, extended, the command on the smoke preset."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from ldlg.benchmarks import time_to_quality as ttq

REPO = pathlib.Path(__file__).resolve().parents[1]


def _metric(mean, std=0.01):
  return {"mean": mean, "std": std, "values": [mean]}


def _curve(fn, steps=(10, 20, 40)):
  return [{"steps": s, "mauve": {"mean": fn(s), "std": 0.0}} for s in steps]


def test_curves_take_each_row_s_points_in_step_order_with_its_own_training_time():
  results = {
      20: {"rows": {"LD4LG": {"mauve": _metric(0.3), "perplexity": _metric(90.0)},
                    "GPT-2 baseline": {"mauve": _metric(0.6)}, "human (train)": {"mauve": _metric(0.9)}},
           "wall_seconds": {"ld4lg_train": 40.0, "ar_baseline_train": 30.0}},
      10: {"rows": {"LD4LG": {"mauve": _metric(0.2), "perplexity": _metric(120.0)},
                    "GPT-2 baseline": {"mauve": _metric(0.5)}},
           "wall_seconds": {"ld4lg_train": 20.0, "ar_baseline_train": 15.0}},
  }
  curves = ttq.curves(results)
  assert set(curves) == {"LD4LG", "GPT-2 baseline"}  # Controls are not curves.
  assert [(p["steps"], p["train_seconds"], p["mauve"]["mean"]) for p in curves["LD4LG"]] == [
      (10, 20.0, 0.2), (20, 40.0, 0.3)]
  assert curves["LD4LG"][0]["perplexity"] == {"mean": 120.0, "std": 0.01}
  assert [p["train_seconds"] for p in curves["GPT-2 baseline"]] == [15.0, 30.0]
  assert "perplexity" not in curves["GPT-2 baseline"][0]


def test_lines_in_log_steps_meet_where_the_closed_form_says():
  a = _curve(lambda s: 0.1 + 0.1 * math.log(s))   # Slower start, steeper.
  b = _curve(lambda s: 0.5 + 0.02 * math.log(s))
  out = ttq.extrapolated_crossing(a, b, "mauve")
  assert out["status"] == "ahead_of_range"
  assert out["steps"] == pytest.approx(math.exp(5.0))  # 0.1 + 0.1 x = 0.5 + 0.02 x at x = 5.
  assert out["slopes_per_log_step"] == pytest.approx({"a": 0.1, "b": 0.02})


def test_a_measured_crossing_a_diverging_pair_and_too_few_points():
  rising = _curve(lambda s: s / 100)                # 0.1, 0.2, 0.4
  flat = _curve(lambda s: 0.3)
  assert ttq.extrapolated_crossing(rising, flat, "mauve") == {"status": "crossed", "steps": 40}
  falling_behind = _curve(lambda s: 0.2 - 0.01 * math.log(s))
  assert ttq.extrapolated_crossing(falling_behind, flat, "mauve")["status"] == "not_converging"
  assert ttq.extrapolated_crossing(rising[:1], flat, "mauve")["status"] == "too_few_points"
  assert ttq.extrapolated_crossing(rising, flat, "perplexity")["status"] == "too_few_points"


def test_every_diffusion_row_is_compared_with_the_gpt2_baseline_and_drawn(tmp_path):
  curves = {"LD4LG": _curve(lambda s: 0.1 + 0.1 * math.log(s)), "MDLM": _curve(lambda s: 0.3),
            "GPT-2 baseline": _curve(lambda s: 0.5 + 0.02 * math.log(s))}
  report = {"dataset": "sst", "preset": "cpu", "curves": curves, "controls": {"human (train)": {
      "mauve": _metric(0.9)}}, "crossings": ttq.crossings(curves)}
  assert set(report["crossings"]) == {"LD4LG vs GPT-2 baseline", "MDLM vs GPT-2 baseline"}
  assert report["crossings"]["LD4LG vs GPT-2 baseline"]["mauve"]["status"] == "ahead_of_range"
  plots = ttq.plot(report, tmp_path)
  for name in plots:
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.extended
@pytest.mark.slow
def test_time_to_quality_smoke(tmp_path, data_dir):
  cmd = [sys.executable, "-m", "ldlg.benchmarks.time_to_quality", f"--workdir={tmp_path}", f"--data_dir={data_dir}",
         "--preset=smoke", "--dataset=sst", "--steps=5,10"]
  run = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                       text=True, timeout=2400)
  assert run.returncode == 0, run.stderr[-4000:]
  report = json.loads((tmp_path / "time_to_quality.json").read_text())
  assert set(report["curves"]) == set(ttq.TRAINED_ROWS)
  for points in report["curves"].values():
    assert [p["steps"] for p in points] == [5, 10] and all(p["train_seconds"] > 0 for p in points)
  # One autoencoder and one judge for both budgets.
  assert (tmp_path / "steps_10" / "sst" / "ld4lg" / "autoencoder").is_symlink()
  assert (tmp_path / "sst" / "judge" / "ar_result.json").exists()
  assert not (tmp_path / "steps_5" / "sst" / "ar_judge").exists()
  assert report["codec_seconds"] > 0 and "human (train)" in report["controls"]


def _finished_quality_run(root: pathlib.Path, steps: int, judge_steps: int) -> pathlib.Path:
  (root / "sst" / "ld4lg").mkdir(parents=True)
  (root / "sst" / "ar_judge").mkdir(parents=True)
  (root / "sst" / "ld4lg" / "config.json").write_text(json.dumps({"train": {"num_steps": steps}}))
  (root / "sst" / "ar_judge" / "ar_result.json").write_text(json.dumps({"max_steps": judge_steps}))
  return root


def test_an_adopted_quality_run_is_its_budget_and_lends_the_others_its_codec_and_judge(tmp_path, monkeypatch):
  monkeypatch.setattr(ttq.pipeline, "stage_done", lambda stage, config, wd: stage == "precompute")
  quality_root = _finished_quality_run(tmp_path / "quality", steps=30, judge_steps=30)
  calls = {}

  def fake_run_dataset(dataset, root, data_dir, preset, *, shared_codec, judge_dir, judge_steps):
    calls[preset["steps"]] = (root, shared_codec, judge_dir, judge_steps)
    return {"rows": {"GPT-2 baseline": {"mauve": _metric(preset["steps"] / 100)}},
            "wall_seconds": {"ar_baseline_train": float(preset["steps"]), "pretrain_autoencoder": 7.0}}

  monkeypatch.setattr(ttq.quality, "run_dataset", fake_run_dataset)
  root = tmp_path / "ttq"
  report = ttq.run(root, data_dir=None, steps=[10, 20], from_quality=quality_root)
  assert report["steps"] == [10, 20, 30] and report["judge_steps"] == 30
  assert (root / "steps_30").resolve() == quality_root.resolve()
  assert calls[30][1] is None and calls[30][0] == quality_root.absolute()  # The adopted run keeps its own codec
  # and its own path (its saved configs name paths under it)...
  for s in (10, 20):
    assert calls[s][1].root == quality_root / "sst" / "ld4lg"  # ...and lends it to the budgets trained here,
    assert calls[s][0] == root / f"steps_{s}"
  assert {c[2] for c in calls.values()} == {quality_root / "sst" / "ar_judge"}  # scored by its judge.
  assert [p["steps"] for p in report["curves"]["GPT-2 baseline"]] == [10, 20, 30]
  assert report["codec_seconds"] == 7.0
  ttq.run(root, data_dir=None, steps=[10], from_quality=quality_root)  # Re-running re-uses the link.


def test_adopting_an_unfinished_or_clashing_quality_run_fails_with_the_fix(tmp_path, monkeypatch):
  preset = ttq.quality.PRESETS["smoke"]
  unfinished = tmp_path / "unfinished"
  (unfinished / "sst" / "ld4lg").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="not a finished quality-benchmark run.*ar_result.json"):
    ttq.adopt_quality_run(tmp_path / "ttq", unfinished, "sst", preset)
  quality_root = _finished_quality_run(tmp_path / "quality", steps=30, judge_steps=30)
  with pytest.raises(FileNotFoundError, match="latents"):  # Its judge is there, its codec is not.
    ttq.adopt_quality_run(tmp_path / "ttq", quality_root, "sst", preset)
  monkeypatch.setattr(ttq.pipeline, "stage_done", lambda stage, config, wd: stage == "precompute")
  (tmp_path / "ttq" / "steps_30").mkdir(parents=True)
  with pytest.raises(ValueError, match="already holds a trained budget of 30 steps"):
    ttq.adopt_quality_run(tmp_path / "ttq", quality_root, "sst", preset)
  with pytest.raises(ValueError, match="--judge_steps cannot be set"):
    ttq.run(tmp_path / "other", data_dir=None, steps=[10], judge_steps=5, from_quality=quality_root)
