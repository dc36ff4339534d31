r"""Side-by-side A/B timing of config variants of one hot loop, in one process: ratios that survive a noisy machine.

  python -m ldlg.benchmarks.ab --config=configs/e2e.py:cpu --part=train \
      --variant=diffusion.self_condition_mode=per_batch --variant=model.dtype=bfloat16
  python -m ldlg.benchmarks.ab --config=configs/e2e.py:cpu --part=sample --variant=model.dtype=bfloat16

The baseline is the config as given; each --variant is a comma-separated list of `section.field=value`
overrides of it (values parsed as Python literals when they are, else kept as strings). Every variant is built
and compiled first; then `--rounds` rounds each time `--calls` back-to-back calls of every variant in turn
(the order rotated from round to round), so all of them see the same drift in the machine's load. Reported per
variant: the median seconds per call and the median over rounds of the per-round ratio variant / baseline (below
1 = faster).
Printed as JSON.
"""

import ast
import copy
import json
import statistics

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from ldlg.benchmarks import roofline
from ldlg.benchmarks import speed



def apply_overrides(config: ml_collections.ConfigDict, spec: str) -> ml_collections.ConfigDict:
  """A copy of `config` with `spec` ("a.b=1,c.d=bfloat16") applied.

  A deep copy, not a `to_dict()` round trip: that would cut the config's field links (`model.latent_dim` follows
  `autoencoder.d_model`, the later version's `model.noise_schedule` follows `diffusion.schedule`), and overriding
  one end of a link would leave the other end stale.
  """
  config = copy.deepcopy(config)
  for item in filter(None, (x.strip() for x in spec.split(","))):
    path, _, raw = item.partition("=")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    *sections, field = path.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[field] = value
  return config


def make_call(config, part: str, length: int, sample_steps: int):
  """A no-argument call of the loop and its trace counter."""
  if part == "train":
    call, _, counter, _ = speed.denoiser_train_call(config, length)
    return call, counter
  from ldlg.methods.gaussian import samplers
  from ldlg.methods.gaussian.method import GaussianDiffusion
  method = GaussianDiffusion.from_config(config)
  params = method.init_params(jax.random.PRNGKey(0))
  counter = roofline.TraceCounter()
  sample_cfg = ml_collections.ConfigDict(dict(config.sample.to_dict(), num_steps=sample_steps))
  sample = samplers.sampler_from_config(counter.wrap(method.denoise_fn), method.schedule, sample_cfg,
                                        config.diffusion, num_classes=method.num_classes)
  b, max_len = int(config.sample.batch_size), config.model.max_len
  mask = np.arange(max_len)[None] < np.random.default_rng(0).integers(8, max_len + 1, size=(b, 1))
  classes = np.zeros((b,), np.int32) if method.num_classes else None
  return (lambda: sample(params, jax.random.PRNGKey(0), mask, classes, latent_dim=config.model.latent_dim)), counter


def compare(config, variants, *, part="train", length=32, sample_steps=20, rounds=5, calls=3) -> dict:
  """Interleaved timings of the baseline and each variant; see the module docstring."""
  names = ["baseline"] + list(variants)
  built = {name: make_call(config if name == "baseline" else apply_overrides(config, name), part, length,
                           sample_steps) for name in names}
  times = roofline.interleaved_times({name: call for name, (call, _) in built.items()}, rounds=rounds,
                                     calls=calls)
  base = times["baseline"]
  return {"part": part, "device": str(jax.devices()[0].device_kind), "rounds": rounds, "calls": calls,
          "variants": {name: {"median_s": statistics.median(times[name]), "min_s": min(times[name]),
                              "ratio_to_baseline": statistics.median(t / b for t, b in zip(times[name], base)),
                              "traces": built[name][1].count} for name in names}}


def _define_flags():
  """Flags only when run as a program, so the module can be imported beside other flag-defining tools."""
  config_flags.DEFINE_config_file("config", "configs/e2e.py:cpu", "Baseline config.")
  flags.DEFINE_enum("part", "train", ["train", "sample"], "Hot loop to time.")
  flags.DEFINE_multi_string("variant", [], "Comma-separated section.field=value overrides.")
  flags.DEFINE_integer("length", 32, "Tokens per training sequence.")
  flags.DEFINE_integer("sample_steps", 20, "Sampler steps per call (part=sample).")
  flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.")
  flags.DEFINE_integer("calls", 3, "Calls per variant per round.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  print(json.dumps(compare(FLAGS.config, FLAGS.variant, part=FLAGS.part, length=FLAGS.length,
                           sample_steps=FLAGS.sample_steps, rounds=FLAGS.rounds, calls=FLAGS.calls), indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
