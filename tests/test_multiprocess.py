"""Two processes on this machine joined by jax.distributed (localhost coordinator, CPU collectives over gloo)
train the engine's toy job: the result equals the one-process run, each process reads only its own slice of
each global batch, and only process 0 writes the metric log."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from ldlg.engine import trainer
from tests import test_engine

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
  port, env = free_port(), dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", "tests.helpers.multiprocess_worker", str(i), "2", str(port),
                             str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  rows = [json.loads((tmp_path / f"rows-{i}.json").read_text()) for i in range(2)]
  assert all(r == [0, 1, 2, 3] for r in rows[0]) and all(r == [4, 5, 6, 7] for r in rows[1])
  params = [dict(np.load(tmp_path / f"params-{i}.npz")) for i in range(2)]
  single = trainer.train(test_engine.toy_job(), test_engine.toy_run(tmp_path / "single", num_steps=6))
  for name in ("w", "b"):
    np.testing.assert_array_equal(params[0][name], params[1][name])
    np.testing.assert_allclose(params[0][name], np.asarray(single.state.params[name]), rtol=1e-6, atol=1e-7)
  steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert steps == [2, 3, 4, 6]  # One writer: each logged step once (3: logged before its checkpoint).
