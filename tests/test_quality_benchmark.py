"""The quality benchmark's command, on its smoke preset: every row is produced and scored by the same code."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.extended
@pytest.mark.slow
def test_quality_benchmark_smoke(tmp_path, data_dir):
  cmd = [sys.executable, "-m", "ldlg.benchmarks.quality", f"--workdir={tmp_path}", f"--data_dir={data_dir}",
         "--preset=smoke", "--datasets=sst"]
  run = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                       text=True, timeout=1200)
  assert run.returncode == 0, run.stderr[-4000:]
  table = (tmp_path / "table.md").read_text()
  for row in ("human (train)", "human word-shuffled", "LD4LG", "LD4LG w/o self-cond", "MDLM", "GPT-2 baseline"):
    assert f"| {row} |" in table and f"| {row} |" in run.stdout
  results = json.loads((tmp_path / "results.json").read_text())["sst"]
  rows = results["rows"]
  for name, metrics in rows.items():
    assert 0 < metrics["mauve"]["mean"] <= 1, name
    assert 0 <= metrics["memorization"]["mean"] <= 1 and metrics["perplexity"]["mean"] > 1, name
    assert len(metrics["diversity"]["values"]) == 2, name
  # Human training text is in the training set by construction; shuffling destroys most 4-grams.
  assert rows["human (train)"]["memorization"]["mean"] == 1.0
  assert rows["human word-shuffled"]["memorization"]["mean"] < 0.5
  assert "class_accuracy" in rows["LD4LG"] and "class_accuracy" not in rows["GPT-2 baseline"]
  assert "class_accuracy" in rows["MDLM"]  # Class-conditional on SST, sampled with balanced classes, as LD4LG.
  assert results["params"]["ar_baseline"] == pytest.approx(results["params"]["denoiser"], rel=0.15)
  assert results["params"]["mdlm"] > 0
  assert 0.5 < results["classifier_accuracy_on_real_validation"] <= 1
