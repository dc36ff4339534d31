"""Driving the real CLI in a subprocess and interrupting it at a chosen moment (the fault-injection tests)."""

import subprocess
import tempfile
import time
from typing import Callable, Sequence


def interrupt_when(cmd: Sequence[str], ready: Callable[[], bool], sig: int, *, cwd, env,
                   timeout: float = 600) -> tuple[int, str]:
  """Starts cmd, waits until ready() is true, sends sig; returns (returncode, stdout+stderr).

  The output goes to a file, not a pipe: nobody reads a pipe while we poll, and a child that fills it (64 KiB of
  logs) would block on its next write and never become ready. Fails if cmd ends before it could be interrupted.
  """
  with tempfile.TemporaryFile("w+") as log:
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
      time.sleep(0.02)
    running = proc.poll() is None
    if running:
      proc.send_signal(sig)
    proc.wait(timeout=timeout)
    log.seek(0)
    out = log.read()
  assert running, f"finished before the fault could be injected:\n{out[-3000:]}"
  return proc.returncode, out
