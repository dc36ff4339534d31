r"""Time to quality: the quality benchmark's rows (LD4LG, LD4LG without self-conditioning, MDLM, the matched GPT-2)
at several training budgets, as curves of MAUVE and judge perplexity against steps and wall time, so that "more
steps would close the gap" is a measured statement with an extrapolated crossing point, not a guess.

  python -m ldlg.benchmarks.time_to_quality --workdir=runs/ttq --data_dir=../shared/data --steps=250,500,1000,2000

Each budget s is a complete quality-benchmark run (`ldlg.benchmarks.quality.run_dataset`) in `<workdir>/steps_<s>/`
whose every model trains for s steps with its learning-rate schedule fitted to s (the question a user asks: what
does a budget of s buy), so the points are independent runs, not checkpoints of one run. What does not depend on
s is shared: the autoencoder, its BPE and the latents (trained once, in the first budget's folder, at the preset's
`ae_steps`) and the perplexity judge (one GPT-2 trained for `--judge_steps`, default the largest budget, in
`<workdir>/<dataset>/judge`), so every point is scored by the same judge against the same reference.

Wall time per row: its training time at that budget (the GPT-2 baseline is capped at LD4LG's, as in the quality
benchmark); `codec_seconds` is the one-off autoencoder pretraining and latent precompute that LD4LG pays on top
(MDLM and the GPT-2 read the same BPE, whose training is part of it and takes seconds).

Writes `<workdir>/time_to_quality.json` ({"curves": {row: [{"steps", "train_seconds", "mauve", "perplexity", ...}]},
"controls", "codec_seconds", "crossings"}) and `time_to_quality.png`. `crossings` extrapolates each diffusion row
and the GPT-2 row as straight lines in log(steps) through their last three points and reports where they meet:
an extrapolation, labelled as such, only as good as the trend it extends. Every budget resumes like the quality
benchmark: re-running the command skips what is done, so a curve can be grown a budget at a time.

A quality-benchmark run you already have can be one of the points: `--from_quality=runs/quality` links that run's
folder as the budget of its own steps (read from its LD4LG config), and the other budgets share its autoencoder,
BPE and latents and are scored by its perplexity judge (so the judge's steps are that run's, not the largest
budget's). Only the budgets missing from it are trained.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import numpy as np

from ldlg.benchmarks import plots
from ldlg import pipeline
from ldlg.benchmarks import quality
from ldlg.engine.workdir import Workdir

# The quality benchmark's rows that train, and the key of each one's training time in its wall_seconds.
TRAINED_ROWS = {"LD4LG": "ld4lg_train", "LD4LG w/o self-cond": "ld4lg_no_self_cond_train", "MDLM": "mdlm_train",
                "GPT-2 baseline": "ar_baseline_train"}
CONTROL_ROWS = ("human (train)", "human word-shuffled")
METRICS = ("mauve", "perplexity", "diversity", "memorization", "class_accuracy")
BASELINE = "GPT-2 baseline"


def budget_dir(root: pathlib.Path, steps: int) -> pathlib.Path:
  return root / f"steps_{steps}"


def curves(results_by_steps: dict[int, dict]) -> dict[str, list[dict[str, Any]]]:
  """One quality-benchmark result per budget -> per trained row, its points in increasing steps:
  {"steps", "train_seconds", and each metric's {"mean", "std"} where it was measured}."""
  out: dict[str, list[dict[str, Any]]] = {}
  for steps in sorted(results_by_steps):
    res = results_by_steps[steps]
    for row, time_key in TRAINED_ROWS.items():
      if row not in res.get("rows", {}):
        continue
      metrics = res["rows"][row]
      point = {"steps": int(steps), "train_seconds": res["wall_seconds"].get(time_key)}
      point.update({m: {"mean": metrics[m]["mean"], "std": metrics[m]["std"]} for m in METRICS if m in metrics})
      out.setdefault(row, []).append(point)
  return out


def extrapolated_crossing(a: Sequence[dict], b: Sequence[dict], metric: str, *, last: int = 3) -> dict[str, Any]:
  """Where curve a's metric mean meets curve b's.

  Measured first: if a - b changes sign between the first budget both have and a later one, the lines crossed
  there. Otherwise each curve is a straight line in log(steps) through its last `last` points, and the lines meet
  ahead of the last budget, or do not.

  Returns:
    {"status": "crossed" ("steps": the first measured budget past the crossing), "ahead_of_range" ("steps": the
     extrapolated meeting point, and both lines' slopes per unit log(steps)), "not_converging" (the fitted lines
     meet, if at all, at or before the last budget: they are moving apart), or "too_few_points"}.
  """
  pa = {p["steps"]: p[metric]["mean"] for p in a if metric in p}
  pb = {p["steps"]: p[metric]["mean"] for p in b if metric in p}
  if len(pa) < 2 or len(pb) < 2:
    return {"status": "too_few_points", "steps": None}
  common = sorted(set(pa) & set(pb))
  signs = [np.sign(pa[s] - pb[s]) for s in common]
  for s, sign in zip(common, signs):
    if signs[0] != 0 and sign == -signs[0]:
      return {"status": "crossed", "steps": int(s)}
  fits = []
  for points in (pa, pb):
    xs = sorted(points)[-last:]
    fits.append(np.polyfit(np.log(xs), [points[x] for x in xs], 1))
  (slope_a, icpt_a), (slope_b, icpt_b) = fits
  last_x = np.log(max(max(pa), max(pb)))
  if np.isclose(slope_a, slope_b):
    return {"status": "not_converging", "steps": None}
  x = (icpt_b - icpt_a) / (slope_a - slope_b)
  if x <= last_x:
    return {"status": "not_converging", "steps": None}
  return {"status": "ahead_of_range", "steps": float(np.exp(x)),
          "slopes_per_log_step": {"a": float(slope_a), "b": float(slope_b)}}


def crossings(curve_set: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
  """Every diffusion row against the GPT-2 baseline, on MAUVE and on judge perplexity."""
  if BASELINE not in curve_set:
    return {}
  return {f"{row} vs {BASELINE}": {m: extrapolated_crossing(points, curve_set[BASELINE], m)
                                    for m in ("mauve", "perplexity")}
          for row, points in curve_set.items() if row != BASELINE}


def plot(report: dict, out_dir: pathlib.Path, filename: str = "time_to_quality.png") -> list[str]:
  """<filename>: MAUVE and judge perplexity against steps and against training wall time, from `report`'s
  "curves" and "controls" (the recipe benchmark draws its own budget series with it); [] without matplotlib."""
  plt = plots.pyplot()
  if plt is None:
    return []
  panels = [("mauve", "steps"), ("perplexity", "steps"), ("mauve", "train_seconds"), ("perplexity", "train_seconds")]
  fig, axes = plt.subplots(2, 2, figsize=(9, 7))
  for ax, (metric, x_key) in zip(axes.ravel(), panels):
    for row, points in report["curves"].items():
      # In x order: on loaded cores a larger budget can take less wall time than a smaller one.
      pts = sorted((p for p in points if metric in p and p.get(x_key)), key=lambda p: p[x_key])
      if pts:
        ax.errorbar([p[x_key] for p in pts], [p[metric]["mean"] for p in pts],
                    yerr=[p[metric]["std"] for p in pts], fmt="o-", capsize=3, markersize=4, label=row)
    for name, control in report["controls"].items():
      if metric in control:
        ax.axhline(control[metric]["mean"], linestyle="--", linewidth=1, color="gray" if "shuffled" not in name
                   else "silver", label=name)
    ax.set(xscale="log", xlabel="training steps" if x_key == "steps" else "training wall time (s)",
           title="MAUVE (MiniLM) ↑" if metric == "mauve" else "judge perplexity ↓")
    if metric == "perplexity":
      ax.set_yscale("log")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(f"Time to quality on {report['dataset']} ({report['preset']} preset; error bars: std over draws)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(out_dir / filename, dpi=120)
  plt.close(fig)
  return [filename]


def adopt_quality_run(root: pathlib.Path, quality_root: str | pathlib.Path, dataset: str,
                      preset: dict) -> tuple[int, pathlib.Path, int]:
  """Links a quality-benchmark run into this curve as the budget of its own training steps.

  What the other budgets take from it must be finished (the autoencoder and latents, the judge); its own rows are
  finished by this run's pass over its budget if they are not yet (the quality benchmark resumes).

  Returns:
    (its steps, its folder (absolute; its LD4LG codec and `ar_judge` serve every budget), the judge's steps).
  """
  src = pathlib.Path(quality_root).absolute()
  ld4lg, judge_dir = src / dataset / "ld4lg", src / dataset / "ar_judge"
  missing = [str(p) for p in (ld4lg / "config.json", judge_dir / "ar_result.json") if not p.exists()]
  if not missing and not pipeline.stage_done("precompute", quality.dataset_config(dataset, preset, self_condition=True),
                                             Workdir(ld4lg)):
    missing.append(f"{ld4lg}'s latents (the precompute stage)")
  if missing:
    raise FileNotFoundError(f"--from_quality={quality_root} is not a finished quality-benchmark run of {dataset} "
                            f"(its codec and judge are what the other budgets share): missing {missing}. Run "
                            f"`python -m ldlg.benchmarks.quality --workdir={quality_root} --datasets={dataset}` "
                            "first, or leave --from_quality out.")
  steps = int(json.loads((ld4lg / "config.json").read_text())["train"]["num_steps"])
  judge_steps = int(json.loads((judge_dir / "ar_result.json").read_text())["max_steps"])
  link = budget_dir(root, steps)
  if link.is_symlink() and link.resolve() != src.resolve():
    raise ValueError(f"{link} already links to {link.resolve()}, not to {src}; use another --workdir.")
  if not link.exists():
    root.mkdir(parents=True, exist_ok=True)
    os.symlink(src, link)
  elif not link.is_symlink():
    raise ValueError(f"{link} already holds a trained budget of {steps} steps; it cannot also be {src}. "
                     "Use another --workdir, or leave --from_quality out.")
  return steps, src, judge_steps


def run(root: str | pathlib.Path, *, data_dir, dataset: str = "sst", preset_name: str = "cpu",
        steps: Sequence[int] = (250, 500, 1000, 1500), judge_steps: int | None = None,
        from_quality: str | pathlib.Path | None = None) -> dict[str, Any]:
  """Every budget of the curve (see the module docstring); returns the report written to time_to_quality.json."""
  steps = sorted({int(s) for s in steps})
  if not steps or steps[0] < 1:
    raise ValueError(f"steps must be positive training budgets, got {list(steps)}")
  root = pathlib.Path(root).absolute()
  preset = quality.PRESETS[preset_name]
  if from_quality:
    if judge_steps:
      raise ValueError("--judge_steps cannot be set with --from_quality: the adopted run's judge scores every budget.")
    adopted, src, judge_steps = adopt_quality_run(root, from_quality, dataset, preset)
    steps = sorted(set(steps) | {adopted})
    judge_dir = src / dataset / "ar_judge"
  else:
    adopted, judge_dir, judge_steps = steps[0], root / dataset / "judge", judge_steps or steps[-1]
  # The adopted run by its own path, not the link: its saved configs hold paths under it (the MDLM row's
  # tokenizer is the LD4LG run's), which the link's spelling would contradict.
  budget_roots = {s: budget_dir(root, s) for s in steps}
  if from_quality:
    budget_roots[adopted] = src
  codec = Workdir(budget_roots[adopted] / dataset / "ld4lg")
  results = {}
  for s in steps:
    t0 = time.perf_counter()
    results[s] = quality.run_dataset(dataset, budget_roots[s], data_dir, dict(preset, steps=s),
                                     shared_codec=None if s == adopted else codec, judge_dir=judge_dir,
                                     judge_steps=judge_steps)
    print(json.dumps({"steps": s, "minutes": (time.perf_counter() - t0) / 60}), flush=True)
  curve_set = curves(results)
  base = results[adopted]
  report = {"dataset": dataset, "preset": preset_name, "steps": steps, "judge_steps": judge_steps,
            "codec_seconds": sum(base["wall_seconds"].get(k, 0.0) for k in ("pretrain_autoencoder", "precompute")),
            "params": base.get("params"), "curves": curve_set,
            "controls": {name: {m: base["rows"][name][m] for m in METRICS if m in base["rows"][name]}
                         for name in CONTROL_ROWS if name in base["rows"]},
            "crossings": crossings(curve_set)}
  if "classifier_accuracy_on_real_validation" in base:
    report["classifier_accuracy_on_real_validation"] = base["classifier_accuracy_on_real_validation"]
  (root / "time_to_quality.json").write_text(json.dumps(report, indent=2))
  report["plots"] = plot(report, root)
  return report


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("workdir", "runs/time_to_quality", "Where every budget's runs go.")
  flags.DEFINE_string("data_dir", None, "Raw data folder (<dataset>/...); else $LDLG_DATA_DIR.")
  flags.DEFINE_string("dataset", "sst", "The dataset (a configs/<name>.py with :cpu and :mdlm_cpu).")
  flags.DEFINE_enum("preset", "cpu", list(quality.PRESETS), "The quality benchmark's preset (sizes, samples, "
                    "draws); its steps are replaced by --steps.")
  flags.DEFINE_list("steps", ["250", "500", "1000", "1500"], "Training budgets (steps of every model).")
  flags.DEFINE_integer("judge_steps", 0, "The judge's training steps (0: the largest budget).")
  flags.DEFINE_string("from_quality", None, "A finished quality-benchmark workdir to adopt as the budget of its "
                      "steps; the other budgets share its autoencoder and judge.")


def main(argv):
  del argv
  report = run(FLAGS.workdir, data_dir=FLAGS.data_dir or os.environ.get("LDLG_DATA_DIR"), dataset=FLAGS.dataset,
               preset_name=FLAGS.preset, steps=[int(s) for s in FLAGS.steps], judge_steps=FLAGS.judge_steps or None,
               from_quality=FLAGS.from_quality)
  print(json.dumps({k: v for k, v in report.items() if k != "params"}, indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
