r"""Speed of the hot paths, printed as JSON: the pmapped train step and the compiled sampler.

  python -m ldlg.benchmarks.speed --config=configs/e2e.py:cpu        # the CPU denoiser
  python -m ldlg.benchmarks.speed --config=configs/e2e.py            # the paper's 12 x 768 denoiser

Reports steps/s and latent tokens/s of training (global batch from the config, sequences of --length tokens),
latents/s of sampling (config.sample.num_steps steps, batch config.sample.batch_size), the compile times, and
how often each function was traced over the timed calls (1 = no recompilation).
"""

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from ldlg.engine import parallel
from ldlg.engine import train_state as train_state_lib
from ldlg.engine import trainer
from ldlg.methods.gaussian.method import GaussianDiffusion
from ldlg.networks import count_params

_CONFIG = config_flags.DEFINE_config_file("config", "configs/e2e.py:cpu", "Config to benchmark.")
_LENGTH = flags.DEFINE_integer("length", 32, "Tokens per training sequence (all valid).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed training steps.")
_SAMPLE_CALLS = flags.DEFINE_integer("sample_calls", 2, "Timed sampler calls.")


def benchmark(config, length: int, steps: int, sample_calls: int) -> dict:
  method = GaussianDiffusion.from_config(config)
  params = method.init_params(jax.random.PRNGKey(0))
  n_dev, batch = jax.local_device_count(), config.train.batch_size
  traces = {"train_step": 0}
  original = trainer.train_step

  def counted(*args, **kwargs):
    traces["train_step"] += 1
    return original(*args, **kwargs)

  trainer.train_step = counted
  try:
    state = parallel.replicate(train_state_lib.TrainState.create(
        params, train_state_lib.make_optimizer(config.optim, 1000)))
    job = trainer.TrainJob(init_params=method.init_params, loss_fn=method.loss_fn, batches=None,
                           optim=config.optim, init_rng=jax.random.PRNGKey(0), rng=jax.random.PRNGKey(1),
                           ema_decay=config.train.ema_decay, ema_warmup=config.train.ema_warmup)
    step = trainer.make_p_train_step(job)
    rng = np.random.default_rng(0)
    data = {"latents": rng.normal(size=(n_dev, batch // n_dev, length, config.model.latent_dim)).astype(np.float32),
            "mask": np.ones((n_dev, batch // n_dev, length), bool),
            "example_index": np.arange(batch, dtype=np.int32).reshape(n_dev, -1)}
    if config.model.num_classes:
      data["label"] = np.zeros((n_dev, batch // n_dev), np.int32)
    t0 = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    train_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    train_time = (time.perf_counter() - t0) / steps
  finally:
    trainer.train_step = original

  sample = method.make_sampler(config.sample)
  sb, max_len = config.sample.batch_size, config.model.max_len
  mask = np.arange(max_len)[None] < rng.integers(8, max_len + 1, size=(sb, 1))
  classes = np.zeros((sb,), np.int32) if config.model.num_classes else None
  t0 = time.perf_counter()
  jax.block_until_ready(sample(params, jax.random.PRNGKey(0), mask, classes))
  sample_compile = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(sample_calls):
    out = sample(params, jax.random.PRNGKey(i + 1), mask, classes)
  jax.block_until_ready(out)
  sample_time = (time.perf_counter() - t0) / sample_calls
  return {
      "device": str(jax.devices()[0].device_kind), "num_devices": n_dev,
      "denoiser_params": count_params(params), "dim": config.model.dim, "layers": config.model.num_layers,
      "train": {"global_batch": batch, "length": length, "steps_per_s": 1 / train_time,
                "latent_tokens_per_s": batch * length / train_time, "compile_s": train_compile,
                "traces": traces["train_step"]},
      "sample": {"batch": sb, "max_len": max_len, "sampler": config.sample.sampler,
                 "num_steps": config.sample.num_steps, "latents_per_s": sb / sample_time,
                 "seconds_per_call": sample_time, "compile_s": sample_compile,
                 "compiled_versions": getattr(sample, "func", sample)._cache_size()},
  }


def main(argv):
  del argv
  print(json.dumps(benchmark(_CONFIG.value, _LENGTH.value, _STEPS.value, _SAMPLE_CALLS.value), indent=2))


if __name__ == "__main__":
  app.run(main)
