r"""What length-grouped batches save in the two training loops of an LD4LG run, from the run's own lengths.

  python -m ldlg.benchmarks.length_grouping --config=configs/e2e.py:cpu --workdir=runs/e2e_cpu \
      --data_dir=../shared/data --group=50 --out=runs/e2e_cpu/length_grouping.json

For the denoiser (the lengths of <workdir>/latents/<train split>) and the BART pretraining step (the run's own
tokenizer in <workdir>/autoencoder on the train split's text, with the pretraining corruption), it takes the
first `--steps` batches in the random order and in the length-grouped order (`group_by_length = --group`), and the
width each batch pads to (the denoiser: the store's 8-token buckets, as `data.length_bucketed` trains; BART: its
`pad_multiple`). Then it compiles the train step once per distinct width, random inputs of the run's sizes, and
times all widths in alternating rounds (medians; every width sees the same drift in the machine's load). Reported
per loop and order: the mean padded width, the fill (valid positions / padded positions), and the expected
seconds per step (the mean over its batches of their width's step time); and the ratio grouped / random.

The `sampler` part does the same for the sample stage: `sample.num_samples` lengths planned from the run's length
histogram (its train latents' lengths), in batches of `sample.batch_size`, every batch at model.max_len
(`sample.length_bucket = 0`) against the lengths sorted and each batch cut to its `--sample_bucket` bucket; the
run's sampler timed at each width for `--sample_steps` steps (the time per step does not depend on how many).

This predicts a stage's compute from measured step times; it leaves out what does not depend on the width (host
batching, logging, checkpoints, decoding). The end-to-end stage times of a real run are in the README.
"""

import json
import pathlib
import statistics

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from ldlg.benchmarks import roofline
from ldlg.benchmarks import speed
from ldlg.data import batching
from ldlg.engine.workdir import Workdir


def denoiser_widths(store, batch_size: int, seed: int, group: int, steps: int, bucket_size: int = 8) -> dict:
  """Padded widths and fill of the denoiser's first `steps` batches (group 0 = random batches)."""
  widths, valid = [], 0
  for step in range(steps):
    idx = store.global_batch_indices(step, batch_size, seed, group)
    widths.append(store.bucket_length(int(store.lengths[idx].max()), bucket_size))
    valid += int(store.lengths[idx].sum())
  return {"widths": widths, "fill": valid / (batch_size * sum(widths))}


def bart_widths(token_ids, cfg: ml_collections.ConfigDict, tokenizer, group: int, steps: int) -> dict:
  """Padded widths and fill (clean labels) of BART pretraining's first `steps` batches."""
  from ldlg.codecs.bart import pretrain  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict(dict(cfg.to_dict(), group_by_length=group))
  order = pretrain.batch_order(token_ids, cfg)
  widths, valid = [], 0
  for step in range(steps):
    labels = pretrain.make_batch(token_ids, step, cfg, tokenizer, order)["labels"]
    widths.append(int(labels.shape[1]))
    valid += int((labels != tokenizer.pad_token_id).sum())
  return {"widths": widths, "fill": valid / (cfg.batch_size * sum(widths))}


def sampler_widths(lengths: np.ndarray, *, num_samples: int, batch_size: int, max_len: int, bucket: int,
                   seed: int) -> dict:
  """Widths and fill of the sample stage's batches: lengths drawn as the run's training lengths are distributed;
  bucket 0 = every batch at max_len, else sorted and cut to the bucket (as `TextSampler.sample`)."""
  counts = np.bincount(np.clip(lengths, 1, max_len), minlength=max_len + 1)
  planned = np.random.default_rng(seed).choice(max_len + 1, size=num_samples, p=counts / counts.sum())
  if bucket:
    planned = np.sort(planned)
  batches = [planned[i:i + batch_size] for i in range(0, num_samples, batch_size)]
  widths = [batching.pad_width(int(b.max()), bucket, max_len) if bucket else max_len for b in batches]
  return {"widths": widths, "fill": float(planned.sum()) / sum(len(b) * w for b, w in zip(batches, widths))}


def sampler_call(config: ml_collections.ConfigDict, width: int, *, batch_size: int, num_steps: int):
  """A zero-argument call of the run's sampler (fresh weights) on one batch at `width` positions."""
  from ldlg.methods.gaussian.method import GaussianDiffusion  # pylint: disable=import-outside-toplevel
  method = GaussianDiffusion.from_config(config)
  params = method.init_params(jax.random.PRNGKey(0))
  sample = method.make_sampler(ml_collections.ConfigDict(dict(config.sample.to_dict(), num_steps=num_steps)))
  mask = np.arange(width)[None] < np.random.default_rng(0).integers(1, width + 1, size=(batch_size, 1))
  classes = np.zeros((batch_size,), np.int32) if method.num_classes else None
  call = lambda: jax.block_until_ready(sample(params, jax.random.PRNGKey(0), mask, classes))
  call()  # Compile outside the timing.
  return call


def seconds_by_width(make_call, widths, *, rounds: int, calls: int) -> dict[int, float]:
  """Median seconds per step at each width, the widths timed side by side (`roofline.interleaved_times`)."""
  times = roofline.interleaved_times({w: make_call(w) for w in sorted(set(widths))}, rounds=rounds, calls=calls)
  return {w: statistics.median(t) for w, t in times.items()}


def compare(orders: dict[str, dict], seconds: dict[int, float], num_steps: int) -> dict:
  """The report of one loop: per order its mean width, fill and expected step time; the grouped / random ratio.

  num_steps: the stage's calls (train steps, or sample batches × sampler steps over the timed steps).
  """
  out = {}
  for name, o in orders.items():
    expected = float(np.mean([seconds[w] for w in o["widths"]]))
    out[name] = {"mean_width": float(np.mean(o["widths"])), "fill": o["fill"],
                 "width_counts": {int(w): int(c) for w, c in zip(*np.unique(o["widths"], return_counts=True))},
                 "expected_seconds_per_step": expected, "expected_stage_minutes": expected * num_steps / 60}
  out["ratio_grouped_to_random"] = (out["grouped"]["expected_seconds_per_step"]
                                    / out["random"]["expected_seconds_per_step"])
  out["seconds_by_width"] = {int(w): s for w, s in seconds.items()}
  return out


def run(config: ml_collections.ConfigDict, workdir: Workdir, data_dir, *, group: int, steps: int, rounds: int,
        calls: int, parts=("denoiser", "bart"), sample_steps: int = 10, sample_bucket: int = 8) -> dict:
  """The loops' reports (see the module docstring); the sampler's "random" is every batch at model.max_len, its
  "grouped" the sorted, bucketed batches."""
  if group < 1:
    raise ValueError(f"--group must be >= 1 (batches per length-sorted group), got {group}")
  if sample_bucket < 1:
    raise ValueError(f"--sample_bucket must be >= 1 (positions per sampling length bucket), got {sample_bucket}")
  result = {"device": str(jax.devices()[0].device_kind), "group": group, "steps": steps, "rounds": rounds}
  if "sampler" in parts:
    from ldlg.codecs.bart import codec as bart_codec  # pylint: disable=import-outside-toplevel
    store = bart_codec.open_latent_store(config, workdir, config.data.train_split)
    sc, max_len = config.sample, int(config.model.max_len)
    plan = dict(num_samples=int(sc.num_samples), batch_size=int(sc.batch_size), max_len=max_len, seed=int(sc.seed))
    orders = {"random": sampler_widths(store.lengths, bucket=0, **plan),
              "grouped": sampler_widths(store.lengths, bucket=sample_bucket, **plan)}
    widths = orders["random"]["widths"] + orders["grouped"]["widths"]
    seconds = seconds_by_width(lambda w: sampler_call(config, w, batch_size=int(sc.batch_size),
                                                      num_steps=sample_steps), widths, rounds=rounds, calls=calls)
    batches = len(orders["random"]["widths"])
    result["sampler"] = compare(orders, seconds, batches * int(sc.num_steps) / sample_steps)
    result["sampler"].update(bucket=sample_bucket, timed_steps=sample_steps)
  if "denoiser" in parts:
    from ldlg.codecs.bart import codec as bart_codec  # pylint: disable=import-outside-toplevel
    store = bart_codec.open_latent_store(config, workdir, config.data.train_split)
    b = int(config.train.batch_size)
    orders = {"random": denoiser_widths(store, b, config.seed, 0, steps),
              "grouped": denoiser_widths(store, b, config.seed, group, steps)}
    widths = orders["random"]["widths"] + orders["grouped"]["widths"]
    seconds = seconds_by_width(lambda w: speed.denoiser_train_call(config, w)[0], widths, rounds=rounds, calls=calls)
    result["denoiser"] = compare(orders, seconds, int(config.train.num_steps))
  if "bart" in parts:
    import transformers  # pylint: disable=import-outside-toplevel
    from ldlg.codecs.bart import stages as bart_stages  # pylint: disable=import-outside-toplevel
    from ldlg.data.splits import load_texts  # pylint: disable=import-outside-toplevel
    if not (workdir.autoencoder_dir / "tokenizer.json").exists():
      raise FileNotFoundError(f"{workdir.autoencoder_dir} has no tokenizer.json: run the pretrain_autoencoder "
                              "stage first (or pass --parts=denoiser)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(workdir.autoencoder_dir))
    ae = config.autoencoder
    texts = bart_stages.pretraining_texts(config, load_texts(config, data_dir, workdir, config.data.train_split))
    encoded = tokenizer(texts, truncation=True, max_length=ae.max_length)["input_ids"]
    token_ids = [np.asarray(x, np.int32) for x in encoded]
    orders = {"random": bart_widths(token_ids, ae, tokenizer, 0, steps),
              "grouped": bart_widths(token_ids, ae, tokenizer, group, steps)}
    widths = orders["random"]["widths"] + orders["grouped"]["widths"]
    seconds = seconds_by_width(lambda w: speed.bart_train_call(config, w)[0], widths, rounds=rounds, calls=calls)
    result["bart"] = compare(orders, seconds, int(ae.num_steps))
  return result


def _define_flags():
  config_flags.DEFINE_config_file("config", "configs/e2e.py:cpu", "The run's config (an LD4LG config).")
  flags.DEFINE_string("workdir", None, "A run with latents (and, for BART, its autoencoder/ tokenizer).",
                      required=True)
  flags.DEFINE_string("data_dir", None, "Raw data folder (<dataset>/...); else $LDLG_DATA_DIR.")
  flags.DEFINE_integer("group", 50, "Batches per length-sorted group.")
  flags.DEFINE_integer("steps", 300, "Batches of each order whose widths are counted.")
  flags.DEFINE_integer("rounds", 5, "Timing rounds over all widths.")
  flags.DEFINE_integer("calls", 3, "Back-to-back steps per width per round.")
  flags.DEFINE_list("parts", ["denoiser", "bart"], "Loops to measure: denoiser, bart, sampler.")
  flags.DEFINE_integer("sample_steps", 10, "Sampler steps per timed call (sampler part).")
  flags.DEFINE_integer("sample_bucket", 8, "Positions per sampling length bucket (sampler part).")
  flags.DEFINE_string("out", "", "Also write the JSON here.")


def main(argv):
  del argv
  flags_ = flags.FLAGS
  result = run(flags_.config, Workdir(pathlib.Path(flags_.workdir)), flags_.data_dir, group=flags_.group,
               steps=flags_.steps, rounds=flags_.rounds, calls=flags_.calls, parts=tuple(flags_.parts),
               sample_steps=flags_.sample_steps, sample_bucket=flags_.sample_bucket)
  text = json.dumps(result, indent=2)
  print(text)
  if flags_.out:
    pathlib.Path(flags_.out).write_text(text)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
