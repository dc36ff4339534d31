r"""Speed of the masked-diffusion (MDLM) sampler with and without the cache, side by side, printed as JSON.

  python -m ldlg.benchmarks.masked_sampler --config=configs/e2e.py:mdlm_cpu                 # random weights
  python -m ldlg.benchmarks.masked_sampler --config=configs/e2e.py:mdlm_cpu --workdir=runs/e2e_mdlm \
      --steps=32,128,1000 --batch_sizes=1,16,100 --out=mdlm_sampler.json

For each number of steps T and batch size B it builds two compiled samplers of the config's model (plain
ancestral, and the caching one that skips the network on a step where no token of the batch changed), compiles
both, then times `--rounds` rounds of one call each, A B A B (the order alternating), so both see the same drift
in the machine's load. Reported per (T, B): samples/s of each (median over rounds), the median per-round speed-up
plain / cached, the network calls each made, the share of steps the cache skipped, whether both drew the same
tokens, and how often each was traced again after its first call (0 = no recompilation).

Random weights unless --workdir names a trained run (its tokenizer and EMA parameters): the speed, and the steps
the cache skips, do not depend on the weights. Which positions are revealed at a step is drawn from the schedule
alone (the reveal coin), never from the network's output. The cache skips a step only when no position in the
whole batch was revealed, so its share falls as B grows. A batch reveals ~B·L/T positions a step on average.
"""

import json
import pathlib
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from ldlg.benchmarks import roofline
from ldlg.engine.workdir import Workdir
from ldlg.methods.masked import stages as masked_stages
from ldlg.methods.masked.method import MaskedDiffusion
from ldlg.networks import count_params


def build_method(config, workdir: str):
  """(method, params): a trained run's EMA weights, or random ones of the config's size."""
  if workdir:
    wd = Workdir(pathlib.Path(workdir))
    method, _ = masked_stages.build(config, wd)
    params, _ = masked_stages.load_ema_params(config, wd, method)
    return method, params
  vocab_size = int(config.tokenizer.vocab_size)
  info = {"vocab_size": vocab_size, "mask_id": vocab_size - 1, "pad_id": 1, "bos_id": 0}
  method = MaskedDiffusion.from_config(config, info)
  return method, method.init_params(jax.random.PRNGKey(0))


def compare(method, params, *, num_steps: int, batch_size: int, rounds: int) -> dict:
  """Plain vs caching sampler at one (T, B): see the module docstring for the fields."""
  variants = {}
  for name, cache in (("plain", False), ("cached", True)):
    counter = roofline.TraceCounter()
    sample = method.make_sampler(num_steps=num_steps, cache=cache, logits_fn=counter.wrap(method.logits_fn))
    variants[name] = (sample, counter)
  index = jnp.arange(batch_size, dtype=jnp.int32)
  rng = jax.random.PRNGKey(0)
  run = lambda name: jax.block_until_ready(variants[name][0](params, rng, index))
  out, compile_s, traces = {}, {}, {}
  for name, (_, counter) in variants.items():
    t0 = time.perf_counter()
    out[name] = run(name)
    compile_s[name] = time.perf_counter() - t0
    traces[name] = counter.count
  same_tokens = bool(jnp.all(out["plain"]["tokens"] == out["cached"]["tokens"]))
  seconds = {name: [] for name in variants}
  for r in range(rounds):
    for name in (("plain", "cached") if r % 2 == 0 else ("cached", "plain")):
      t0 = time.perf_counter()
      run(name)
      seconds[name].append(time.perf_counter() - t0)
  calls = {name: int(out[name]["num_network_calls"]) for name in variants}
  return {
      "num_steps": num_steps, "batch_size": batch_size, "length": method.max_len,
      "samples_per_s": {name: batch_size / statistics.median(s) for name, s in seconds.items()},
      "seconds_per_call": {name: statistics.median(s) for name, s in seconds.items()},
      "speedup_cached": statistics.median(p / c for p, c in zip(seconds["plain"], seconds["cached"])),
      "network_calls": calls,
      "skipped_share": 1.0 - calls["cached"] / num_steps,
      "first_call_s": compile_s,
      # The network is traced twice in one compilation (the scan body, and the shape of the cache's carry);
      # any trace after the first call would be a recompilation.
      "retraces": {name: counter.count - traces[name] for name, (_, counter) in variants.items()},
      "cached_equals_plain": same_tokens,
  }


def _define_flags():
  config_flags.DEFINE_config_file("config", "configs/e2e.py:mdlm_cpu", "A masked-diffusion config.")
  flags.DEFINE_string("workdir", "", "A trained masked run (tokenizer + checkpoint); empty: random weights.")
  flags.DEFINE_list("steps", ["32", "128", "1000"], "Numbers of sampler steps T.")
  flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes B (samples per call).")
  flags.DEFINE_integer("rounds", 3, "Timed calls of each sampler per (T, B), alternating.")
  flags.DEFINE_string("out", "", "Also write the JSON here.")


def main(argv):
  del argv
  config = flags.FLAGS.config
  if config.method.name != "masked":
    raise app.UsageError(f"--config must be a masked-diffusion config (method.name=masked), got "
                         f"{config.method.name!r}; e.g. configs/e2e.py:mdlm_cpu")
  method, params = build_method(config, flags.FLAGS.workdir)
  rows = []
  for batch_size in map(int, flags.FLAGS.batch_sizes):
    for num_steps in map(int, flags.FLAGS.steps):
      rows.append(compare(method, params, num_steps=num_steps, batch_size=batch_size,
                          rounds=flags.FLAGS.rounds))
      print(json.dumps(rows[-1]), flush=True)
  report = {"device": jax.devices()[0].device_kind, "num_params": count_params(params),
            "weights": flags.FLAGS.workdir or "random", "rounds": flags.FLAGS.rounds, "rows": rows}
  text = json.dumps(report, indent=2)
  print(text)
  if flags.FLAGS.out:
    pathlib.Path(flags.FLAGS.out).write_text(text + "\n")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
