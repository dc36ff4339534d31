r"""Speed of every hot loop against a measured matmul roofline, printed as JSON (and written to --out).

  python -m ldlg.benchmarks.speed --config=configs/e2e.py:cpu --quick        # ~1-2 min on 2 CPU cores
  python -m ldlg.benchmarks.speed --config=configs/e2e.py:cpu --out=speed.json
  python -m ldlg.benchmarks.speed --config=configs/e2e.py --config.model.dtype=bfloat16   # paper size
  python -m ldlg.benchmarks.speed --config=configs/e2e.py:cpu --parts=train \
      --config.diffusion.self_condition_mode=per_batch                          # one loop, one option

In one process it measures the FLOP/s of a large fp32 matmul (and a bf16 one) on the default device, then for
each hot loop
  train     the denoiser's pmapped train step (global batch config.train.batch_size, --length tokens), and
            `matmuls_alone`: the FLOP/s of its block's own matmul shapes timed side by side, and the roofline
            fraction a step made only of them would reach (`block_roofline_fraction`): the ceiling set by the
            shapes, against which the step's own fraction shows the time spent outside the matmuls,
  pretrain  the BART denoising-autoencoder train step (config.autoencoder sizes; bart-base sizes when the
            config loads a pretrained BART), batch autoencoder.batch_size x autoencoder.max_length tokens,
  sample    one call of the compiled sampler (config.sample.batch_size x model.max_len, num_steps steps), and
            `forward_share`: num_steps denoiser forwards, compiled alone at the same shapes, over the sampler's
            time (fastest repeats): the part of sampling spent in the network (issue target: >= 0.9),
  decode    the BART beam search (num_beams, repetition penalty, no-repeat n-grams) forced to decode
            max_decode_length tokens (min_length = max - 1), so every call does the same work,
  encode    the frozen BART encoder on a batch of data.encode_batch_size x max_length tokens (latent precompute),
reports seconds per call (median over repeats, after warm-up), FLOPs, achieved FLOP/s, the fraction of the
matmul roofline of the loop's compute dtype (fastest repeat over fastest matmul; the median ratio too), the
first call's seconds (trace + compile + run), and how often the function was traced over all calls and the
cost-analysis lowering (1 = no recompilation).

FLOPs are XLA's cost analysis of the compiled programs (per device, times the device count for the pmapped
steps). XLA counts a loop body once, so the sampler's FLOPs are num_steps x those of one denoiser evaluation
compiled alone, and the beam search's are (max_decode_length - 1) x those of one decoder step with the score
processors, plus the cross-attention keys/values computed once. Random weights throughout: speed does not
depend on them (the decode is forced to full length for that reason).
"""

import json
import pathlib

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_flags

from ldlg.benchmarks import roofline
from ldlg.codecs.bart import beam_search
from ldlg.codecs.bart import decoder_step as decoder_lib
from ldlg.engine import parallel
from ldlg.engine import train_state as train_state_lib
from ldlg.engine import trainer
from ldlg.methods.gaussian import samplers
from ldlg.methods.gaussian.method import GaussianDiffusion
from ldlg.networks import count_params

PARTS = ("train", "pretrain", "sample", "decode", "encode")
# facebook/bart-base, for configs that load it rather than pretrain their own (the weights are not needed).
BART_BASE = dict(d_model=768, encoder_layers=6, decoder_layers=6, attention_heads=12, ffn_dim=3072, vocab_size=50265,
                 max_position_embeddings=1024)



def _rate(flops: float, timing: dict, peak: dict) -> dict:
  """FLOP/s at the median time, and the fraction of the roofline: the fastest repeat over the fastest matmul
  (on a shared machine the minimum is the least disturbed estimate of both)."""
  return {"flops": flops, "flops_per_s": flops / timing["median_s"],
          "roofline_fraction": flops / timing["min_s"] / peak["best_flops_per_s"],
          "roofline_fraction_median": flops / timing["median_s"] / peak["flops_per_s"]}


def _bart_sizes(config: ml_collections.ConfigDict) -> dict:
  ae = config.autoencoder
  if ae.pretrain:
    return dict(d_model=ae.d_model, encoder_layers=ae.encoder_layers, decoder_layers=ae.decoder_layers,
                attention_heads=ae.attention_heads, ffn_dim=ae.ffn_dim, vocab_size=ae.vocab_size,
                max_position_embeddings=ae.max_position_embeddings)
  return dict(BART_BASE)


def _bart(config: ml_collections.ConfigDict):
  """A random-init Flax BART of the run's size, its params, and its BartConfig."""
  import transformers  # Slow to import: only when a BART loop is measured.
  from ldlg.codecs.bart import pretrain
  sizes = _bart_sizes(config)
  cfg = ml_collections.ConfigDict(dict(config.autoencoder.to_dict(), **sizes))
  bart_config = pretrain.bart_config(cfg, sizes["vocab_size"])
  dtype = jnp.dtype(config.autoencoder.get("dtype", "float32"))
  model = transformers.FlaxBartForConditionalGeneration(bart_config, dtype=dtype, _do_init=False)
  params = jax.jit(model.init_weights, static_argnums=1)(jax.random.PRNGKey(0), (1, 1))
  return model, params, bart_config, cfg


def train_step_call(loss_fn, params, batch, optim, *, ema_decay):
  """The engine's pmapped train step on a fixed `batch` ([devices, b, ...] host arrays), as a no-argument call.

  Returns:
    (call, flops, counter): call() runs one step (the state is carried inside) and returns its metrics;
    flops() the FLOPs of one step over all devices (XLA); counter.count = traces of the loss so far.
  """
  counter = roofline.TraceCounter()
  job = trainer.TrainJob(init_params=None, loss_fn=counter.wrap(loss_fn), batches=None, optim=optim,
                         init_rng=jax.random.PRNGKey(0), rng=jax.random.PRNGKey(1), ema_decay=ema_decay)
  tx = train_state_lib.make_optimizer(optim, 1000)
  state = parallel.replicate(train_state_lib.TrainState.create(params, tx, ema=ema_decay is not None))
  p_step = trainer.make_p_train_step(job)
  holder = {"state": state}

  def call():
    holder["state"], metrics = p_step(holder["state"], batch)
    return metrics

  def flops():  # Lowered on the live state (earlier ones were donated).
    return roofline.compiled_flops(p_step, holder["state"], batch) * jax.local_device_count()
  return call, flops, counter


def denoiser_train_call(config, length: int):
  """`train_step_call` for the run's denoiser on random latents of `length` tokens (global batch from config)."""
  method = GaussianDiffusion.from_config(config)
  params = method.init_params(jax.random.PRNGKey(0))
  n_dev, batch_size = jax.local_device_count(), config.train.batch_size
  rng = np.random.default_rng(0)
  data = {"latents": rng.normal(size=(batch_size, length, config.model.latent_dim)).astype(np.float32),
          "mask": np.ones((batch_size, length), bool), "example_index": np.arange(batch_size, dtype=np.int32)}
  if config.model.num_classes:
    data["label"] = np.zeros((batch_size,), np.int32)
  call, flops, counter = train_step_call(method.loss_fn, params, parallel.shard_batch(data, n_dev), config.optim,
                                         ema_decay=config.train.ema_decay or None)
  return call, flops, counter, params


def denoiser_block_matmuls(config, length: int) -> tuple[dict, dict]:
  """The matmul shapes of one denoiser self-attention block at the global batch, {name: (b, m, k, n)}, and how many
  of each the block's forward runs (q, k, v and output projections; the MLP's two; attention scores and values)."""
  cfg = config.model
  rows, dim, heads = int(config.train.batch_size) * length, int(cfg.dim), int(cfg.num_heads)
  head_dim = int(cfg.get("head_dim", 0) or dim // heads)
  inner, ff = heads * head_dim, int(cfg.ff_mult) * dim
  shapes = {"qkv_projection": (1, rows, dim, inner), "output_projection": (1, rows, inner, dim),
            "mlp_in": (1, rows, dim, ff), "mlp_out": (1, rows, ff, dim),
            "attention": (int(config.train.batch_size) * heads, length, head_dim, length)}
  return shapes, {"qkv_projection": 3, "output_projection": 1, "mlp_in": 1, "mlp_out": 1, "attention": 2}


def matmul_bound(config, peak, length: int, *, rounds: int) -> dict:
  """The block's matmul shapes timed alone, and the fraction of the roofline a step made only of them would reach
  (FLOP-weighted over one block's forward): the ceiling the step's `roofline_fraction` is to be read against."""
  shapes, counts = denoiser_block_matmuls(config, length)
  rates = roofline.matmul_shape_rates(shapes, peak, dtype=str(jnp.dtype(config.model.dtype)), rounds=rounds)
  flops = sum(counts[name] * r["flops"] for name, r in rates.items())
  seconds = sum(counts[name] * r["flops"] / r["flops_per_s"] for name, r in rates.items())
  return {"shapes": rates, "block_roofline_fraction": flops / seconds / peak["best_flops_per_s"]}


def bench_train(config, peak, *, length, repeats, calls) -> dict:
  batch_size = config.train.batch_size
  call, flops_fn, counter, params = denoiser_train_call(config, length)
  first = roofline.first_call_seconds(call)
  timing = roofline.time_calls(call, repeats=repeats, calls=calls, warmup=1)
  flops, traces = flops_fn(), counter.count
  return {"global_batch": batch_size, "length": length, "dtype": config.model.dtype,
          "self_condition_mode": config.diffusion.get("self_condition_mode", "per_example"),
          "params": count_params(params), "seconds_per_step": timing["median_s"],
          "seconds_min": timing["min_s"], "latent_tokens_per_s": batch_size * length / timing["median_s"],
          **_rate(flops, timing, peak[config.model.dtype]), "first_call_s": first,
          "traces": traces, "matmuls_alone": matmul_bound(config, peak[config.model.dtype], length,
                                                         rounds=max(repeats, 3))}


def bart_train_call(config, width: int | None = None):
  """`train_step_call` for the BART pretraining step on random ids, `width` tokens a row (default: the
  autoencoder's max_length), global batch autoencoder.batch_size. Returns (call, flops, counter, params, cfg)."""
  from ldlg.codecs.bart import pretrain
  model, params, _, cfg = _bart(config)
  n_dev, batch_size, width = jax.local_device_count(), cfg.batch_size, width or cfg.max_length
  rng = np.random.default_rng(0)
  ids = rng.integers(4, cfg.vocab_size, size=(batch_size, width)).astype(np.int32)
  data = dict(input_ids=ids, attention_mask=np.ones_like(ids), labels=ids,
              decoder_input_ids=np.concatenate([np.full((batch_size, 1), 2, np.int32), ids[:, :-1]], 1))
  loss_fn = pretrain.make_loss_fn(model, pad_id=1, num_devices=n_dev)
  call, flops, counter = train_step_call(loss_fn, params, parallel.shard_batch(data, n_dev),
                                         pretrain.optimizer_config(cfg), ema_decay=None)
  return call, flops, counter, params, cfg


def bench_pretrain(config, peak, *, repeats, calls) -> dict:
  call, flops_fn, counter, params, cfg = bart_train_call(config)
  batch_size, width = cfg.batch_size, cfg.max_length
  first = roofline.first_call_seconds(call)
  timing = roofline.time_calls(call, repeats=repeats, calls=calls, warmup=1)
  flops, traces = flops_fn(), counter.count
  dtype = str(jnp.dtype(config.autoencoder.get("dtype", "float32")))
  return {"global_batch": batch_size, "length": width, "dtype": dtype,
          "params": count_params(params), "seconds_per_step": timing["median_s"], "seconds_min": timing["min_s"],
          "tokens_per_s": batch_size * width / timing["median_s"], **_rate(flops, timing, peak[dtype]),
          "first_call_s": first, "traces": traces}


def bench_sample(config, peak, *, repeats, num_steps, batch_size) -> dict:
  method = GaussianDiffusion.from_config(config)
  params = method.init_params(jax.random.PRNGKey(0))
  sample_cfg = ml_collections.ConfigDict(dict(config.sample.to_dict(), num_steps=num_steps, batch_size=batch_size))
  counter = roofline.TraceCounter()
  sample = samplers.sampler_from_config(counter.wrap(method.denoise_fn), method.schedule, sample_cfg,
                                        config.diffusion, num_classes=method.num_classes)
  steps = method.schedule.num_timesteps if sample_cfg.sampler == "ddpm" else num_steps
  max_len, dim = config.model.max_len, config.model.latent_dim
  rng = np.random.default_rng(0)
  mask = np.arange(max_len)[None] < rng.integers(8, max_len + 1, size=(batch_size, 1))
  classes = np.zeros((batch_size,), np.int32) if method.num_classes else None
  guided = float(sample_cfg.get("guidance_scale", 1.0)) != 1.0 and classes is not None
  rows = 2 * batch_size if guided else batch_size
  # One denoiser evaluation as the sampler's loop body runs it (with a self-conditioning estimate).
  z = jnp.zeros((rows, max_len, dim), jnp.float32)
  forward = lambda p, z, m: method.denoise_fn(p, z, jnp.zeros((rows,), jnp.int32), m, z, jnp.ones((rows,), bool),
                                              None if classes is None else jnp.zeros((rows,), jnp.int32), False,
                                              jax.random.PRNGKey(0))
  row_mask = np.concatenate([mask] * (rows // batch_size))
  step_flops = roofline.xla_flops(forward, params, z, row_mask)
  keys = iter(range(1, 10 ** 6))
  call = lambda: sample(params, jax.random.PRNGKey(next(keys)), mask, classes, latent_dim=dim)
  first = roofline.first_call_seconds(call)
  timing = roofline.time_calls(call, repeats=repeats, calls=1, warmup=0)
  # The denoiser forward alone, compiled at the sampler's shapes, back to back: what the sampler would cost if
  # its update arithmetic, loop and bookkeeping were free. The share is the fastest repeats' ratio.
  forward_jit = jax.jit(forward)
  forward_timing = roofline.time_calls(lambda: forward_jit(params, z, row_mask), repeats=repeats,
                                       calls=min(steps, 20), warmup=1)
  return {"batch": batch_size, "max_len": max_len, "sampler": sample_cfg.sampler, "num_steps": steps,
          "forward_seconds": forward_timing["median_s"],
          "forward_share": steps * forward_timing["min_s"] / timing["min_s"],
          "dtype": config.model.dtype, "seconds_per_call": timing["median_s"],
          "seconds_per_step": timing["median_s"] / steps, "latents_per_s": batch_size / timing["median_s"],
          **_rate(steps * step_flops, timing, peak[config.model.dtype]), "first_call_s": first,
          "traces": counter.count}


def bench_decode(config, peak, *, repeats, batch_size) -> dict:
  model, params, bart_config, _ = _bart(config)
  ae = config.autoencoder
  dtype = jnp.dtype(ae.get("dtype", "float32"))
  spec = decoder_lib.DecoderSpec.from_config(bart_config, dtype=dtype)
  max_len = int(ae.max_decode_length)
  opts = beam_search.DecodeOptions(num_beams=ae.num_beams, max_length=max_len, min_length=max_len - 1,
                                   no_repeat_ngram_size=ae.no_repeat_ngram_size,
                                   repetition_penalty=ae.repetition_penalty, length_penalty=ae.length_penalty)
  length = int(config.data.max_length)
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(batch_size, length, spec.d_model)).astype(np.float32)
  mask = np.arange(length)[None] < rng.integers(8, length + 1, size=(batch_size, 1))
  counter = roofline.TraceCounter()
  generate = jax.jit(counter.wrap(lambda p, x, m: beam_search.bart_generate(p, spec, x, m, opts)))

  rows = batch_size * opts.num_beams
  cache = decoder_lib.init_cache(spec, rows, max_len)
  enc = jnp.zeros((rows, length, spec.d_model), dtype)
  enc_mask = jnp.ones((rows, length), bool)
  seqs = jnp.zeros((rows, max_len), jnp.int32)

  def one_step(p, cache, cross, enc_mask, seqs):  # The search's loop body, less its top-k bookkeeping.
    logits, cache = decoder_lib.decoder_step(p, spec, seqs[:, 0], jnp.int32(max_len // 2), cache, cross, enc_mask)
    return opts.process(jax.nn.log_softmax(logits), seqs, jnp.int32(max_len // 2)), cache

  cross_kv = lambda p, e: decoder_lib.precompute_cross_kv(p, spec, e)
  cross_flops = roofline.xla_flops(cross_kv, params, enc)
  step_flops = roofline.xla_flops(one_step, params, cache, jax.eval_shape(cross_kv, params, enc), enc_mask, seqs)
  flops = cross_flops + (max_len - 1) * step_flops
  call = lambda: generate(params, latents, mask)
  first = roofline.first_call_seconds(call)
  timing = roofline.time_calls(call, repeats=repeats, calls=1, warmup=0)
  return {"batch": batch_size, "num_beams": opts.num_beams, "decode_length": max_len, "latent_length": length,
          "dtype": str(dtype), "seconds_per_call": timing["median_s"],
          "seconds_per_token_step": timing["median_s"] / (max_len - 1),
          "sentences_per_s": batch_size / timing["median_s"], **_rate(flops, timing, peak[str(dtype)]),
          "first_call_s": first, "traces": counter.count}


def bench_encode(config, peak, *, repeats, calls) -> dict:
  model, params, _, _ = _bart(config)
  batch_size, length = int(config.data.encode_batch_size), int(config.data.max_length)
  dtype = str(jnp.dtype(config.autoencoder.get("dtype", "float32")))
  rng = np.random.default_rng(0)
  ids = rng.integers(4, model.config.vocab_size, size=(batch_size, length)).astype(np.int32)
  att = np.ones_like(ids)
  counter = roofline.TraceCounter()
  # What Autoencoder.encode compiles per (rows, bucket): the encoder's last hidden states, zero at padding.
  encode = jax.jit(counter.wrap(lambda p, i, a: jnp.where(
      a[..., None] > 0, model.encode(i, a, params=p).last_hidden_state, 0).astype(jnp.float32)))
  call = lambda: encode(params, ids, att)
  first = roofline.first_call_seconds(call)
  timing = roofline.time_calls(call, repeats=repeats, calls=calls, warmup=1)
  flops = roofline.compiled_flops(encode, params, ids, att)
  return {"batch": batch_size, "length": length, "dtype": dtype, "seconds_per_call": timing["median_s"],
          "tokens_per_s": batch_size * length / timing["median_s"],
          **_rate(flops, timing, peak[dtype]), "first_call_s": first, "traces": counter.count}


def benchmark(config: ml_collections.ConfigDict, *, length: int = 32, quick: bool = False,
              parts=PARTS, repeats: int = 0, matmul_n: int = 0) -> dict:
  """Measures the roofline and the requested hot loops (see the module docstring); returns the JSON dict."""
  unknown = set(parts) - set(PARTS)
  if unknown:
    raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
  repeats = repeats or (2 if quick else 3)
  calls = 2 if quick else 5
  n = matmul_n or (1024 if quick else 2048)
  fp32 = roofline.matmul_roofline(n, "float32")
  bf16 = roofline.matmul_roofline(n, "bfloat16")
  peak = {"float32": fp32, "bfloat16": bf16}
  out = {"device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
         "num_devices": jax.local_device_count(), "quick": quick,
         "flops_source": "XLA cost analysis of the compiled programs (loop bodies x trip counts)",
         "cond_counting": roofline.cond_flops_note(),
         "roofline": {"matmul_float32": fp32, "matmul_bfloat16": bf16},
         "model": {"dim": config.model.dim, "layers": config.model.num_layers, "dtype": config.model.dtype}}
  sample_steps = 20 if quick else int(config.sample.num_steps)
  small = lambda b: min(b, 16) if quick else b
  runs = {
      "train": lambda: bench_train(config, peak, length=length, repeats=repeats, calls=calls),
      "pretrain": lambda: bench_pretrain(config, peak, repeats=repeats, calls=calls),
      "sample": lambda: bench_sample(config, peak, repeats=repeats, num_steps=sample_steps,
                                     batch_size=small(int(config.sample.batch_size))),
      "decode": lambda: bench_decode(config, peak, repeats=repeats, batch_size=small(64)),
      "encode": lambda: bench_encode(config, peak, repeats=repeats, calls=calls),
  }
  for part in PARTS:
    if part in parts:
      out[part] = runs[part]()
  return out


def _define_flags():
  """Flags only when run as a program, so the module can be imported beside other flag-defining tools."""
  config_flags.DEFINE_config_file("config", "configs/e2e.py:cpu", "Config to benchmark.")
  flags.DEFINE_integer("length", 32, "Tokens per denoiser training sequence (all valid).")
  flags.DEFINE_bool("quick", False, "Few repeats, 20 sampler steps, smaller decode/sample batches.")
  flags.DEFINE_list("parts", list(PARTS), f"Hot loops to measure, of {PARTS}.")
  flags.DEFINE_integer("repeats", 0, "Timings per loop (0 = 3, or 2 with --quick).")
  flags.DEFINE_integer("matmul_n", 0, "Roofline matmul size (0 = 2048, or 1024 with --quick).")
  flags.DEFINE_string("out", "", "Also write the JSON here.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  result = benchmark(FLAGS.config, length=FLAGS.length, quick=FLAGS.quick, parts=FLAGS.parts,
                     repeats=FLAGS.repeats, matmul_n=FLAGS.matmul_n)
  text = json.dumps(result, indent=2)
  print(text)
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
