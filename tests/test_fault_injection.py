"""Fault injection through the real CLI (`python -m ldlg.main`) on the tiny config: stop signals and kill -9 in
the middle of stages, a damaged checkpoint, a NaN-producing learning rate, bad input. The run that was interrupted
and resumed must end with exactly the uninterrupted run's samples, and nothing stale is ever reported."""

import json
import pathlib
import shutil
import signal

import pytest

from ldlg.engine import signals
from tests.helpers import subprocesses


def cli(workdir, data_dir, *args, mode="pipeline"):
  return subprocesses.cli_command(workdir, f"--data_dir={data_dir}", *args, mode=mode)


def log_steps(path: pathlib.Path) -> list[int]:
  if not path.exists():
    return []
  steps = []
  for line in path.read_text().splitlines():
    try:
      steps.append(json.loads(line)["step"])
    except (ValueError, KeyError):
      pass
  return steps


@pytest.fixture
def reference(tiny_cli_run):
  """The uninterrupted run (shared with other tests: read it, never write to it)."""
  return tiny_cli_run


@pytest.mark.slow
def test_interrupted_and_resumed_pipeline_equals_uninterrupted(reference, tmp_path, data_dir):
  wd = tmp_path / "wd"
  # Checkpoint every 5 steps (a field that may change between runs and does not change results), so a damaged
  # newest checkpoint has an intact one before it.
  faulty = lambda: cli(wd, data_dir, "--config.train.ckpt_every=5")
  # 1. SIGTERM during autoencoder pretraining: saved, non-zero exit, says to rerun; nothing downstream ran.
  code, out = subprocesses.interrupt_when(faulty(), lambda: log_steps(wd / "autoencoder" / "metrics.jsonl"),
                                          signal.SIGTERM)
  assert code == signals.EXIT_CODE_INTERRUPTED, out[-3000:]
  assert "interrupted" in out and "rerun" in out
  assert not (wd / "latents").exists() and not (wd / "samples.jsonl").exists()
  # 2. kill -9 during denoiser training (no chance to save): the rerun resumes from the last checkpoint.
  code, out = subprocesses.interrupt_when(faulty(), lambda: 15 in log_steps(wd / "metrics.jsonl"), signal.SIGKILL)
  assert code == -signal.SIGKILL
  # 3. Damage the newest checkpoint: the rerun names it, falls back to the previous one (or starts over).
  steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and steps[0] >= 5, steps
  if len(steps) > 1:
    arrays = [p for p in (wd / "checkpoints" / str(steps[-1]) / "state").rglob("*") if p.is_file()]
    victim = max(arrays, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  # 4. SIGTERM once sampling has begun (the partial-samples file appears): the batch in flight is finished and
  # saved; then the final rerun resumes after it.
  code, out = subprocesses.interrupt_when(faulty(), lambda: (wd / "samples.partial.jsonl").exists(), signal.SIGTERM)
  assert code == signals.EXIT_CODE_INTERRUPTED, out[-3000:]
  assert "sampling was interrupted after" in out, out[-3000:]
  if len(steps) > 1:
    assert f"step {steps[-1]}" in out and "damaged" in out
  final = subprocesses.run_cli(faulty())
  assert final.returncode == 0, final.stderr[-3000:]
  assert "Resuming sampling" in final.stderr
  # The same samples, byte for byte, and metrics of those samples.
  assert (wd / "samples.jsonl").read_bytes() == (reference / "samples.jsonl").read_bytes()
  metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (wd, reference))
  assert metrics["provenance"] == ref_metrics["provenance"]
  assert metrics["mauve"] == ref_metrics["mauve"] and metrics["diversity"] == ref_metrics["diversity"]


@pytest.mark.slow
def test_stale_results_are_redone_not_reported(reference, tmp_path, data_dir):
  wd = tmp_path / "wd"
  shutil.copytree(reference, wd, symlinks=True)
  # More training: the old samples and metrics are stale; the pipeline trains on and samples again. (The latent
  # likelihood, an eval field free to change between runs, is left out: its ODE solve is the costliest part of the
  # tiny evaluation, and nothing here reads it.)
  result = subprocesses.run_cli(cli(wd, data_dir, "--config.train.num_steps=30",
                                    "--config.eval.likelihood_examples=0"))
  assert result.returncode == 0, result.stderr[-3000:]
  first = json.loads((wd / "samples.jsonl").read_text().splitlines()[0])
  assert first["checkpoint_step"] == 30
  assert json.loads((wd / "metrics.json").read_text())["provenance"]["checkpoint_step"] == 30
  # A NaN-producing learning rate in a fresh training run: one clear error, non-zero exit, no bad checkpoint.
  for stale in ("checkpoints", "metrics.jsonl", "samples.jsonl", "metrics.json", "config.json", "tb"):
    path = wd / stale
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  result = subprocesses.run_cli(cli(wd, data_dir, "--config.optim.lr=1e30", "--config.optim.grad_clip=0",
                                    mode="train"))
  assert result.returncode == 2 and "non-finite" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_input_is_one_clear_line(tmp_path, data_dir):
  result = subprocesses.run_cli(cli(tmp_path / "wd", data_dir, "--config.optim.lr=-0.001",
                                    "--config.diffusion.objective=foo"))
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "optim.lr" in result.stderr and "diffusion.objective" in result.stderr
  assert not (tmp_path / "wd" / "config.json").exists()  # Nothing written: the corrected rerun is not refused.
  (tmp_path / "file").write_text("x")
  result = subprocesses.run_cli(cli(tmp_path / "file", data_dir))
  assert result.returncode == 2 and "is a file" in result.stderr and "Traceback" not in result.stderr
