r"""Where a trained DiffuSeq run loses quality: its x̂0 by noise level, and how much it reads the source.

  python -m ldlg.benchmarks.seq2seq_diagnostics --workdir=runs/e2e_diffuseq --data_dir=../shared/data \
      [--num_examples=128] [--num_timesteps=10] [--out=<dir>]

Reads the run's saved config (`<workdir>/config.json`), tokenizer and latest checkpoint (EMA parameters) and the
first `num_examples` (source, text) pairs of the eval split; writes `<out>/seq2seq_diagnostics.json` (default out
= the workdir) and, with matplotlib, `seq2seq_denoiser_by_noise.png`.

For each t of an even grid over [0, T): partial noising as in training (the source clean, the target region
noised with one ε), one network call gives ŷ0, rounded to tokens with the run's rule. Per t:
  text_accuracy       share of the target's real tokens (the text and its </s>) that ŷ0 rounds back to;
  pad_accuracy        the same over the pad positions after the text (with learned padding the model writes them;
                      without, they are out of play and score 0);
  x0_mse              mean squared error of ŷ0 against EMB(target) over the target region and channels;
  text_accuracy_other_source   text_accuracy when each target is framed behind *another* example's source (the
                      sources rolled by one), same noise seed;
  source_reliance     text_accuracy - text_accuracy_other_source: what the source is worth to the denoiser at
                      that noise level. Near 0 at every t means the model ignores the source, and its samples
                      are in-domain text unrelated to the meaning representation.
"""
import json
import pathlib
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from ldlg.benchmarks import plots
from ldlg.benchmarks.diagnostics import load_run_config
from ldlg.engine.workdir import Workdir
from ldlg.methods.seq2seq import framing
from ldlg.methods.seq2seq import rounding
from ldlg.methods.seq2seq.losses import partial_q_sample, positions
from ldlg.methods.seq2seq.network import Seq2SeqDenoiser


def _accuracies(method, params, batch: dict[str, np.ndarray], t: int, key: jax.Array,
                rounding_rule: str) -> dict[str, float]:
  """text / pad accuracy and x̂0 MSE of one network call at timestep t on a packed batch (see the docstring)."""
  network = method.network
  ids = jnp.asarray(batch["input_ids"])
  source, real = jnp.asarray(batch["source_mask"]), jnp.asarray(batch["mask"])
  text, pad = real & ~source, ~real
  # As in training: with learned padding every position is in play, else only the real tokens.
  active, target = positions(source, real, method.learn_padding)
  variables = {"params": params}
  x0 = network.apply(variables, ids, method=Seq2SeqDenoiser.embed)
  steps = jnp.full((ids.shape[0],), t, jnp.int32)
  z_t = partial_q_sample(method.schedule, x0, steps, jax.random.normal(key, x0.shape), source, active)
  estimate = network.apply(variables, z_t, steps, active, source)
  tokens = rounding.round_to_tokens(estimate, params["word_embedding"], rounding_rule)
  hit = tokens == ids
  share = lambda where: float(jnp.sum(hit & where) / jnp.maximum(jnp.sum(where), 1))
  mse = float(jnp.sum(jnp.where(target[..., None], jnp.square(estimate - x0), 0.0))
              / (jnp.maximum(jnp.sum(target), 1) * x0.shape[-1]))
  return {"text_accuracy": share(text), "pad_accuracy": share(pad & target), "x0_mse": mse}


def denoiser_by_noise(method, params, pairs: framing.FramedPairs, grid: Sequence[int], *, max_len: int,
                      pad_id: int, rounding_rule: str = "logits", seed: int = 0) -> list[dict[str, float]]:
  """Per timestep of `grid`, the accuracies of the module docstring (own source and a rolled other source).

  Args:
    method: a `DiffuSeq` method; params: its network parameters.
    pairs: framed (source, target) pairs, at least 2 (the other-source row needs another source).
    grid: timesteps in [0, T).
    max_len, pad_id: the run's sequence length and pad id.
    rounding_rule: "logits" or "nearest".
    seed: the noise seed (the same ε per t for both framings).
  """
  if len(pairs) < 2:
    raise ValueError(f"need at least 2 pairs to swap sources, got {len(pairs)}")
  rows = list(range(len(pairs)))
  own = framing.pack(pairs, rows, max_len=max_len, pad_id=pad_id)
  sources = pairs.sources[1:] + pairs.sources[:1]
  # A target behind a longer source may no longer fit: cut it to what is left of max_len.
  targets = [tgt[:max_len - len(src)] for src, tgt in zip(sources, pairs.targets)]
  rolled = framing.FramedPairs(sources=sources, targets=targets, stats=pairs.stats)
  other = framing.pack(rolled, rows, max_len=max_len, pad_id=pad_id)
  out = []
  for t in grid:
    key = jax.random.fold_in(jax.random.PRNGKey(seed), int(t))
    mine = _accuracies(method, params, own, int(t), key, rounding_rule)
    theirs = _accuracies(method, params, other, int(t), key, rounding_rule)
    out.append({"t": int(t), "alpha_bar": float(method.schedule.alphas_cumprod[int(t)]), **mine,
                "text_accuracy_other_source": theirs["text_accuracy"],
                "source_reliance": mine["text_accuracy"] - theirs["text_accuracy"]})
  return out


def _plot(rows: list[dict], out_dir: pathlib.Path) -> list[str]:
  plt = plots.pyplot()
  if plt is None:
    return []
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ts = [r["t"] for r in rows]
  ax.plot(ts, [r["text_accuracy"] for r in rows], "o-", label="text tokens, own source")
  ax.plot(ts, [r["text_accuracy_other_source"] for r in rows], "s--", label="text tokens, another source")
  ax.plot(ts, [r["pad_accuracy"] for r in rows], "^:", label="pad positions")
  ax.set(xlabel="timestep t", ylabel="x̂0 rounds to the token", title="DiffuSeq denoiser by noise level",
         ylim=(0, 1.05))
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_dir / "seq2seq_denoiser_by_noise.png", dpi=120)
  plt.close(fig)
  return ["seq2seq_denoiser_by_noise.png"]


def run_diagnostics(workdir: str | pathlib.Path, data_dir: str | pathlib.Path | None, *, num_examples: int = 128,
                    num_timesteps: int = 10, out_dir: str | pathlib.Path | None = None, seed: int = 0,
                    step: int = -1) -> dict[str, Any]:
  """The diagnostic on a trained DiffuSeq run; writes seq2seq_diagnostics.json (and a PNG) to out_dir.

  Returns:
    {"workdir", "checkpoint_step", "num_examples", "denoiser_by_noise": [...], "plots": [...]}.
  """
  from ldlg.methods.seq2seq import stages  # pylint: disable=import-outside-toplevel
  wd = Workdir(pathlib.Path(workdir).absolute())
  config = load_run_config(wd)
  if config.get("method") != "diffuseq":
    raise ValueError(f"{wd.root} is a {config.get('method')!r} run; this diagnostic reads DiffuSeq runs")
  method, tokenizer, ids = stages.build(config, wd)
  params, meta = stages.load_ema_params(config, wd, method, step)
  pairs = stages.pair_data(config, wd, data_dir, config.data.eval_split, tokenizer, ids)
  n = min(int(num_examples), len(pairs))
  pairs = framing.FramedPairs(sources=pairs.sources[:n], targets=pairs.targets[:n], stats=pairs.stats)
  T = method.schedule.num_timesteps
  grid = np.unique(np.round(np.linspace(0, T - 1, num_timesteps)).astype(int))
  rows = denoiser_by_noise(method, params, pairs, grid, max_len=int(config.model.max_len), pad_id=ids["pad"],
                           rounding_rule=config.sample.rounding, seed=seed)
  result = {"workdir": str(wd.root), "checkpoint_step": int(meta.get("data_position", -1)), "num_examples": n,
            "denoiser_by_noise": rows}
  out = pathlib.Path(out_dir) if out_dir else wd.root
  out.mkdir(parents=True, exist_ok=True)
  result["plots"] = _plot(rows, out)
  (out / "seq2seq_diagnostics.json").write_text(json.dumps(result, indent=2))
  return result


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A trained DiffuSeq run's workdir.")
  flags.DEFINE_string("data_dir", None, "Raw data folder (else $LDLG_DATA_DIR).")
  flags.DEFINE_integer("num_examples", 128, "Eval-split pairs to use.")
  flags.DEFINE_integer("num_timesteps", 10, "Points of the timestep grid.")
  flags.DEFINE_integer("step", -1, "Checkpoint step (-1 = latest).")
  flags.DEFINE_string("out", None, "Output folder (default: the workdir).")
  flags.DEFINE_integer("seed", 0, "Noise seed.")
  flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  result = run_diagnostics(FLAGS.workdir, FLAGS.data_dir, num_examples=FLAGS.num_examples,
                           num_timesteps=FLAGS.num_timesteps, out_dir=FLAGS.out, seed=FLAGS.seed, step=FLAGS.step)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
