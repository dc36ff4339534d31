r"""Quality against speed of the Gaussian samplers on a trained run: judge perplexity, MAUVE and samples/s at each
number of network evaluations (NFE), printed as JSON and drawn as a PNG.

  python -m ldlg.benchmarks.sampler_nfe --config=configs/e2e.py:cpu --workdir=runs/e2e_cpu \
      --data_dir=../shared/data --judge=runs/e2e_ar/ar_model --out=runs/e2e_cpu/sampler_nfe

For every sampler (`--samplers`) and NFE (`--nfe`) it samples `--num_draws` x `--draw_size` texts from the run's
EMA parameters with the run's own decoding (length histogram, beam search), and scores them with the evaluate
stage's protocol (`evaluate.evaluate_draws`: MAUVE on MiniLM features against the eval split, perplexity under
`--judge`, diversity, memorization; mean ± std over the draws). Every point uses the same seed, so the samplers
start from the same lengths; the draws of one point are independent sample sets, so their std is the
run-to-run noise of that setting.

Speed is the latent sampler's alone (what the NFE changes; the decode costs the same at every NFE): one batch of
`config.sample.batch_size` masks, compiled ahead of time, then `--repeats` timed calls; `latent_samples_per_s` is
the batch over the median call. `text_seconds` is the wall time of sampling and decoding the point's texts (compilation
included), for scale. `retraces` counts network traces after the first call of the timed sampler (0 = one compiled
program per point).

NFE per sampler: DDIM, DPM-Solver++(2M) in either form and Euler–Maruyama make one network call per step;
predictor–corrector makes (1 + corrector steps) per grid time, so its NFE must be a multiple of that (others are
skipped, with a warning); the adaptive ODE solver (`ode_adaptive`) picks its own steps: it is one point per
`--ode_tolerances` entry, at the NFE it measured (diffrax's count, mean over the batch).

Output (`--out` folder): `rows.jsonl` (one line per finished point, reused when the command is re-run with the
same settings, `run_settings`: the sampling fields a point does not set, such as eta, included; so an interrupted
benchmark loses at most one point; the report shows every finished point of
these settings, so later runs with other samplers or NFEs add to it), `sampler_nfe.json` (every row, plus the
comparison of DPM-Solver++ at `--fast_nfe` with DDIM at `--reference_nfe`, for the ODE form and the SDE form
(`comparisons`), and a control: as many human training
sentences scored the same way), and `sampler_nfe.png`.
"""

from __future__ import annotations

import copy
import functools
import json
import pathlib
import statistics
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from ldlg.benchmarks import plots
from ldlg.benchmarks import roofline
from ldlg.engine.workdir import Workdir
from ldlg.methods.gaussian import samplers as samplers_lib

SAMPLERS = ("ddim",) + tuple(samplers_lib.CONTINUOUS_SAMPLERS)
DEFAULT_SAMPLERS = ("ddim", "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde", "sde_euler", "pc", "ode_adaptive")
FAST_SAMPLERS = ("dpm_solver_pp_2m", "dpm_solver_pp_2m_sde")  # each compared at --fast_nfe with DDIM at --reference_nfe


def plan(samplers: Sequence[str], nfes: Sequence[int], *, corrector_steps: int = 1,
         ode_tolerances: Sequence[float] = (1e-3,)) -> list[dict[str, Any]]:
  """The benchmark's points: [{"sampler", "num_steps", "nfe" (None: measured), "tolerance" (ode only)}], for
  each NFE in the given order every sampler, then the adaptive ODE's.

  Raises:
    ValueError: an unknown sampler, or an NFE < 1.
  """
  for name in samplers:
    if name not in SAMPLERS:
      raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLERS}")
  if any(nfe < 1 for nfe in nfes):
    raise ValueError(f"NFE must be >= 1, got {list(nfes)}")
  # NFE-major, in the order given: a benchmark cut short has every sampler at the first NFEs.
  points = []
  for nfe in nfes:
    for name in samplers:
      if name == "ode_adaptive":
        continue
      per_step = 1 + corrector_steps if name == "pc" else 1
      if nfe % per_step:
        logging.warning("skipping pc at NFE %d: not a multiple of 1 + %d corrector steps", nfe, corrector_steps)
        continue
      points.append({"sampler": name, "num_steps": nfe // per_step, "nfe": nfe, "tolerance": None})
  if "ode_adaptive" in samplers:  # It picks its own NFE: one point per tolerance, last.
    points += [{"sampler": "ode_adaptive", "num_steps": 0, "nfe": None, "tolerance": float(tol)}
               for tol in ode_tolerances]
  return points


def point_config(config: ml_collections.ConfigDict, point: dict, *, corrector_steps: int,
                 num_samples: int) -> ml_collections.ConfigDict:
  """The run's config with `config.sample` set to the point's sampler, steps and number of samples."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.sample.update(sampler=point["sampler"], num_steps=max(1, point["num_steps"]), num_samples=num_samples)
    if point["sampler"] == "pc":
      config.sample.corrector_steps = corrector_steps
    if point["sampler"] == "ode_adaptive":
      config.sample.ode_rtol = config.sample.ode_atol = point["tolerance"]
  return config


def time_latent_sampler(method, config: ml_collections.ConfigDict, params, mask: np.ndarray, *,
                        repeats: int, seed: int = 0) -> dict[str, Any]:
  """Compiles the point's latent sampler for one batch of masks (ahead of time: the compile runs nothing), then
  times `repeats` calls.

  Returns:
    {"compile_s" (trace + XLA compile), "seconds_per_batch" (median), "latent_samples_per_s", "measured_nfe"
     (network calls per example of the last call), "retraces" (network traces in the timed calls: 0 = the one
     compiled program was reused)}.
  """
  counter = roofline.TraceCounter()
  sample = samplers_lib.sampler_from_config(counter.wrap(method.denoise_fn), method.schedule, config.sample,
                                            config.diffusion, num_classes=method.num_classes, with_nfe=True)
  sample = jax.jit(functools.partial(sample, latent_dim=method.latent_dim))
  class_id = None
  if method.num_classes > 0:
    class_id = jnp.asarray(np.arange(len(mask)) % method.num_classes, jnp.int32)
  args = (params, jax.random.PRNGKey(seed), jnp.asarray(mask), class_id)
  t0 = time.perf_counter()
  sample.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  traced = counter.count
  call = lambda: jax.block_until_ready(sample(*args))
  seconds = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    _, nfe = call()
    seconds.append(time.perf_counter() - t0)
  median = statistics.median(seconds)
  return {"compile_s": compile_s, "seconds_per_batch": median, "latent_samples_per_s": len(mask) / median,
          "measured_nfe": float(np.mean(np.asarray(nfe))), "retraces": counter.count - traced}


# The config.sample fields a point does not set itself but that change its samples: part of every row's key, so a
# folder never mixes rows sampled with, say, eta = 0 and eta = 1.
SAMPLE_FIELDS = ("eta", "guidance_scale", "spacing", "corrector_snr", "clip_x0", "length_bucket", "max_redraws")


def run_settings(config: ml_collections.ConfigDict, *, checkpoint_step: int, num_draws: int, draw_size: int,
                 seed: int, judge: str, featurizer: str) -> dict[str, Any]:
  """What, besides the point, decides a row: a finished row is reused only when all of it is equal."""
  sample = {field: config.sample.get(field, None) for field in SAMPLE_FIELDS}
  return {"checkpoint_step": checkpoint_step, "num_draws": num_draws, "draw_size": draw_size, "seed": seed,
          "judge": judge, "featurizer": featurizer, "sample": sample}


def _settings_key(point: dict, settings: dict) -> str:
  return json.dumps({"point": point, **settings}, sort_keys=True)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, data_dir: str | None,
        judge: str = "", samplers: Sequence[str] = DEFAULT_SAMPLERS, nfes: Sequence[int] = (10, 25, 50, 100, 250),
        num_draws: int = 3, draw_size: int = 100, repeats: int = 1, corrector_steps: int = 1,
        ode_tolerances: Sequence[float] = (1e-3,), seed: int = 0, out_dir: str | pathlib.Path | None = None,
        reference_nfe: int = 250, fast_nfe: int = 25, featurizer: str = "minilm") -> dict[str, Any]:
  """Every point of the benchmark (see the module docstring); returns the report written to sampler_nfe.json."""
  from ldlg.data.splits import load_texts
  from ldlg.evaluation import evaluate as evaluate_lib
  from ldlg.evaluation import featurizers
  from ldlg.evaluation import ngram_metrics
  from ldlg.evaluation import perplexity
  from ldlg.methods.gaussian import text_sampler as text_sampler_lib
  wd = Workdir(pathlib.Path(workdir))
  out = pathlib.Path(out_dir) if out_dir else wd.root / "sampler_nfe"
  out.mkdir(parents=True, exist_ok=True)
  if num_draws < 1 or draw_size < 1:
    raise ValueError(f"need num_draws >= 1 and draw_size >= 1, got {num_draws} and {draw_size}")
  points = plan(samplers, nfes, corrector_steps=corrector_steps, ode_tolerances=ode_tolerances)
  meta = text_sampler_lib.read_sampling_meta(wd)
  base = text_sampler_lib.TextSampler.from_meta(config, wd, meta)
  params = base.load_params()
  step = int(meta["data_position"])
  reference = [r["text"] for r in load_texts(config, data_dir, wd, config.data.eval_split)]
  reference = reference[:config.eval.max_reference]
  train_texts = [r["text"] for r in load_texts(config, data_dir, wd, config.data.train_split)]
  feats = featurizers.get_featurizer(featurizer)
  # Scored against every point: featurized once, and the training 4-grams built once.
  score = functools.partial(evaluate_lib.evaluate_draws, reference=reference, featurizer=feats,
                            train_texts=ngram_metrics.training_ngrams(train_texts),
                            reference_features=feats(reference), num_draws=num_draws, seed=seed)
  judge_lm = perplexity.load_causal_lm(judge) if judge else None
  score = functools.partial(score, ppl_model=judge_lm)
  settings = run_settings(config, checkpoint_step=step, num_draws=num_draws, draw_size=draw_size, seed=seed,
                          judge=judge, featurizer=feats.name)
  rows_file = out / "rows.jsonl"
  done = {}
  if rows_file.exists():
    for line in rows_file.read_text(encoding="utf-8").splitlines():
      row = json.loads(line)
      done[row["key"]] = row
  # One batch of lengths for every point's timing, drawn as the sampler draws them.
  timing_mask = base.make_inputs(np.random.default_rng(seed), config.sample.batch_size, None)[0]["mask"]
  rows = []
  for i, point in enumerate(points):
    key = _settings_key(point, settings)
    if key in done:
      rows.append(done[key])
      logging.info("point %d/%d (%s) already in %s", i + 1, len(points), point, rows_file)
      continue
    cfg = point_config(config, point, corrector_steps=corrector_steps, num_samples=num_draws * draw_size)
    speed = time_latent_sampler(base.method, cfg, params, timing_mask, repeats=repeats, seed=seed)
    sampler = text_sampler_lib.TextSampler.from_meta(cfg, wd, meta, codec=base.codec)
    t0 = time.perf_counter()
    records = sampler.sample(params, num_samples=num_draws * draw_size, seed=seed, progress=True)
    text_seconds = time.perf_counter() - t0
    texts = [r["text"] for r in records]
    metrics = score(texts)
    row = {"key": key, **point, "nfe": point["nfe"] if point["nfe"] is not None else speed["measured_nfe"],
           **speed, "text_seconds": text_seconds, "examples": texts[:3],
           **{k: metrics[k] for k in ("mauve", "perplexity", "diversity", "memorization") if k in metrics}}
    rows.append(row)
    with rows_file.open("a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k not in ("key", "examples")}), flush=True)
  # Points finished by earlier runs into the same folder with the same settings (other samplers or NFEs) are
  # reported too, so a benchmark can be grown a few points at a time.
  for key, row in done.items():
    earlier = json.loads(key)
    if earlier.pop("point") not in points and earlier == settings:
      rows.append(row)
  rows.sort(key=lambda r: (SAMPLERS.index(r["sampler"]), r["nfe"]))
  # The control: as many human training sentences, scored the same way (the ceiling MAUVE and judge perplexity).
  human = [train_texts[i] for i in np.random.default_rng(seed).choice(
      len(train_texts), size=min(len(train_texts), num_draws * draw_size), replace=False)]
  control = score(human)
  report = {"device": jax.devices()[0].device_kind, "workdir": str(wd.root), "batch_size": len(timing_mask),
            **settings, "rows": [{k: v for k, v in r.items() if k != "key"} for r in rows],
            "human_train_text": {k: control[k] for k in ("mauve", "perplexity", "diversity") if k in control},
            "comparison": compare(rows, reference_nfe=reference_nfe, fast_nfe=fast_nfe),
            "comparisons": {name: compare(rows, reference_nfe=reference_nfe, fast_nfe=fast_nfe, fast_sampler=name)
                            for name in FAST_SAMPLERS}}
  evaluate_lib.save_metrics(report, out / "sampler_nfe.json")
  report["plots"] = plot(report, out)
  return report


def compare(rows: Sequence[dict], *, reference_nfe: int = 250, fast_nfe: int = 25,
            fast_sampler: str = "dpm_solver_pp_2m") -> dict[str, Any] | None:
  """`fast_sampler` (a DPM-Solver++ form) at `fast_nfe` against DDIM at `reference_nfe`: the difference of each
  metric's mean and DDIM's run-to-run noise (the std over its draws). `within_noise`: |difference| <= that std.
  None when a row is missing.
  """
  find = lambda name, nfe: next((r for r in rows if r["sampler"] == name and r["nfe"] == nfe), None)
  ref, fast = find("ddim", reference_nfe), find(fast_sampler, fast_nfe)
  if ref is None or fast is None:
    return None
  result = {"reference": f"ddim@{reference_nfe}", "fast": f"{fast_sampler}@{fast_nfe}",
            "speedup_latent_sampler": fast["latent_samples_per_s"] / ref["latent_samples_per_s"]}
  for metric in ("mauve", "perplexity", "diversity"):
    if ref.get(metric) and fast.get(metric):
      delta = fast[metric]["mean"] - ref[metric]["mean"]
      result[metric] = {"reference": ref[metric]["mean"], "fast": fast[metric]["mean"], "difference": delta,
                        "reference_noise_std": ref[metric]["std"],
                        "within_noise": bool(abs(delta) <= ref[metric]["std"])}
  return result


def plot(report: dict, out_dir: pathlib.Path) -> list[str]:
  """sampler_nfe.png: MAUVE, judge perplexity and latent samples/s against NFE; [] without matplotlib."""
  plt = plots.pyplot()
  if plt is None:
    return []
  rows = report["rows"]
  panels = [("mauve", "MAUVE (MiniLM) ↑"), ("perplexity", "judge perplexity ↓"),
            ("latent_samples_per_s", "latent samples/s ↑")]
  panels = [(k, label) for k, label in panels if any(r.get(k) for r in rows)]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
  axes = np.atleast_1d(axes)
  for ax, (key, label) in zip(axes, panels):
    for name in dict.fromkeys(r["sampler"] for r in rows):
      mine = sorted((r for r in rows if r["sampler"] == name and r.get(key)), key=lambda r: r["nfe"])
      if not mine:
        continue
      x = [r["nfe"] for r in mine]
      if isinstance(mine[0][key], dict):
        y, err = [r[key]["mean"] for r in mine], [r[key]["std"] for r in mine]
      else:
        y, err = [r[key] for r in mine], None
      style = "D" if name == "ode_adaptive" else "o-"
      ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=name, markersize=4)
    human = report.get("human_train_text", {}).get(key)
    if human:
      ax.axhline(human["mean"], color="gray", linestyle="--", linewidth=1, label="human train text")
    ax.set(xscale="log", xlabel="network evaluations (NFE)", title=label)
    if key == "perplexity":
      ax.set_yscale("log")
  axes[0].legend(fontsize=7)
  fig.suptitle(f"Samplers on {pathlib.Path(report['workdir']).name} (step {report['checkpoint_step']}; "
               f"{report['num_draws']} x {report['draw_size']} samples per point; error bars: std over draws)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(out_dir / "sampler_nfe.png", dpi=120)
  plt.close(fig)
  return ["sampler_nfe.png"]


def _define_flags():
  config_flags.DEFINE_config_file("config", "configs/e2e.py:cpu", "The trained run's config (a Gaussian method).")
  flags.DEFINE_string("workdir", None, "The trained run (checkpoint + autoencoder).", required=True)
  flags.DEFINE_string("data_dir", None, "Raw data folder (<dataset>/...); else $LDLG_DATA_DIR.")
  flags.DEFINE_string("judge", "", "Perplexity judge: a causal LM folder (e.g. an AR run's ar_model/) or hub "
                      "name; empty: no perplexity.")
  flags.DEFINE_list("samplers", list(DEFAULT_SAMPLERS), f"Samplers, from {SAMPLERS}.")
  flags.DEFINE_list("nfe", ["10", "25", "50", "100", "250"], "Numbers of network evaluations.")
  flags.DEFINE_integer("num_draws", 3, "Sample sets per point (metrics: mean ± std over them).")
  flags.DEFINE_integer("draw_size", 100, "Samples per set.")
  flags.DEFINE_integer("repeats", 1, "Timed calls of the latent sampler per point.")
  flags.DEFINE_integer("corrector_steps", 1, "Langevin corrector steps per grid time of the pc sampler.")
  flags.DEFINE_list("ode_tolerances", ["1e-3"], "rtol = atol of the adaptive ODE sampler, one point each.")
  flags.DEFINE_integer("reference_nfe", 250, "DDIM's NFE in the comparison.")
  flags.DEFINE_integer("fast_nfe", 25, "DPM-Solver++'s NFE in the comparison.")
  flags.DEFINE_integer("seed", 0, "Sampling seed (the same for every point).")
  flags.DEFINE_string("out", "", "Output folder; default <workdir>/sampler_nfe.")


def main(argv):
  del argv
  f = flags.FLAGS
  method = f.config.get("method", "gaussian")
  if method != "gaussian":
    raise app.UsageError(f"--config must be a Gaussian (LD4LG) config, got method {method!r}; e.g. configs/e2e.py:cpu")
  report = run(f.config, f.workdir, data_dir=f.data_dir, judge=f.judge, samplers=f.samplers,
               nfes=[int(n) for n in f.nfe], num_draws=f.num_draws, draw_size=f.draw_size, repeats=f.repeats,
               corrector_steps=f.corrector_steps, ode_tolerances=[float(t) for t in f.ode_tolerances],
               seed=f.seed, out_dir=f.out or None, reference_nfe=f.reference_nfe, fast_nfe=f.fast_nfe)
  print(json.dumps({"comparisons": report["comparisons"], "plots": report["plots"]}, indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
