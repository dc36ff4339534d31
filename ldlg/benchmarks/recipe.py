r"""The recipe ablation: LD4LG's choices one at a time, at one equal budget, scored by one judge.

  python -m ldlg.benchmarks.recipe --workdir=runs/recipe --data_dir=../shared/data --dataset=sst \
      --rows=old_default,no_self_cond,class_time,class_time_w5,later,official_v1

Every row is the dataset's `:cpu` LD4LG (or another of its variants, e.g. the later version) with a few fields
changed (`ROWS`); all rows train the quality benchmark preset's steps (equal steps; each row's training wall time
is reported beside it, so a row that buys its quality with slower steps shows it, and a "bigger model, fewer
steps" row states its own `train.num_steps`), sample the same number of texts with the same seed, and are scored
by `quality.Scorer`: MAUVE against the validation split, perplexity under one GPT-2 judge, diversity,
memorization and (class-conditional datasets) the accuracy of one probe; mean ± std over the draws. Each row is
compared with `old_default` by `evaluate.compare_draws` (difference, its standard error, Welch p over the draws: one
trained model per row, so p speaks to sampling noise, not to training seeds).

Shared, and made once:
  <workdir>/<dataset>/codec/        tokenizer, BART autoencoder, TFDS data and latents (the `old_default` row's config)
  <workdir>/<dataset>/judge/        the perplexity judge: a GPT-2 matched to the default denoiser, seed 1, trained
                                    the preset's steps whatever --steps says (one yardstick for every budget)
Per row:
  <workdir>/<dataset>/rows/<row>/   its pipeline workdir (codec stages linked), and recipe_row.json (its times and
                                    scores)
A row whose differences from another row are all in `sample.*` (a guidance scale) samples that row's checkpoints
instead of training again (`Row.sampled_from`). A row on compressed latents links the autoencoder only and trains
its own compression network and latents; a row on its own autoencoder (`Row.own_autoencoder`: another width, or
more autoencoder steps) links the prepared data only, trains its tokenizer, autoencoder and latents, and reports its
held-out reconstruction beside the table. An autoregressive row (`Row.ar_capped_by`) trains the quality benchmark's
matched GPT-2 baseline (seed 0) for its LD4LG row's steps, stopped at that row's training wall time, and samples as
many texts: the two sit at equal training time, as the quality table's rows do (train them on equally loaded cores:
the cap is a wall time). Written: `<workdir>/<dataset>/recipe.json`, `<workdir>/recipe.md` (the
table) and `<workdir>/recipe.png` (MAUVE, judge perplexity and class accuracy per row, error bars = std over draws).

Every stage resumes (re-running skips what is done), and the per-row files make it safe to run disjoint `--rows`
in two processes on one workdir once the codec exists (a first invocation makes it; the judge is trained after the
rows, when scoring needs it, so start the second process's scoring after the first has made it). A last invocation
with every row re-scores nothing and writes the whole table.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

from absl import app
from absl import flags
import ml_collections

from ldlg import methods
from ldlg import pipeline
from ldlg.benchmarks import ab
from ldlg.benchmarks import plots
from ldlg.benchmarks import quality
from ldlg.benchmarks import time_to_quality as ttq
from ldlg.codecs import uses_compression
from ldlg.config_validation import validate_config
from ldlg.engine.workdir import Workdir
from ldlg.engine.workdir import config_differences
from ldlg.engine.workdir import flatten


@dataclasses.dataclass(frozen=True)
class Row:
  """One recipe: `configs/<dataset>.py:<variant>` with `overrides` ("section.field=value,...") applied."""
  description: str
  variant: str = "cpu"
  overrides: str = ""
  sampled_from: str | None = None  # A trained row whose checkpoints this row samples (its changes: sample.* only).
  # An autoregressive row: the quality benchmark's matched GPT-2 baseline (seed 0) trained for this LD4LG row's
  # steps and at most its training wall time, so the two sit side by side at equal time (no overrides of its own).
  ar_capped_by: str | None = None
  # The row trains its own BART autoencoder (and latents) in its workdir: it changes `autoencoder.*` (a width, the
  # autoencoder's steps). Only the prepared raw data is shared; the tokenizer is retrained (deterministic, from the
  # same corpus and vocabulary size).
  own_autoencoder: bool = False

  @property
  def needs(self) -> str | None:
    """The row that must run before this one (whose checkpoints or training time it reads), or None."""
    return self.sampled_from or self.ar_capped_by


# The rows on the `:cpu` variant are changes to the recipe as it was before this ablation, whose class conditioning
# (a memory token, no guidance) they pin: `:cpu` now has the ablation's choice (configs/default.py,
# `with_class_recipe`), which is the row `class_time_w5`.
BEFORE = "model.class_input=memory_token,sample.guidance_scale=1.0"
CLASS_TIME = "model.class_input=time,sample.guidance_scale=1.0"
BASELINE = "old_default"


def _default_at(steps: int) -> Row:
  """The `:cpu` default now (class_time_w5's config, pinned the same way) trained `steps` steps."""
  return Row(f"the `:cpu` default (class via time, guidance w = 5), {steps:,} steps",
             overrides=f"{CLASS_TIME},sample.guidance_scale=5.0,train.num_steps={steps}")


def _sample_only(row: str, change: str, overrides: str) -> Row:
  """A row that samples `row`'s checkpoints (or those `row` itself samples) with `overrides` added to its own;
  described as "<row>, <change>"."""
  base = ROWS[row]
  return Row(f"{row}, {change}", base.variant, ",".join(filter(None, (base.overrides, overrides))),
             sampled_from=base.sampled_from or row)


def _guided(source: str, scale: float, note: str = "") -> Row:
  """A sample-only row: `source`'s checkpoints sampled with guidance w = scale (its overrides, then the scale)."""
  return _sample_only(source, f"guidance w = {scale:g}{note}", f"sample.guidance_scale={float(scale)}")


ROWS = {
    "old_default": Row("`:cpu` before this ablation: x0-prediction, linear schedule, self-conditioning cross-attended, "
                       "class as a memory token, no guidance", overrides=BEFORE),
    "no_self_cond": Row("old_default, self-conditioning off", overrides=f"{BEFORE},diffusion.self_condition_prob=0.0"),
    "class_time": Row("class added to the time embedding (official HEAD)", overrides=CLASS_TIME),
    # A second training seed of class_time (the top-level seed: initialisation, batches, noise, samples).
    "class_time_seed1": Row("class_time, training seed 1", overrides=f"{CLASS_TIME},seed=1"),
    # The self-conditioning ablation on the `:cpu` default (class_time_w5): the quality table's second LD4LG row.
    "class_time_no_sc": Row("class_time, self-conditioning off",
                            overrides=f"{CLASS_TIME},diffusion.self_condition_prob=0.0"),
    # The objective alone (the later version's v-prediction, on class_time's linear schedule): at low noise
    # x̂0 = sqrt(ᾱ) z - sqrt(1 - ᾱ) v is close to z whatever the network says, where x0-prediction must rebuild z
    # (the diagnostics' sampling_from_noise_level: x0-prediction's chain loses sentences the one-step estimate keeps).
    "class_time_v": Row("class_time, v-prediction", overrides=f"{CLASS_TIME},diffusion.objective=v"),
    "later": Row("the later version on BART latents: v-prediction, cosine, ᾱ input, concatenated self-cond., "
                 "U-Net skips, class via time, dropout 0.1", variant="cpu_later"),
    "official_v1": Row("the official v1 scripts' recipe: L1 loss, exact GELU, head width 64, dropout 0.1, their "
                       "initial scales, per-batch self-cond. coin, decay mask, EMA warm-up", variant="cpu_official_v1"),
    "later_compressed": Row("later, on the compression network's 32 × 64 latents", variant="cpu_later_compressed"),
    # The `:cpu` default (class_time_w5) at two and four times the steps: points of LD4LG's time-to-quality curve.
    "class_time_w5_steps3000": _default_at(3000),
    "class_time_w5_steps6000": _default_at(6000),
    # The matched GPT-2 (the quality benchmark's baseline) beside an LD4LG row at equal training time: the points
    # of the time-to-quality comparison on the `:cpu` default.
    "gpt2": Row("the matched GPT-2 baseline, capped at class_time's training time", ar_capped_by="class_time"),
    "gpt2_steps3000": Row("the matched GPT-2 baseline, capped at class_time_w5_steps3000's training time",
                          ar_capped_by="class_time_w5_steps3000"),
    # The autoencoder's width (the latents' width: the denoiser reads them through its input projection), on the
    # `:cpu` default's class pathway; each trains its own BART autoencoder (the shared codec's is d_model 128).
    "ae_narrow": Row("class_time on a BART autoencoder of half the width (d_model 64, ffn 256)",
                     overrides=f"{CLASS_TIME},autoencoder.d_model=64,autoencoder.ffn_dim=256", own_autoencoder=True),
    "ae_wide": Row("class_time on a BART autoencoder of twice the width (d_model 256, ffn 1024)",
                   overrides=f"{CLASS_TIME},autoencoder.d_model=256,autoencoder.ffn_dim=1024", own_autoencoder=True),
    # The autoencoder's training: twice the shared codec's 1,500 steps.
    "ae_steps3000": Row("class_time on a BART autoencoder trained 3,000 steps (the shared codec's: 1,500)",
                        overrides=f"{CLASS_TIME},autoencoder.num_steps=3000", own_autoencoder=True),
    "wide_half_steps": Row("old_default with denoiser width 256 (4× the parameters), half the steps",
                           overrides=f"{BEFORE},model.dim=256,train.num_steps=750"),
}
ROWS.update({
    "class_time_w2": _guided("class_time", 2),
    "class_time_w3": _guided("class_time", 3),
    "class_time_w5": _guided("class_time", 5, " (the `:cpu` default now)"),
    "class_time_seed1_w3": _guided("class_time_seed1", 3),
    "class_time_seed1_w5": _guided("class_time_seed1", 5),
    "class_time_no_sc_w5": _guided("class_time_no_sc", 5, " (`:cpu` without self-conditioning)"),
    "later_w3": _guided("later", 3),
    "class_time_w5_steps3000_w1": _guided("class_time_w5_steps3000", 1),
    "class_time_v_w5": _guided("class_time_v", 5),
    "ae_narrow_w5": _guided("ae_narrow", 5),
    "ae_wide_w5": _guided("ae_wide", 5),
})
# Deterministic DDIM (η = 0) on the same checkpoints: from ᾱ = 0.85 the x0 chain keeps its sentences better at
# η = 0 (diagnostics' sampling_from_noise_level: BLEU 25.6 against 3 at w = 5), and at η = 1 the v chain ends with
# 8 % more latent norm than real latents (sample_reencoding).
ROWS.update({f"{row}_eta0": _sample_only(row, "DDIM η = 0", "sample.eta=0.0")
             for row in ("class_time_w5", "class_time_v")})
# The samples lie off the encoder's manifold (diagnostics' sample_reencoding): the same checkpoints, decoded by a
# decoder trained to read noised latents.
ROWS.update({f"{row}_dec": _sample_only(row, "decoder fine-tuned on noised latents (σ ≤ 1)",
                                        "decoder_finetune.noise_std=1.0")
             for row in ("class_time_w5", "class_time_v", "class_time_v_w5", "later")})
# Time to quality inside the recipe: the `:cpu` default at growing step budgets, and the GPT-2 capped at each budget's
# training time (a GPT-2 point stands at its capping row's budget). One judge scores every point.
BUDGET_SERIES = {
    "LD4LG (`:cpu` default, w = 5)": ("class_time_w5", "class_time_w5_steps3000", "class_time_w5_steps6000"),
    "LD4LG (`:cpu` default sampled with w = 1)": ("class_time", "class_time_w5_steps3000_w1"),
    ttq.BASELINE: ("gpt2", "gpt2_steps3000"),
}
DEFAULT_ROWS = ("old_default", "no_self_cond", "class_time", "class_time_w3", "class_time_w5", "later", "later_w3",
                "official_v1")
# What a sample-only row may change: the sampler, and the decoder (fine-tuned with the encoder frozen: the same
# latents, so the same checkpoints).
SAMPLE_ONLY_FIELDS = ("sample.", "decoder_finetune.")
# The codec's fields: a row may link the shared codec only if it agrees with it on every one of them.
CODEC_FIELDS = ("autoencoder.", "tokenizer.", "data.")
# Below this held-out exact reconstruction a row's own autoencoder is flagged in the table: its decoder writes from
# its language model more than from the latents (the shared SST codec: 90 %).
UNREAD_LATENTS = 0.5
METRICS = ("mauve", "perplexity", "diversity", "memorization", "class_accuracy")


def row_config(dataset: str, name: str, preset: dict) -> ml_collections.ConfigDict:
  """The row's full config: its variant under the quality preset (steps, samples, draws, autoencoder steps),
  then its overrides (so a row may set its own `train.num_steps`). An autoregressive row's is its capping row's
  (the GPT-2 is matched to that denoiser's size, BPE, length and steps)."""
  if name not in ROWS:
    raise ValueError(f"unknown recipe row {name!r}; rows are {sorted(ROWS)}")
  row = ROWS[name]
  if row.ar_capped_by:
    return row_config(dataset, check_ar_capped_by(name), preset)
  config = quality._preset_config(dataset, row.variant, preset)  # pylint: disable=protected-access
  config.autoencoder.num_steps = preset["ae_steps"]
  config.train.sample_every = 0
  return ab.apply_overrides(config, row.overrides)


def check_sampled_from(dataset: str, name: str, preset: dict) -> str:
  """The trained row a sample-only row reads; fails unless the two configs differ in `sample.*` only."""
  source = ROWS[name].sampled_from
  if source not in ROWS or ROWS[source].needs is not None:
    raise ValueError(f"row {name!r}: sampled_from={source!r} must name a row that trains")
  mine, theirs = (flatten(json.loads(row_config(dataset, n, preset).to_json())) for n in (name, source))
  differing = sorted(k for k in set(mine) | set(theirs)
                     if mine.get(k) != theirs.get(k) and not k.startswith(SAMPLE_ONLY_FIELDS))
  if differing:
    raise ValueError(f"row {name!r} samples {source!r}'s checkpoints but its config differs outside "
                     f"{', '.join(f + '*' for f in SAMPLE_ONLY_FIELDS)}: {differing}; give it its own training "
                     "(drop sampled_from)")
  return source


def check_ar_capped_by(name: str) -> str:
  """The LD4LG row an autoregressive row is capped by; fails unless that row trains a diffusion model."""
  source = ROWS[name].ar_capped_by
  if source not in ROWS or ROWS[source].needs is not None:
    raise ValueError(f"row {name!r}: ar_capped_by={source!r} must name a row that trains LD4LG")
  if ROWS[name].overrides or ROWS[name].sampled_from:
    raise ValueError(f"row {name!r}: an autoregressive row takes neither overrides nor sampled_from")
  return source


def link_codec(codec: Workdir, row_wd: Workdir, config: ml_collections.ConfigDict, *,
               own_autoencoder: bool = False) -> None:
  """Links the shared codec's stages into a row's workdir: the prepared data always; the autoencoder unless the row
  trains its own (`own_autoencoder`: it may differ in `autoencoder.*`); the latents when the row reads the same
  latents (not on compressed latents or its own autoencoder's, which the row's own stages make)."""
  saved = json.loads(codec.config_file.read_text())
  current = json.loads(config.to_json())
  fixed = tuple(f for f in CODEC_FIELDS if not (own_autoencoder and f == "autoencoder."))
  clash = [d for d in config_differences(saved, current) if d.startswith(fixed)]
  if clash:
    raise ValueError(f"{row_wd.root.name}: its config differs from the shared codec's ({codec.root}) in fields that "
                     f"fix the {'tokenizer or data' if own_autoencoder else 'autoencoder, tokenizer or data'} "
                     "(a row that changes the autoencoder sets Row.own_autoencoder):\n  " + "\n  ".join(clash))
  if own_autoencoder:
    names = ["tfds"]
  else:
    names = ["autoencoder", "tfds"] + ([] if uses_compression(config) else ["latents"])
  row_wd.root.mkdir(parents=True, exist_ok=True)
  for n in names:
    if not (row_wd.root / n).exists():
      os.symlink(codec.root / n, row_wd.root / n)


def _link_decoder_of_a_sibling(wd: Workdir, config: ml_collections.ConfigDict) -> None:
  """Links another row's fine-tuned decoder when it was made with this row's decoder_finetune config (every row
  shares the codec, so the decoder is the same): it is trained once per config."""
  from ldlg.codecs.bart import decoder_finetune  # pylint: disable=import-outside-toplevel
  if wd.decoder_dir.exists():
    return
  for done in sorted(wd.root.parent.glob(f"*/decoder/{decoder_finetune.DONE_FILE}")):
    if json.loads(done.read_text())["decoder_finetune"] == config.decoder_finetune.to_dict():
      os.symlink(done.parent.resolve(), wd.decoder_dir)
      return


def _timed_stage(stage: str, config, wd: Workdir, data_dir) -> float:
  return quality._timed(pipeline.run, stage, config, wd.root, data_dir=data_dir)[1]  # pylint: disable=protected-access


def run_row(name: str, dataset: str, root: pathlib.Path, data_dir, preset: dict, codec: Workdir,
            trained: dict | None = None) -> dict[str, Any]:
  """Trains (or links) and samples one row; returns its recipe_row.json record (times; scores once scored).

  A sample-only row (checked by `check_sampled_from` before) gets its trained row's record as `trained`: that row
  has been run already, and this one links its checkpoints.
  """
  config = row_config(dataset, name, preset)
  wd = Workdir(root / dataset / "rows" / name)
  record_file = wd.root / "recipe_row.json"
  record = json.loads(record_file.read_text()) if record_file.exists() else {}
  source = ROWS[name].sampled_from
  if source is None:
    link_codec(codec, wd, config, own_autoencoder=ROWS[name].own_autoencoder)
    own_stages = [s.name for s in methods.stages(config)]  # train_compression only on compressed latents.
    # pretrain_autoencoder is done (linked) unless the row trains its own.
    for stage in ("pretrain_autoencoder", "train_compression", "precompute", "train"):
      if stage in own_stages and not pipeline.stage_done(stage, config, wd, data_dir):
        record[f"{stage}_seconds"] = _timed_stage(stage, config, wd, data_dir)
        record_file.write_text(json.dumps(record, indent=2))
    if ROWS[name].own_autoencoder:  # Its codec's held-out reconstruction, beside the shared codec's.
      record["reconstruction"] = quality._reconstruction_row(wd)  # pylint: disable=protected-access
  else:
    record["train_seconds"] = trained.get("train_seconds")
    if "reconstruction" in trained:
      record["reconstruction"] = trained["reconstruction"]
    src = Workdir(root / dataset / "rows" / source)
    wd.root.mkdir(parents=True, exist_ok=True)
    for n in ("autoencoder", "tfds", "latents", "checkpoints", "compression"):
      if (src.root / n).exists() and not (wd.root / n).exists():
        os.symlink((src.root / n).resolve(), wd.root / n)
  if not pipeline.stage_done("finetune_decoder", config, wd, data_dir):  # Only with decoder_finetune on.
    _link_decoder_of_a_sibling(wd, config)
    if not pipeline.stage_done("finetune_decoder", config, wd, data_dir):
      record["finetune_decoder_seconds"] = _timed_stage("finetune_decoder", config, wd, data_dir)
      record_file.write_text(json.dumps(record, indent=2))
  if not pipeline.stage_done("sample", config, wd, data_dir):
    record["sample_seconds"] = _timed_stage("sample", config, wd, data_dir)
  record.update(description=ROWS[name].description, variant=ROWS[name].variant, overrides=ROWS[name].overrides,
                sampled_from=source, train_steps=int(config.train.num_steps))
  record_file.write_text(json.dumps(record, indent=2))
  return record


# The GPT-2 baseline's training and sampling seed (the quality benchmark's; its judge is quality.JUDGE_SEED).
AR_SEED = 0


def run_ar_row(name: str, dataset: str, root: pathlib.Path, preset: dict, capping: dict,
               codec_texts: tuple) -> dict[str, Any]:
  """Trains the matched GPT-2 for the capping row's steps, stopped at its `train_seconds` (`capping`, that row's
  record), and samples as many texts as the LD4LG rows; returns its recipe_row.json record. `codec_texts`: the shared
  codec's (tokenizer, train records, validation records); every row agrees with the codec on the data fields."""
  from ldlg.methods.autoregressive import sampler as ar_sample  # pylint: disable=import-outside-toplevel
  from ldlg.methods.autoregressive import train as ar_train  # pylint: disable=import-outside-toplevel
  config = row_config(dataset, name, preset)
  wd = Workdir(root / dataset / "rows" / name)
  record_file = wd.root / "recipe_row.json"
  record = json.loads(record_file.read_text()) if record_file.exists() else {}
  tokenizer, train_records, valid_records = codec_texts
  ar_cfg, _, _ = quality.matched_ar_config(config, tokenizer)
  result = quality.train_ar_once(ar_cfg, AR_SEED, wd.root, tokenizer, [r["text"] for r in train_records],
                                 [r["text"] for r in valid_records], steps=int(config.train.num_steps),
                                 max_seconds=capping["train_seconds"])
  if not wd.samples_file.exists():
    model, params, ar_tokenizer = ar_train.load_ar_baseline(wd.root)
    texts, record["sample_seconds"] = quality._timed(  # pylint: disable=protected-access
        ar_sample.sample_ar, model, params, ar_tokenizer, int(config.sample.num_samples), seed=AR_SEED,
        max_length=int(config.data.max_length))
    partial = wd.samples_file.with_suffix(".partial")  # Whole or absent: a resume never scores half a file.
    partial.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    partial.rename(wd.samples_file)
  record.update(description=ROWS[name].description, variant="autoregressive", overrides="",
                ar_capped_by=ROWS[name].ar_capped_by, train_seconds=result["seconds"], train_steps=int(result["steps"]),
                stopped_by=result.get("stopped_by"))
  record_file.write_text(json.dumps(record, indent=2))
  return record


def run(root: str | pathlib.Path, *, data_dir, dataset: str = "sst", preset_name: str = "cpu",
        rows: Sequence[str] = DEFAULT_ROWS, steps: int | None = None, draw_size: int | None = None) -> dict[str, Any]:
  """Every row (see the module docstring); returns the report written to `<root>/<dataset>/recipe.json`."""
  import transformers  # pylint: disable=import-outside-toplevel
  from ldlg.data import splits  # pylint: disable=import-outside-toplevel
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    raise ValueError(f"unknown recipe rows {unknown}; rows are {sorted(ROWS)}")
  # Each sample-only row's trained row just before it (its samples are made anyway, and guidance is read against
  # the same model without it), and each autoregressive row's capping row (whose training time is its cap).
  rows = list(dict.fromkeys(r for name in rows for r in (ROWS[name].needs, name) if r))
  root = pathlib.Path(root).absolute()
  preset = dict(quality.PRESETS[preset_name])
  preset.update({k: v for k, v in (("steps", steps), ("draw_size", draw_size)) if v})
  for name in rows:  # Config errors before hours of training.
    validate_config(row_config(dataset, name, preset))
    if ROWS[name].sampled_from:
      check_sampled_from(dataset, name, preset)

  # The shared codec: the baseline row's tokenizer, autoencoder, datasets and latents.
  base_config = row_config(dataset, BASELINE, preset)
  codec = Workdir(root / dataset / "codec")
  timings = {}
  for stage in ("pretrain_autoencoder", "precompute"):
    if not pipeline.stage_done(stage, base_config, codec, data_dir):
      timings[stage] = _timed_stage(stage, base_config, codec, data_dir)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(codec.autoencoder_dir))
  train_records = splits.load_texts(base_config, data_dir, codec, base_config.data.train_split)
  valid_records = splits.load_texts(base_config, data_dir, codec, base_config.data.eval_split)
  codec_texts = (tokenizer, train_records, valid_records)
  records = {}
  for name in rows:  # A row comes after the row it needs (above), whose record it reads.
    if ROWS[name].ar_capped_by:
      records[name] = run_ar_row(name, dataset, root, preset, records[ROWS[name].ar_capped_by], codec_texts)
    else:
      records[name] = run_row(name, dataset, root, data_dir, preset, codec,
                              trained=records.get(ROWS[name].sampled_from))

  # The judge last: only the scoring needs it (a second process running other rows finds it made).
  ar_cfg, _, _ = quality.matched_ar_config(base_config, tokenizer)
  judge_dir = root / dataset / "judge"
  judge = quality.train_ar_once(ar_cfg, quality.JUDGE_SEED, judge_dir, tokenizer,
                                [r["text"] for r in train_records], [r["text"] for r in valid_records],
                                steps=quality.PRESETS[preset_name]["steps"])

  scorer = None
  for name in rows:
    scores = records[name].get("scores")
    if scores is not None and "perplexity_median" in scores:
      continue
    if scorer is None:
      scorer = quality.Scorer(train_records, valid_records, judge_dir, num_draws=preset["num_draws"],
                              class_conditional=base_config.model.num_classes > 0)
    wd = Workdir(root / dataset / "rows" / name)
    samples = [json.loads(l) for l in wd.samples_file.read_text().splitlines()]
    texts = [s["text"] for s in samples]
    if scores is None:
      records[name]["scores"] = scorer(texts, [s.get("class_id") for s in samples])
    else:  # Scored before the median was kept: the judge alone, on the same draws (the mean comes out the same).
      from ldlg.evaluation import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
      scores.update(evaluate_lib.perplexity_over_draws(texts, scorer.judge, preset["num_draws"]))
    (wd.root / "recipe_row.json").write_text(json.dumps(records[name], indent=2))
  baseline_file = root / dataset / "rows" / BASELINE / "recipe_row.json"
  if BASELINE not in records and baseline_file.exists():  # Run by another invocation: still the reference.
    baseline = json.loads(baseline_file.read_text())
    if "scores" in baseline:
      records = {BASELINE: baseline, **records}
  report = {"dataset": dataset, "preset": preset_name, "steps": preset["steps"],
            "draws": [preset["num_draws"], preset["draw_size"]], "judge": {"dir": str(judge_dir),
            "valid_loss": judge.get("valid_loss"), "max_steps": judge.get("max_steps")},
            "reconstruction": quality._reconstruction_row(codec),  # pylint: disable=protected-access
            "codec_seconds": timings, "rows": records,
            "comparisons": comparisons(records)}
  curves = budget_curves(records)
  report["time_to_quality"] = {"curves": curves, "crossings": ttq.crossings(curves)}
  if scorer is not None and scorer.classifier_accuracy is not None:
    report["classifier_accuracy_on_real_validation"] = scorer.classifier_accuracy
  else:
    previous = root / dataset / "recipe.json"
    if previous.exists():
      acc = json.loads(previous.read_text()).get("classifier_accuracy_on_real_validation")
      if acc is not None:
        report["classifier_accuracy_on_real_validation"] = acc
  (root / dataset / "recipe.json").write_text(json.dumps(report, indent=2))
  (root / "recipe.md").write_text(format_table(report) + "\n")
  report["plots"] = plot(report, root)
  if any(len(points) > 1 for points in curves.values()):
    report["plots"] += ttq.plot({"curves": curves, "controls": {}, "dataset": dataset, "preset": preset_name},
                                root, filename="recipe_time_to_quality.png")
  return report


def budget_curves(records: dict[str, dict]) -> dict[str, list[dict[str, Any]]]:
  """`BUDGET_SERIES`' scored rows as time-to-quality curves (`time_to_quality.curves`' shape): per series, its points
  in increasing budget, {"steps" (the LD4LG budget: a GPT-2 row's is its capping row's), "row", "train_steps" (steps
  the row ran), "train_seconds", and each metric's {"mean", "std"}}."""
  out = {}
  for series, names in BUDGET_SERIES.items():
    points = []
    for name in names:
      r = records.get(name, {})
      if "scores" not in r:
        continue
      budget_row = records.get(r.get("ar_capped_by") or name, {})
      point = {"steps": budget_row.get("train_steps"), "row": name, "train_steps": r.get("train_steps"),
               "train_seconds": r.get("train_seconds")}
      point.update({m: {k: r["scores"][m][k] for k in ("mean", "std")} for m in METRICS if m in r["scores"]})
      points.append(point)
    if points:
      out[series] = sorted(points, key=lambda p: p["steps"])
  return out


def comparisons(records: dict[str, dict]) -> dict[str, dict]:
  """Every scored row against the baseline row: `evaluate.compare_draws` per metric."""
  from ldlg.evaluation import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
  base = records.get(BASELINE, {}).get("scores")
  if base is None:
    return {}
  return {name: evaluate_lib.compare_draws(r["scores"], base) for name, r in records.items()
          if name != BASELINE and "scores" in r}


def format_table(report: dict) -> str:
  """The markdown table: one line per row, its metrics as mean ± std, and its difference from the baseline with
  Welch p for MAUVE, perplexity and class accuracy."""
  rows = report["rows"]
  has_acc = any("class_accuracy" in r.get("scores", {}) for r in rows.values())
  rec = report["reconstruction"]
  lines = [f"### Recipe ablation on {report['dataset']} ({report['preset']} preset, {report['steps']} steps per "
           f"row unless it says otherwise; {report['draws'][0]} draws × {report['draws'][1]} samples)",
           f"Shared codec: autoencoder reconstruction (held-out) exact {rec['exact_match']:.1%}, BLEU "
           f"{rec['bleu']:.1f}; judge: GPT-2, {report['judge']['max_steps']} steps, validation NLL "
           f"{report['judge']['valid_loss'] or float('nan'):.3f} nats/token.",
           ""]
  header = ("| row | MAUVE | judge ppl | judge ppl (median) | diversity | memorization |"
            + (" class acc. |" if has_acc else "")
            + " train time | vs " + BASELINE + ": MAUVE / ppl" + (" / class acc." if has_acc else "") + " (Welch p) |")
  lines += [header, "|" + "---|" * (header.count("|") - 1)]
  for name, r in rows.items():
    m = r.get("scores", {})
    cell = lambda k, f="{:.3f}": (f + " ± " + f).format(m[k]["mean"], m[k]["std"]) if k in m else "–"
    seconds = r.get("train_seconds")
    steps = r.get("train_steps")
    time_cell = (f"{seconds / 60:.1f} min" if seconds else "–") + (f" ({steps} steps)" if steps != report["steps"]
                                                                   else "") + (" (same model)" if r.get(
                                                                       "sampled_from") else "")
    comp = report["comparisons"].get(name, {})
    diffs = " / ".join(f"{comp[k]['difference']:+.3g} (p {comp[k]['p_value']:.2g})"
                       for k in ("mauve", "perplexity", "class_accuracy") if k in comp) or "–"
    line = f"| {name} | {cell('mauve')} | {cell('perplexity', '{:.1f}')} | {cell('perplexity_median', '{:.1f}')} | " \
           f"{cell('diversity')} | " \
           f"{cell('memorization')} |" + (f" {cell('class_accuracy')} |" if has_acc else "") + \
           f" {time_cell} | {diffs} |"
    lines.append(line)
  if "classifier_accuracy_on_real_validation" in report:
    lines.append(f"\nProbe accuracy on real validation text: {report['classifier_accuracy_on_real_validation']:.3f}.")
  own = {n: r["reconstruction"] for n, r in rows.items() if "reconstruction" in r}
  if own:
    lines.append("\nRows on their own autoencoder, its held-out reconstruction: " + "; ".join(
        f"`{n}` exact {rec['exact_match']:.1%}, BLEU {rec['bleu']:.1f}" for n, rec in own.items()) + ".")
    unread = [n for n, rec in own.items() if rec["exact_match"] < UNREAD_LATENTS]
    if unread:  # Its samples are what its decoder writes from (nearly) any latent: not the diffusion's work.
      lines.append(f"Warning: {', '.join(f'`{n}`' for n in unread)}: the autoencoder reconstructs under "
                   f"{UNREAD_LATENTS:.0%} of held-out sentences, so its decoder barely reads the latents; the row's "
                   "scores are mostly its decoder's language model (beam search), not the denoiser's.")
  lines.append("\nRows: " + "; ".join(f"`{n}`: {r['description']}" for n, r in rows.items()))
  lines += _budget_lines(report.get("time_to_quality", {}))
  return "\n".join(lines)


def _budget_lines(ttq_report: dict) -> list[str]:
  """The time-to-quality series as lines of `budget: MAUVE / perplexity (train time)`, then the crossings."""
  if not ttq_report.get("curves"):
    return []
  lines = ["", "Time to quality (per LD4LG budget; a GPT-2 point is capped at that budget's LD4LG training time):"]
  for series, points in ttq_report["curves"].items():
    cells = []
    for p in points:
      ran = f", {p['train_steps']} steps run" if p["train_steps"] != p["steps"] else ""
      seconds = f"{p['train_seconds'] / 60:.1f} min" if p.get("train_seconds") else "–"
      metrics = " / ".join(f"{p[m]['mean']:.3f}" if m == "mauve" else f"{p[m]['mean']:.1f}"
                           for m in ("mauve", "perplexity") if m in p)
      cells.append(f"{p['steps']}: {metrics} ({seconds}{ran})")
    lines.append(f"- {series} (MAUVE / judge ppl): " + "; ".join(cells))
  for pair, by_metric in ttq_report.get("crossings", {}).items():
    lines.append(f"- {pair}: " + "; ".join(f"{m} {c['status']}" + (f" at {c['steps']:.0f} steps" if c.get("steps")
                                                                   else "") for m, c in by_metric.items()))
  return lines


def plot(report: dict, out_dir: pathlib.Path) -> list[str]:
  """recipe.png: per row, MAUVE, judge perplexity and (if any) class accuracy with std-over-draws error bars."""
  plt = plots.pyplot()
  scored = {n: r["scores"] for n, r in report["rows"].items() if "scores" in r}
  if plt is None or not scored:
    return []
  metrics = [m for m in ("mauve", "perplexity", "class_accuracy") if any(m in s for s in scored.values())]
  fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 0.45 * len(scored) + 1.5), sharey=True)
  names = list(scored)
  for ax, metric in zip(axes if len(metrics) > 1 else [axes], metrics):
    ys = [i for i, n in enumerate(names) if metric in scored[n]]
    ax.errorbar([scored[names[i]][metric]["mean"] for i in ys], ys,
                xerr=[scored[names[i]][metric]["std"] for i in ys], fmt="o", capsize=3)
    if metric == "class_accuracy" and "classifier_accuracy_on_real_validation" in report:
      ax.axvline(report["classifier_accuracy_on_real_validation"], linestyle="--", color="gray",
                 label="probe on real text")
      ax.legend(fontsize=7)
    ax.set(title={"mauve": "MAUVE ↑", "perplexity": "judge perplexity ↓", "class_accuracy": "class accuracy ↑"}[
        metric])
  axes_list = axes if len(metrics) > 1 else [axes]
  axes_list[0].set_yticks(range(len(names)), names)
  axes_list[0].invert_yaxis()
  fig.suptitle(f"Recipe ablation, {report['dataset']}, {report['steps']} steps per row (error bars: std over "
               "draws)", fontsize=9)
  fig.tight_layout()
  fig.savefig(out_dir / "recipe.png", dpi=120)
  plt.close(fig)
  return ["recipe.png"]


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("workdir", "runs/recipe", "Where the codec, judge and every row go.")
  flags.DEFINE_string("data_dir", None, "Raw data folder (<dataset>/...); else $LDLG_DATA_DIR.")
  flags.DEFINE_string("dataset", "sst", "A dataset with configs/<name>.py (:cpu and the rows' variants).")
  flags.DEFINE_enum("preset", "cpu", list(quality.PRESETS), "The quality benchmark's preset (steps, samples, "
                    "draws, autoencoder steps).")
  flags.DEFINE_list("rows", list(DEFAULT_ROWS), f"Rows to run (each compared with `{BASELINE}`, which is one of "
                    "them or was run by an earlier invocation): any of " + ", ".join(ROWS))
  flags.DEFINE_integer("steps", 0, "Every row's training steps (0: the preset's); a row may set its own.")
  flags.DEFINE_integer("draw_size", 0, "Samples per draw (0: the preset's).")


def main(argv):
  del argv
  report = run(FLAGS.workdir, data_dir=FLAGS.data_dir or os.environ.get("LDLG_DATA_DIR"), dataset=FLAGS.dataset,
               preset_name=FLAGS.preset, rows=FLAGS.rows, steps=FLAGS.steps or None,
               draw_size=FLAGS.draw_size or None)
  print(format_table(report))
  print(json.dumps({"comparisons": report["comparisons"], "plots": report["plots"]}, indent=2, default=str))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
