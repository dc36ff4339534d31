r"""Likelihood against training steps: every kept checkpoint of token-level runs, scored on the same tokens.

  python -m ldlg.benchmarks.likelihood_curve --workdirs=runs/e2e_ar,runs/e2e_mdlm --data_dir=../shared/data
      [--steps=1000,2000,3000] [--out=runs/likelihood_curve]

For each run (a workdir of the autoregressive baseline or of masked diffusion, made with `--mode=train` or
`--mode=pipeline`) and each of its kept checkpoints (keep them with `--config.train.keep_checkpoints`), the eval
split's negative log-likelihood per token under that checkpoint's weights (`Method.token_nll`): exact for the AR
baseline, the NELBO (an upper bound) for MDLM. So "MDLM's bound is within 1.3x of the AR perplexity" and "is the
gap closing with steps" are read off one table, not two runs of different lengths. Points along one run are
checkpoints under one learning-rate schedule (that of the run's full length), not runs trained to that budget.

Writes `<out>/likelihood_curve.json`:
  {"runs": {name: {"workdir", "method", "tokenizer", "points": [{"step", "nll_per_token", "perplexity",
   "exact"}]}}, "reference": the exact run the others are divided by, "ratios": {name: [{"step",
   "perplexity_ratio"}]} at the steps both have, "same_tokenizer": bool}
and, with matplotlib, `likelihood_curve.png` (perplexity against steps, log scale; bounds dashed). Points already
in the JSON are kept, so re-running after more training scores only the new checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging

from ldlg import methods
from ldlg.benchmarks import plots
from ldlg.benchmarks.diagnostics import load_run_config
from ldlg.engine.workdir import Workdir


def tokenizer_digest(config, workdir: Workdir) -> str:
  """A digest of the run's tokenizer vocabulary: equal digests = the same tokens, so likelihoods compare."""
  from ldlg.codecs import tokens  # pylint: disable=import-outside-toplevel
  tokenizer = tokens.load_tokenizer(config, workdir)
  vocab = sorted(tokenizer.get_vocab().items())
  return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def score_run(workdir: Workdir, data_dir, *, steps: Sequence[int] | None = None,
              done: dict[int, dict] | None = None) -> dict[str, Any]:
  """One run's points: {"workdir", "method", "tokenizer", "points": [...]} (see the module docstring).

  steps: the checkpoint steps to score (None: every kept one); a step with no checkpoint is an error.
  done: points already scored, by step; they are reused, not recomputed.
  """
  config = load_run_config(workdir)
  method = methods.get(config)
  kept = method.checkpoint_steps(config, workdir)
  if not kept:
    raise FileNotFoundError(f"no checkpoint in {workdir.root}: train the run first (--mode=train)")
  wanted = kept if steps is None else list(steps)
  missing = sorted(set(wanted) - set(kept))
  if missing:
    raise ValueError(f"{workdir.root} has no checkpoint for steps {missing}; its kept checkpoints are {kept} "
                     "(train with a larger --config.train.keep_checkpoints to keep more)")
  done = dict(done or {})
  points = []
  for step in sorted(wanted):
    if step not in done:
      result = method.token_nll(config, workdir, data_dir, step)
      done[step] = {"step": int(step), **{k: result[k] for k in ("nll_per_token", "perplexity", "exact")}}
      logging.info("%s @ %d: %s", workdir.root, step, done[step])
    points.append(done[step])
  return {"workdir": str(workdir.root), "method": method.name, "tokenizer": tokenizer_digest(config, workdir),
          "points": points}


def ratios(runs: dict[str, dict], reference: str) -> dict[str, list[dict[str, Any]]]:
  """Each other run's perplexity over the reference run's, at the steps both scored."""
  ref = {p["step"]: p["perplexity"] for p in runs[reference]["points"]}
  return {name: [{"step": p["step"], "perplexity_ratio": p["perplexity"] / ref[p["step"]]}
                 for p in run["points"] if p["step"] in ref]
          for name, run in runs.items() if name != reference}


def pick_reference(runs: dict[str, dict]) -> str | None:
  """The first run whose likelihood is exact (the AR baseline), else None."""
  for name, run in runs.items():
    if run["points"] and run["points"][0]["exact"]:
      return name
  return None


def plot(result: dict, path: pathlib.Path) -> bool:
  plt = plots.pyplot()
  if plt is None:
    return False
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, run in result["runs"].items():
    pts = run["points"]
    exact = pts[0]["exact"] if pts else True
    ax.plot([p["step"] for p in pts], [p["perplexity"] for p in pts], "o-" if exact else "o--",
            label=f"{name} ({run['method']}, {'exact' if exact else 'bound'})")
  ax.set_yscale("log")
  ax.set_xlabel("training step (checkpoint)")
  ax.set_ylabel("eval-split perplexity per token")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def run(workdirs: Sequence[str], data_dir, out: str | pathlib.Path, *, steps: Sequence[int] | None = None
        ) -> dict[str, Any]:
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  json_path = out / "likelihood_curve.json"
  before = json.loads(json_path.read_text())["runs"] if json_path.exists() else {}
  runs = {}
  for path in workdirs:
    wd = Workdir(pathlib.Path(path))
    name = wd.root.name
    if name in runs:
      raise ValueError(f"two runs are named {name!r}: give the workdirs distinct folder names")
    done = {p["step"]: p for p in before.get(name, {}).get("points", [])
            if before[name].get("workdir") == str(wd.root)}
    runs[name] = score_run(wd, data_dir, steps=steps, done=done)
    # Written after each run, so an interrupted benchmark keeps what it scored.
    json_path.write_text(json.dumps({"runs": {**before, **runs}}, indent=2))
  reference = pick_reference(runs)
  result = {"runs": runs, "reference": reference, "ratios": ratios(runs, reference) if reference else {},
            "same_tokenizer": len({r["tokenizer"] for r in runs.values()}) == 1}
  if not result["same_tokenizer"]:
    logging.warning("the runs use different tokenizers: their per-token likelihoods do not compare (share one "
                    "with --config.tokenizer.path)")
  json_path.write_text(json.dumps(result, indent=2))
  plot(result, out / "likelihood_curve.png")
  return result


def _define_flags():
  # Defined only when run as a program: tests import several benchmarks into one process, and absl flags are global.
  flags.DEFINE_list("workdirs", None, "Run folders (AR baseline or MDLM), comma-separated.")
  flags.DEFINE_string("data_dir", None, "Raw data folder (as for ldlg.main); else $LDLG_DATA_DIR.")
  flags.DEFINE_list("steps", None, "Checkpoint steps to score (default: every kept one).")
  flags.DEFINE_string("out", None, "Output folder (default: the first workdir).")


def main(argv):
  del argv
  flags_ = flags.FLAGS
  if not flags_.workdirs:
    raise app.UsageError("--workdirs is required: the run folders to score")
  steps = [int(s) for s in flags_.steps] if flags_.steps else None
  data_dir = flags_.data_dir or os.environ.get("LDLG_DATA_DIR") or None
  result = run(flags_.workdirs, data_dir, flags_.out or flags_.workdirs[0], steps=steps)
  print(json.dumps({"reference": result["reference"], "ratios": result["ratios"],
                    "same_tokenizer": result["same_tokenizer"],
                    "runs": {n: r["points"] for n, r in result["runs"].items()}}, indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
