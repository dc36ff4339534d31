r"""The offline quality benchmark: train and evaluate LD4LG, its no-self-conditioning ablation and an AR
baseline end to end, with control rows, and print one table.

  python -m ldlg.benchmarks.quality --workdir=runs/quality --data_dir=../shared/data            # ~1 h, 2 CPU cores
  python -m ldlg.benchmarks.quality --workdir=runs/quality_gpu --data_dir=... --preset=gpu        # accelerator

Per dataset (default: SST; reference for MAUVE = its validation split, never the withheld test split):
  * our own tokenizer + BART autoencoder (reconstruction: exact match and BLEU on held-out sentences);
  * LD4LG with self-conditioning, LD4LG without (the paper's ablation), both class-conditional on SST and
    sampled with balanced classes (class accuracy of a MiniLM logistic-regression probe on the samples);
  * MDLM (masked discrete diffusion, `:mdlm_cpu`) on the same BPE tokens, same steps and sampler steps;
  * a GPT-2 baseline of matched parameter count, same steps and at most the same training wall time;
  * control rows scored by the same code: human training text, and the same text word-shuffled.
Metrics (ldlg/evaluation/evaluate.py): MAUVE on MiniLM features, perplexity under an AR judge (a second
GPT-2 trained on the training split with another seed), diversity, memorization, unique tokens: mean ± std over
`num_draws` sample sets. Every stage resumes: re-running the command skips what is done.
`--reuse_autoencoder=<dataset>=<workdir>` reuses a finished pipeline workdir's autoencoder reconstruction row
(e.g. the README main job's E2E run) instead of training one.
"""

import copy
import json
import os
import pathlib
import time

from absl import app
from absl import flags
import ml_collections
import numpy as np

from ldlg import pipeline
from ldlg.data import splits
from ldlg.engine.workdir import Workdir

PRESETS = {
    # steps: every model's training steps; num_draws x draw_size samples per row.
    "cpu": dict(ae_steps=1500, steps=1500, num_draws=5, draw_size=200, sample_steps=250),
    "gpu": dict(ae_steps=20000, steps=50000, num_draws=5, draw_size=1000, sample_steps=250),
    "smoke": dict(ae_steps=20, steps=10, num_draws=2, draw_size=4, sample_steps=10, max_examples=300),
}


def _preset_config(dataset: str, variant: str, preset: dict) -> ml_collections.ConfigDict:
  """`configs/<dataset>.py:<variant>` with the preset's steps, samples, draws and sizes (every trained row)."""
  import importlib
  config = importlib.import_module(f"configs.{dataset}").get_config(variant)
  config.train.num_steps = preset["steps"]
  config.sample.update(num_samples=preset["num_draws"] * preset["draw_size"], num_steps=preset["sample_steps"])
  config.eval.update(num_draws=preset["num_draws"], featurizer="minilm")
  config.data.max_examples = preset.get("max_examples", 0)
  if preset is PRESETS["gpu"]:
    config.model.update(dim=768, num_layers=12, num_heads=12)
  return config


def dataset_config(dataset: str, preset: dict, *, self_condition: bool) -> ml_collections.ConfigDict:
  config = _preset_config(dataset, "cpu", preset)
  config.autoencoder.num_steps = preset["ae_steps"]
  config.train.sample_every = 0
  if not self_condition:
    config.diffusion.self_condition_prob = 0.0
  return config


def mdlm_config(dataset: str, preset: dict, tokenizer_path: pathlib.Path) -> ml_collections.ConfigDict:
  """MDLM (`:mdlm_cpu`, sized like the `:cpu` denoiser) on the LD4LG run's BPE, so its tokens are the GPT-2
  baseline's; same steps and sampler steps as the LD4LG rows."""
  config = _preset_config(dataset, "mdlm_cpu", preset)
  config.tokenizer.path = str(tokenizer_path)
  return config


def _link_shared_stages(src: Workdir, dst: Workdir) -> None:
  """The ablation (and other budgets' runs) share the autoencoder, datasets and latents of the main run (they do
  not depend on it)."""
  dst.root.mkdir(parents=True, exist_ok=True)
  for name in ("autoencoder", "tfds", "latents"):
    if not (dst.root / name).exists():
      os.symlink(src.root / name, dst.root / name)


def _read_json(path: pathlib.Path):
  return json.loads(path.read_text())


def _reconstruction_row(wd: Workdir) -> dict:
  rec = _read_json(wd.autoencoder_dir / "reconstruction.json")["valid"]
  paper = next(v for k, v in rec.items() if k.startswith("beam"))
  return {"exact_match": paper["exact_match"], "bleu": paper["bleu"], "num_sentences": paper["num_sentences"]}


def _timed(fn, *args, **kwargs):
  t0 = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - t0


# The perplexity judge: a GPT-2 of the baseline's size trained with another seed than the baseline (0).
JUDGE_SEED = 1


def matched_ar_config(config: ml_collections.ConfigDict, tokenizer) -> tuple[ml_collections.ConfigDict, int, int]:
  """The AR baseline's (and judge's) config: a GPT-2 within 10 % of the LD4LG denoiser's parameter count, on the
  run's BPE. Returns (its config, its parameter count, the denoiser's)."""
  import jax
  from ldlg.methods.autoregressive import model as ar_model
  from ldlg.methods.gaussian.method import GaussianDiffusion
  from ldlg.networks import count_params
  denoiser_params = count_params(GaussianDiffusion.from_config(config).init_params(jax.random.PRNGKey(0),
                                                                                   abstract=True))
  ar_cfg = ar_model.default_ar_config()
  ar_cfg.model, ar_params = ar_model.matched_gpt2_config(denoiser_params, len(tokenizer), config.data.max_length)
  return ar_cfg, ar_params, denoiser_params


def train_ar_once(ar_cfg: ml_collections.ConfigDict, seed: int, out: pathlib.Path, tokenizer, train_texts,
                  reference, *, steps: int, max_seconds: float | None = None) -> dict:
  """Trains the GPT-2 into `out` unless its `ar_result.json` is there (several runs can share one judge); returns
  that result (`seconds`, `max_steps`, validation NLL on the first 500 reference texts, ...)."""
  from ldlg.methods.autoregressive import train as ar_train
  if not (out / "ar_result.json").exists():
    ar_cfg = copy.deepcopy(ar_cfg)
    ar_cfg.seed = seed
    result = ar_train.train_ar_baseline(ar_cfg, train_texts, tokenizer, out, max_steps=steps,
                                        max_seconds=max_seconds, valid_texts=list(reference)[:500])
    (out / "ar_result.json").write_text(json.dumps(result, indent=2, default=str))
  return _read_json(out / "ar_result.json")


class Scorer:
  """Every row's metrics by the same code: MAUVE against the reference (MiniLM features, the reference featurized
  once), perplexity under the judge, diversity, memorization against the training 4-grams (built once) and, for a
  class-conditional dataset, the accuracy of a probe trained on the training texts."""

  def __init__(self, train_records, valid_records, judge_dir: pathlib.Path, *, num_draws: int,
               class_conditional: bool):
    from ldlg.evaluation import classifier as classifier_lib
    from ldlg.evaluation import featurizers
    from ldlg.evaluation import perplexity
    self.train_texts = [r["text"] for r in train_records]
    self.reference = [r["text"] for r in valid_records]
    self.num_draws = num_draws
    self.featurizer = featurizers.get_featurizer("minilm")
    self.judge = perplexity.load_causal_lm(str(judge_dir))
    self.classifier, self.classifier_accuracy = None, None
    if class_conditional:
      self.classifier = classifier_lib.train_classifier(self.train_texts, [r["label"] for r in train_records],
                                                        self.featurizer)
      self.classifier_accuracy = self.classifier.accuracy(self.reference, [r["label"] for r in valid_records])
    self._shared = {}

  def __call__(self, texts, labels=None) -> dict:
    """`evaluate_draws` of one row's samples; `labels` (their classes, or None) score class accuracy."""
    from ldlg.evaluation import evaluate as evaluate_lib
    from ldlg.evaluation import ngram_metrics
    if not self._shared:  # Built on the first row, so a run with every row scored already skips it.
      self._shared = dict(reference_features=self.featurizer(self.reference),
                          train_texts=ngram_metrics.training_ngrams(self.train_texts))
    use_labels = labels if self.classifier is not None and labels and labels[0] is not None else None
    return evaluate_lib.evaluate_draws(texts, self.reference, featurizer=self.featurizer, num_draws=self.num_draws,
                                       ppl_model=self.judge, sample_labels=use_labels,
                                       classifier=self.classifier if use_labels else None, **self._shared)


def run_dataset(dataset: str, root: pathlib.Path, data_dir, preset: dict, *, shared_codec: Workdir | None = None,
                judge_dir: pathlib.Path | None = None, judge_steps: int | None = None) -> dict:
  """Every row of one dataset's table; each stage is skipped when its output exists.

  Args:
    dataset, root, data_dir, preset: what to train and where (`<root>/<dataset>/...`), as the command's flags.
    shared_codec: an LD4LG workdir whose autoencoder, datasets and latents this run uses instead of making its own
      (the time-to-quality benchmark's budgets share one); its pretrain/precompute times are then not this run's.
    judge_dir, judge_steps: the perplexity judge's folder and training steps (default `<root>/<dataset>/ar_judge`,
      the preset's steps); a judge already there is used as it is, so several runs can share one.
  """
  from ldlg.evaluation import evaluate as evaluate_lib
  from ldlg.methods.masked.method import MaskedDiffusion, tokenizer_info
  from ldlg.methods.autoregressive import sampler as ar_sample
  from ldlg.methods.autoregressive import train as ar_train
  from ldlg.networks import count_params
  import jax
  import transformers

  results_file = root / dataset / "results.json"
  results = _read_json(results_file) if results_file.exists() else {"rows": {}, "wall_seconds": {}}

  def save():
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2))

  sc_config = dataset_config(dataset, preset, self_condition=True)
  sc = Workdir(root / dataset / "ld4lg")
  nosc = Workdir(root / dataset / "ld4lg_no_self_cond")

  # 1. Autoencoder and latents (shared by both LD4LG rows), then the two diffusion models.
  if shared_codec is not None:
    _link_shared_stages(shared_codec, sc)
  for stage in ("pretrain_autoencoder", "precompute"):
    if not pipeline.stage_done(stage, sc_config, sc):
      _, seconds = _timed(pipeline.run, stage, sc_config, sc.root, data_dir=data_dir)
      results["wall_seconds"][stage] = seconds
      save()
  results["reconstruction"] = _reconstruction_row(sc)
  _link_shared_stages(sc, nosc)
  nosc_config = dataset_config(dataset, preset, self_condition=False)
  for name, wd, config in (("ld4lg", sc, sc_config), ("ld4lg_no_self_cond", nosc, nosc_config)):
    for stage in ("train", "sample"):
      if not pipeline.stage_done(stage, config, wd):
        _, seconds = _timed(pipeline.run, stage, config, wd.root, data_dir=data_dir)
        results["wall_seconds"][f"{name}_{stage}"] = seconds
        save()

  # MDLM over the same BPE tokens (the LD4LG run's tokenizer, which the AR baseline uses too).
  mdlm = Workdir(root / dataset / "mdlm")
  masked_config = mdlm_config(dataset, preset, sc.autoencoder_dir)
  for stage in ("train", "sample"):
    if not pipeline.stage_done(stage, masked_config, mdlm):
      _, seconds = _timed(pipeline.run, stage, masked_config, mdlm.root, data_dir=data_dir)
      results["wall_seconds"][f"mdlm_{stage}"] = seconds
      save()

  # 2. The AR baseline (matched size, same steps, at most LD4LG's training time) and the AR judge.
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(sc.autoencoder_dir))
  train_records = splits.load_texts(sc_config, data_dir, sc, sc_config.data.train_split)
  train_texts = [r["text"] for r in train_records]
  valid_records = splits.load_texts(sc_config, data_dir, sc, sc_config.data.eval_split)
  reference = [r["text"] for r in valid_records]
  ar_cfg, ar_params, denoiser_params = matched_ar_config(sc_config, tokenizer)
  ld4lg_train_seconds = results["wall_seconds"].get("ld4lg_train")
  judge_dir = judge_dir or root / dataset / "ar_judge"
  for name, seed, cap, out, steps in (
      ("ar_baseline", 0, ld4lg_train_seconds, root / dataset / "ar_baseline", preset["steps"]),
      ("ar_judge", JUDGE_SEED, None, judge_dir, judge_steps or preset["steps"])):
    result = train_ar_once(ar_cfg, seed, out, tokenizer, train_texts, reference, steps=steps, max_seconds=cap)
    results["wall_seconds"][f"{name}_train"] = result["seconds"]
  masked = MaskedDiffusion.from_config(masked_config, tokenizer_info(tokenizer))
  mdlm_params = count_params(jax.eval_shape(masked.init_params, jax.random.PRNGKey(0)))
  results["params"] = {"denoiser": denoiser_params, "mdlm": mdlm_params, "ar_baseline": ar_params}
  save()

  # 3. Samples of every row.
  num = preset["num_draws"] * preset["draw_size"]
  rng = np.random.default_rng(0)
  human_idx = rng.choice(len(train_records), size=min(num, len(train_records)), replace=False)
  rows = {
      "human (train)": ([train_texts[i] for i in human_idx], None),
      "human word-shuffled": (evaluate_lib.shuffle_words([train_texts[i] for i in human_idx]), None),
  }
  for name, wd in (("LD4LG", sc), ("LD4LG w/o self-cond", nosc), ("MDLM", mdlm)):
    records = [json.loads(l) for l in wd.samples_file.read_text().splitlines()]
    rows[name] = ([r["text"] for r in records], [r.get("class_id") for r in records])
  ar_out = root / dataset / "ar_baseline"
  if not (ar_out / "samples.json").exists():
    ar, ar_p, ar_tok = ar_train.load_ar_baseline(ar_out)
    texts, seconds = _timed(ar_sample.sample_ar, ar, ar_p, ar_tok, num, seed=0,
                            max_length=sc_config.data.max_length)
    (ar_out / "samples.json").write_text(json.dumps(texts))
    results["wall_seconds"]["ar_baseline_sample"] = seconds
  rows["GPT-2 baseline"] = (_read_json(ar_out / "samples.json"), None)

  # 4. Scores, all by the same code.
  scorer = Scorer(train_records, valid_records, judge_dir, num_draws=preset["num_draws"],
                  class_conditional=sc_config.model.num_classes > 0)
  if scorer.classifier_accuracy is not None:
    results["classifier_accuracy_on_real_validation"] = scorer.classifier_accuracy
  for name, (texts, labels) in rows.items():
    if name not in results["rows"]:
      results["rows"][name] = scorer(texts, labels)
      save()
  return results


def format_table(all_results: dict, preset_name: str) -> str:
  lines = []
  for dataset, res in all_results.items():
    if "rows" not in res:
      rec = res["reconstruction"]
      lines.append(f"\n{dataset}: autoencoder reconstruction on held-out sentences: exact match "
                   f"{rec['exact_match']:.1%}, BLEU {rec['bleu']:.1f} ({rec['num_sentences']} sentences)")
      continue
    rec = res["reconstruction"]
    lines.append(f"\n### {dataset} ({preset_name} preset; MAUVE features: MiniLM; perplexity judge: GPT-2 "
                 f"trained on {dataset} train)")
    lines.append(f"Autoencoder reconstruction (held-out): exact match {rec['exact_match']:.1%}, "
                 f"BLEU {rec['bleu']:.1f}. Params: denoiser {res['params']['denoiser']:,}, "
                 f"MDLM {res['params'].get('mdlm', 0):,}, GPT-2 baseline {res['params']['ar_baseline']:,}.")
    has_acc = any("class_accuracy" in r for r in res["rows"].values())
    header = "| row | MAUVE | perplexity | diversity | memorization | unique tokens |" + (
        " class acc. |" if has_acc else "") + " train wall time |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    times = {"LD4LG": res["wall_seconds"].get("ld4lg_train"),
             "LD4LG w/o self-cond": res["wall_seconds"].get("ld4lg_no_self_cond_train"),
             "MDLM": res["wall_seconds"].get("mdlm_train"),
             "GPT-2 baseline": res["wall_seconds"].get("ar_baseline_train")}
    for name, m in res["rows"].items():
      cell = lambda k, f="{:.3f}": (f + " ± " + f).format(m[k]["mean"], m[k]["std"]) if k in m else "–"
      row = (f"| {name} | {cell('mauve')} | {cell('perplexity', '{:.1f}')} | {cell('diversity')} | "
             f"{cell('memorization')} | {cell('unique_tokens', '{:.0f}')} |")
      if has_acc:
        row += f" {cell('class_accuracy')} |"
      seconds = times.get(name)
      row += f" {seconds / 60:.1f} min |" if seconds else " – |"
      lines.append(row)
    if "classifier_accuracy_on_real_validation" in res:
      lines.append(f"Classifier accuracy on real validation sentences: "
                   f"{res['classifier_accuracy_on_real_validation']:.3f}")
    lines += [comparison_line(res["rows"], a, b) for a, b in COMPARED_ROWS
              if a in res["rows"] and b in res["rows"]]
  return "\n".join(lines)


# Row pairs whose difference the table tests against the draws' noise: the self-conditioning ablation.
COMPARED_ROWS = (("LD4LG", "LD4LG w/o self-cond"),)


def comparison_line(rows: dict, a: str, b: str) -> str:
  """"<a> - <b>: MAUVE +0.012 ± 0.020 (Welch p = 0.57), ..." from two rows' per-draw values."""
  from ldlg.evaluation import evaluate as evaluate_lib
  names = {"mauve": "MAUVE", "perplexity": "perplexity", "diversity": "diversity", "class_accuracy": "class acc."}
  parts = [f"{names[m]} {c['difference']:+.3g} ± {c['std_error']:.2g} (Welch p = {c['p_value']:.2g})"
           for m, c in evaluate_lib.compare_draws(rows[a], rows[b]).items()]
  return (f"{a} − {b}, mean difference ± its standard error over the sampling draws (one trained model each): "
          + "; ".join(parts))


FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so that importing this module (the time-to-quality benchmark builds on
  # it) never collides on flag names.
  flags.DEFINE_string("workdir", "runs/quality", "Where every run of the benchmark goes.")
  flags.DEFINE_string("data_dir", None, "Raw data folder (<dataset>/...); else $LDLG_DATA_DIR.")
  flags.DEFINE_enum("preset", "cpu", list(PRESETS),
                    "Budget: cpu (~1 h on 2 cores), gpu, or smoke (minutes; checks the plumbing only).")
  flags.DEFINE_list("datasets", ["sst"], "Datasets to train and sample on (MAUVE table rows).")
  flags.DEFINE_list("reuse_autoencoder", [],
                    "dataset=workdir pairs: report the reconstruction of a finished pipeline run.")


def main(argv):
  del argv
  data_dir = FLAGS.data_dir or os.environ.get("LDLG_DATA_DIR")
  root = pathlib.Path(FLAGS.workdir).absolute()
  preset = PRESETS[FLAGS.preset]
  all_results = {}
  t0 = time.perf_counter()
  for pair in FLAGS.reuse_autoencoder:
    dataset, path = pair.split("=", 1)
    all_results[dataset] = {"reconstruction": _reconstruction_row(Workdir(pathlib.Path(path)))}
  for dataset in FLAGS.datasets:
    all_results[dataset] = run_dataset(dataset, root, data_dir, preset)
  table = format_table(all_results, FLAGS.preset)
  (root / "table.md").write_text(table + "\n")
  (root / "results.json").write_text(json.dumps(all_results, indent=2))
  print(table)
  print(f"\nTotal wall time of this invocation: {(time.perf_counter() - t0) / 60:.1f} min; "
        f"written to {root / 'table.md'}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
