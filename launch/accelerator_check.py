#!/usr/bin/env python3
r"""One command to check an accelerator: the paper-size denoiser's bf16 train step and sampler, with MFU.

  python launch/accelerator_check.py                    # on the GPU/TPU host, from the repository root
  python launch/accelerator_check.py --peak_tflops=989  # a device kind missing from the peak table
  python launch/accelerator_check.py --tiny             # any CPU: a tiny model, to check the plumbing

Under 5 minutes of device time on one H100/H200/A100 or a TPU v4/v5e host. See ldlg/benchmarks/accelerator.py.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # ldlg/ and configs/ without installing

from absl import app  # noqa: E402

from ldlg.benchmarks import accelerator  # noqa: E402

if __name__ == "__main__":
  accelerator.define_flags()
  app.run(accelerator.main)
