"""Driving the real CLI in a subprocess and interrupting it at a chosen moment (the fault-injection tests)."""

import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# The CLI as users run it: one CPU device, the repository on the path (and whatever else the test run set, such as
# the shared compilation cache).
CLI_ENV = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")


def cli_command(workdir, *args: str, config: str = "configs/tiny.py", mode: str = "pipeline") -> list[str]:
  """`python -m ldlg.main --config=<config> --workdir=<workdir> --mode=<mode> <args>`."""
  return [sys.executable, "-m", "ldlg.main", f"--config={config}", f"--workdir={workdir}", f"--mode={mode}", *args]


def run_cli(cmd: Sequence[str], *, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
  """Runs cmd from the repository root; text output captured."""
  return subprocess.run(list(cmd), cwd=REPO_ROOT, env=CLI_ENV if env is None else env, capture_output=True,
                        text=True, timeout=timeout)


def interrupt_when(cmd: Sequence[str], ready: Callable[[], bool], sig: int, *, env=None,
                   timeout: float = 600) -> tuple[int, str]:
  """Starts cmd, waits until ready() is true, sends sig; returns (returncode, stdout+stderr).

  The output goes to a file, not a pipe: nobody reads a pipe while we poll, and a child that fills it (64 KiB of
  logs) would block on its next write and never become ready. Fails if cmd ends before it could be interrupted,
  and if it is not ready within `timeout` seconds (then it is killed, never signalled at a point the test did
  not ask for: on a loaded machine that used to interrupt before the state the test checks).
  """
  with tempfile.TemporaryFile("w+") as log:
    proc = subprocess.Popen(list(cmd), cwd=REPO_ROOT, env=CLI_ENV if env is None else env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while proc.poll() is None and not ready():
      if time.time() > deadline:
        proc.kill()
        proc.wait()
        log.seek(0)
        raise AssertionError(f"not ready to be interrupted after {timeout:.0f} s (machine overloaded?):\n"
                             f"{log.read()[-3000:]}")
      time.sleep(0.02)
    running = proc.poll() is None
    if running:
      proc.send_signal(sig)
    proc.wait(timeout=timeout)
    log.seek(0)
    out = log.read()
  assert running, f"finished before the fault could be injected:\n{out[-3000:]}"
  return proc.returncode, out
