"""The speed tools: FLOP counting as the benchmark relies on it, no recompilation in any hot loop, the
accelerator check's MFU and its command."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import e2e
from configs import tiny
from ldlg.benchmarks import accelerator
from ldlg.benchmarks import masked_sampler
from ldlg.benchmarks import roofline
from ldlg.benchmarks import speed

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_xla_counts_a_matmul_exactly_and_a_loop_body_once():
  """The benchmark multiplies loop bodies by their trip counts because XLA counts a body once: if a JAX
  upgrade starts counting trip counts, this fails and the multiplication must go."""
  x = jnp.ones((64, 128))
  w = jnp.ones((128, 128))
  one = roofline.xla_flops(lambda x, w: x @ w, x, w)
  assert one == 2 * 64 * 128 * 128
  scanned = roofline.xla_flops(lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=10)[0], x, w)
  assert abs(scanned - one) / one < 0.01


def test_trace_counter_counts_traces_not_calls():
  counter = roofline.TraceCounter()
  f = jax.jit(counter.wrap(lambda x: x * 2))
  for _ in range(3):
    f(jnp.ones(3))
  assert counter.count == 1
  f(jnp.ones(4))  # a new shape is a new trace
  assert counter.count == 2


@pytest.mark.slow
def test_every_hot_loop_compiles_once_and_reports_its_rate():
  config = tiny.get_config()
  config.sample.num_steps = 3
  result = speed.benchmark(config, length=8, quick=True, repeats=1, matmul_n=128)
  json.dumps(result)  # JSON-able
  for part in speed.PARTS:
    r = result[part]
    assert r["traces"] == 1, (part, r["traces"])  # calls and the cost-analysis lowering share one trace
    assert r["flops"] > 0 and r["flops_per_s"] > 0 and r["roofline_fraction"] > 0, part
  assert result["sample"]["num_steps"] == 20  # --quick samples 20 steps, whatever the config says
  # The block's matmuls timed alone: projections over every token of the global batch; the step-level fraction is
  # a FLOP-weighted harmonic mean of the shapes', so it lies between their extremes.
  alone = result["train"]["matmuls_alone"]
  assert alone["shapes"]["mlp_in"]["shape"] == [1, config.train.batch_size * 8, config.model.dim,
                                                 config.model.ff_mult * config.model.dim]
  fractions = [r["roofline_fraction"] for r in alone["shapes"].values()]
  assert min(fractions) <= alone["block_roofline_fraction"] <= max(fractions) and min(fractions) > 0
  assert result["sample"]["forward_seconds"] > 0 and result["sample"]["forward_share"] > 0
  # The decode is forced to full length, so its FLOPs are those of (max_decode_length - 1) steps, each more than
  # the LM head alone (rows x d_model x vocab multiply-adds).
  rows = result["decode"]["batch"] * result["decode"]["num_beams"]
  lm_head = 2 * rows * config.autoencoder.d_model * config.autoencoder.vocab_size
  assert result["decode"]["flops"] > (result["decode"]["decode_length"] - 1) * lm_head


def test_masked_sampler_benchmark_compares_like_with_like():
  from ldlg.methods.masked.method import MaskedDiffusion  # pylint: disable=import-outside-toplevel
  length, num_steps = 8, 16
  method = MaskedDiffusion(vocab_size=12, mask_id=11, pad_id=1, max_len=length,
                           network=dict(dim=16, num_layers=1, num_heads=2, ff_mult=2))
  params = method.init_params(jax.random.PRNGKey(0))
  row = masked_sampler.compare(method, params, num_steps=num_steps, batch_size=1, rounds=2)
  json.dumps(row)
  assert row["cached_equals_plain"] and row["retraces"] == {"plain": 0, "cached": 0}
  # The plain sampler calls the network every step; the cache at most on the first step and after each step
  # that revealed something (at most L of them with one sample).
  assert row["network_calls"]["plain"] == num_steps
  assert 1 <= row["network_calls"]["cached"] <= 1 + length
  assert row["skipped_share"] == 1 - row["network_calls"]["cached"] / num_steps
  assert row["samples_per_s"]["plain"] > 0 and row["speedup_cached"] > 0


def test_peak_table_finds_the_devices_by_kind():
  assert accelerator.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert accelerator.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert accelerator.peak_tflops("NVIDIA H200") == 989.0
  assert accelerator.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
  assert accelerator.peak_tflops("TPU v4") == 275.0
  assert accelerator.peak_tflops("TPU v5 lite") == 197.0
  assert accelerator.peak_tflops("cpu") is None


@pytest.mark.slow
def test_accelerator_check_command_runs_tiny_on_cpu(tmp_path):
  """The launch command end to end on a tiny model: MFU is achieved FLOP/s over the given peak, no recompiles."""
  out = tmp_path / "check.json"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, str(REPO / "launch" / "accelerator_check.py"), "--tiny",
                         "--peak_tflops=0.5", f"--out={out}"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "MFU" in proc.stdout
  result = json.loads(out.read_text())
  assert result["peak_source"] == "--peak_tflops" and result["dtype"] == "bfloat16"
  assert result["model"]["dim"] == 32  # shrunk
  peak = 0.5e12 * result["num_devices"]
  for part in ("train", "sample"):
    r = result[part]
    assert r["traces"] == 1
    assert r["mfu"] == pytest.approx(r["flops_per_s"] / peak, rel=1e-9)


def test_shrink_keeps_the_paper_structure():
  config = accelerator.shrink(e2e.get_config())
  assert config.model.num_layers == 2 and config.model.dim == 32
  assert config.diffusion.self_condition_prob == 0.5 and config.sample.sampler == "ddim"


def test_every_benchmark_module_imports_into_one_process():
  """absl flags are global: two benchmarks that define the same flag at import time cannot share a process (a
  test worker), so each defines its flags when run as a program, or under names no other module uses."""
  import pkgutil  # pylint: disable=import-outside-toplevel
  import ldlg.benchmarks  # pylint: disable=import-outside-toplevel
  names = [m.name for m in pkgutil.iter_modules(ldlg.benchmarks.__path__)]
  assert {"likelihood_curve", "diffuseq_memorise", "speed"} <= set(names)
  code = "import importlib\nfor n in %r:\n  importlib.import_module('ldlg.benchmarks.' + n)\n" % names
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert proc.returncode == 0, proc.stderr[-2000:]
