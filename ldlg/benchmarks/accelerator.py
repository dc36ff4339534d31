r"""Accelerator check: the paper-size denoiser's train step and sampler in bf16, with step time, tokens/s and MFU.

  python launch/accelerator_check.py                       # paper config (12 x 768, length 64, batch 64), bf16
  python launch/accelerator_check.py --peak_tflops=989     # a device missing from PEAK_TFLOPS (or to override)
  python launch/accelerator_check.py --tiny                # a tiny model: checks the plumbing on any CPU (tests)
  python launch/accelerator_check.py --config.diffusion.self_condition_mode=per_batch

Runs in one process, sized for under 5 minutes of device time on one H100/H200/A100 or a TPU v4/v5e host
(compilation included; about 1-2 minutes on an H100-class GPU):
  1. a bf16 [8192, 8192] matmul: the FLOP/s the device reaches in practice, and its share of the peak;
  2. the engine's pmapped train step of `configs/e2e.py` (global batch config.train.batch_size, sequences of
     --length valid tokens): seconds per step, latent tokens/s, FLOP/s and MFU;
  3. the compiled sampler (config.sample.batch_size latents of model.max_len, --sample_steps steps): seconds
     per step, latents/s and MFU.
FLOPs are XLA's cost analysis of the compiled programs (see ldlg/benchmarks/speed.py); with remat on, the
recomputed forward pass is counted too (hardware rather than model FLOPs). MFU = achieved FLOP/s over the
devices' summed bf16 dense peak (PEAK_TFLOPS by device kind, or --peak_tflops per device).
Prints a table and the JSON (also to --out).
"""

import json
import pathlib

from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from ldlg.benchmarks import roofline
from ldlg.benchmarks import speed

# Dense bf16 peak TFLOP/s per device (vendor data sheets; no sparsity). Matched against jax's device_kind,
# lower-cased, first match wins (so the more specific names come first).
PEAK_TFLOPS = (
    ("h200", 989.0),          # NVIDIA H200 (SXM)
    ("h100 pcie", 756.0),     # NVIDIA H100 PCIe
    ("h100", 989.0),          # NVIDIA H100 SXM
    ("a100", 312.0),          # NVIDIA A100 (SXM and PCIe)
    ("tpu v5 lite", 197.0),   # TPU v5e reports itself as "TPU v5 lite"
    ("tpu v5e", 197.0),
    ("tpu v5p", 459.0),
    ("tpu v5", 459.0),        # TPU v5p reports itself as "TPU v5"
    ("tpu v4", 275.0),
    ("tpu v6 lite", 918.0),   # TPU v6e (Trillium)
)


def peak_tflops(device_kind: str) -> float | None:
  """The dense bf16 peak of one device of this kind in TFLOP/s, or None if the kind is not in the table."""
  kind = device_kind.lower()
  for name, peak in PEAK_TFLOPS:
    if name in kind:
      return peak
  return None


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A tiny model of the same structure, for checking the plumbing on a CPU (tests)."""
  config.model.update(dim=32, num_layers=2, num_heads=2, max_len=16)
  config.model.latent_dim = 16
  config.train.batch_size = 4
  config.sample.batch_size = 2
  return config


def check(config: ml_collections.ConfigDict, *, length: int = 64, dtype: str = "bfloat16", steps: int = 10,
          sample_steps: int = 50, peak_tflops_per_device: float | None = None, matmul_n: int = 8192) -> dict:
  """Runs the check (see the module docstring) and returns its results as a JSON-able dict.

  Args:
    config: the run's config (the paper's `configs/e2e.py` by default); its model.dtype is set to `dtype`.
    length: valid tokens per training sequence (at most model.max_len).
    dtype: compute dtype of the denoiser ("bfloat16" or "float32"); parameters stay float32.
    steps: timed train steps (after two untimed ones).
    sample_steps: sampler steps per timed call.
    peak_tflops_per_device: overrides the PEAK_TFLOPS entry; needed for MFU on a device not in the table.
    matmul_n: size of the roofline matmul.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = dtype
  if length > config.model.max_len:
    raise ValueError(f"length={length} exceeds config.model.max_len={config.model.max_len}")
  kind = str(jax.devices()[0].device_kind)
  n_dev = jax.local_device_count()
  per_device = peak_tflops_per_device or peak_tflops(kind)
  matmul = roofline.matmul_roofline(matmul_n, "bfloat16" if dtype == "bfloat16" else "float32")
  if per_device:
    peak_flops = per_device * 1e12 * n_dev
    ref = {"flops_per_s": peak_flops, "best_flops_per_s": peak_flops}
  else:  # No known peak: the fractions are of the measured matmul instead, and MFU is left out.
    ref = {"flops_per_s": matmul["flops_per_s"] * n_dev, "best_flops_per_s": matmul["best_flops_per_s"] * n_dev}
  peak = {"float32": ref, "bfloat16": ref}
  train = speed.bench_train(config, peak, length=length, repeats=3, calls=max(1, steps // 3))
  sample = speed.bench_sample(config, peak, repeats=2, num_steps=sample_steps,
                              batch_size=int(config.sample.batch_size))
  for part in (train, sample):
    part["mfu"] = part.pop("roofline_fraction_median") if per_device else None
    part["fraction_of_matmul"] = part["flops_per_s"] / (matmul["flops_per_s"] * n_dev)
    part.pop("roofline_fraction")
  return {
      "device_kind": kind, "num_devices": n_dev, "dtype": dtype,
      "peak_tflops_per_device": per_device,
      "peak_source": "--peak_tflops" if peak_tflops_per_device else ("table" if per_device else "unknown"),
      "matmul": dict(matmul, fraction_of_peak=matmul["flops_per_s"] / (per_device * 1e12) if per_device else None),
      "model": {"dim": config.model.dim, "layers": config.model.num_layers, "heads": config.model.num_heads,
                "max_len": config.model.max_len, "latent_dim": config.model.latent_dim},
      "train": train, "sample": sample,
  }


def table(result: dict) -> str:
  """The result as a few aligned lines for a terminal."""
  mfu = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"
  lines = [f"{result['device_kind']} x{result['num_devices']}, {result['dtype']}, peak "
           f"{result['peak_tflops_per_device'] or 'unknown'} TFLOP/s per device ({result['peak_source']})",
           f"matmul {result['matmul']['n']}^3: {result['matmul']['flops_per_s'] / 1e12:.1f} TFLOP/s "
           f"({mfu(result['matmul']['fraction_of_peak'])} of peak)"]
  t, s = result["train"], result["sample"]
  lines.append(f"train  step {1e3 * t['seconds_per_step']:8.2f} ms  {t['latent_tokens_per_s']:12.0f} tokens/s  "
               f"{t['flops_per_s'] / 1e12:7.2f} TFLOP/s  MFU {mfu(t['mfu'])}  compile+first {t['first_call_s']:.1f} s"
               f"  traces {t['traces']}")
  lines.append(f"sample step {1e3 * s['seconds_per_step']:8.2f} ms  {s['latents_per_s']:12.1f} latents/s "
               f"{s['flops_per_s'] / 1e12:7.2f} TFLOP/s  MFU {mfu(s['mfu'])}  compile+first {s['first_call_s']:.1f} s"
               f"  traces {s['traces']}")
  return "\n".join(lines)


def define_flags():
  # Resolved from this file, so the command runs from any directory of a source checkout.
  default = pathlib.Path(__file__).resolve().parents[2] / "configs" / "e2e.py"
  config_flags.DEFINE_config_file("config", str(default), "Run config (the paper's by default).")
  flags.DEFINE_bool("tiny", False, "Shrink the model (CPU plumbing check).")
  flags.DEFINE_integer("length", 64, "Valid tokens per training sequence.")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Denoiser compute dtype.")
  flags.DEFINE_integer("steps", 30, "Timed train steps.")
  flags.DEFINE_integer("sample_steps", 50, "Sampler steps per timed call.")
  flags.DEFINE_float("peak_tflops", 0.0, "Per-device dense peak TFLOP/s (0 = from the table).")
  flags.DEFINE_string("out", "", "Also write the JSON here.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  config = FLAGS.config
  length, steps, sample_steps, matmul_n = FLAGS.length, FLAGS.steps, FLAGS.sample_steps, 8192
  if FLAGS.tiny:
    config = shrink(config)
    length, steps, sample_steps, matmul_n = min(length, config.model.max_len), 3, 3, 256
  result = check(config, length=length, dtype=FLAGS.dtype, steps=steps, sample_steps=sample_steps,
                 peak_tflops_per_device=FLAGS.peak_tflops or None, matmul_n=matmul_n)
  print(table(result))
  text = json.dumps(result, indent=2)
  print(text)
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(text + "\n", encoding="utf-8")
