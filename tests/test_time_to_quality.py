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
