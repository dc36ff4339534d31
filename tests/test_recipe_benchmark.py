"""The recipe ablation: every row's config is its variant plus its overrides (field links kept), sample-only rows
change nothing but sampling, rows share the codec only when they agree with it, the table compares each row with
the baseline; and, extended, the command end to end on the smoke preset."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from ldlg.benchmarks import ab
from ldlg.benchmarks import recipe
from ldlg.config_validation import validate_config
from ldlg.engine.workdir import Workdir

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = recipe.quality.PRESETS["smoke"]


def test_every_row_builds_a_valid_config_of_its_variant_with_its_overrides():
  for name in recipe.ROWS:
    validate_config(recipe.row_config("sst", name, SMOKE))
  assert recipe.row_config("sst", "class_time", SMOKE).model.class_input == "time"
  assert recipe.row_config("sst", "old_default", SMOKE).model.get("class_input", "memory_token") == "memory_token"
  later = recipe.row_config("sst", "later", SMOKE)
  assert (later.diffusion.objective, later.model.self_cond_mode) == ("v", "concat")
  wide = recipe.row_config("sst", "wide_half_steps", SMOKE)
  assert (wide.model.dim, wide.train.num_steps) == (256, 750)  # A row's own steps win over the preset's.
  assert recipe.row_config("sst", "old_default", SMOKE).train.num_steps == SMOKE["steps"]
  with pytest.raises(ValueError, match="unknown recipe row 'nope'"):
    recipe.row_config("sst", "nope", SMOKE)


def test_the_cpu_default_is_the_ablation_s_class_time_w5_row_and_the_baseline_pins_the_recipe_before_it(monkeypatch):
  # The README's quality table re-uses the recipe's rows as the `:cpu` LD4LG: that holds only while the two configs
  # agree in every field.
  monkeypatch.setitem(recipe.ROWS, "as_is", recipe.Row("`:cpu` with no overrides"))
  now = recipe.row_config("sst", "as_is", SMOKE)
  assert json.loads(now.to_json()) == json.loads(recipe.row_config("sst", "class_time_w5", SMOKE).to_json())
  as_is = recipe.row_config("sst", "old_default", SMOKE)
  assert (as_is.model.class_input, as_is.sample.guidance_scale) == ("memory_token", 1.0)
  assert (now.model.class_input, now.sample.guidance_scale) == ("time", 5.0)


def test_overrides_keep_the_config_s_field_links():
  later = recipe.row_config("sst", "later", SMOKE)
  changed = ab.apply_overrides(later, "diffusion.schedule=linear,autoencoder.d_model=64")
  # The denoiser reads the schedule and the latent width through links; a copy that cut them would disagree.
  assert changed.model.noise_schedule == "linear" and changed.model.latent_dim == 64
  assert later.model.noise_schedule == "cosine" and later.model.latent_dim == 128  # The original is untouched.


def test_sample_only_rows_differ_from_their_trained_row_in_sampling_alone(monkeypatch):
  for name, row in recipe.ROWS.items():
    if row.sampled_from:
      assert recipe.check_sampled_from("sst", name, SMOKE) == row.sampled_from
  rows = dict(recipe.ROWS, bad=recipe.Row("retrains", overrides="model.class_input=time,sample.guidance_scale=2.0",
                                           sampled_from="old_default"),
              chained=recipe.Row("x", overrides="model.class_input=time", sampled_from="class_time_w3"))
  monkeypatch.setattr(recipe, "ROWS", rows)
  # A row decoding with a fine-tuned decoder (encoder frozen) reads the same checkpoints too.
  assert recipe.ROWS["class_time_v_dec"].sampled_from == "class_time_v"
  assert "decoder_finetune.noise_std=1.0" in recipe.ROWS["later_dec"].overrides
  with pytest.raises(ValueError, match=r"differs outside sample\.\*, decoder_finetune\.\*: \['model.class_input'\]"):
    recipe.check_sampled_from("sst", "bad", SMOKE)
  with pytest.raises(ValueError, match="must name a row that trains"):
    recipe.check_sampled_from("sst", "chained", SMOKE)


def test_autoregressive_rows_are_matched_to_their_capping_row_and_run_after_it(monkeypatch):
  capped = recipe.row_config("sst", "gpt2_steps3000", SMOKE)
  # The GPT-2 is sized, tokenized and stepped by its LD4LG row's config: the same config, field for field.
  assert json.loads(capped.to_json()) == json.loads(recipe.row_config("sst", "class_time_w5_steps3000",
                                                                      SMOKE).to_json())
  assert capped.train.num_steps == 3000 and recipe.ROWS["gpt2_steps3000"].needs == "class_time_w5_steps3000"
  rows = dict(recipe.ROWS, on_guided=recipe.Row("x", ar_capped_by="class_time_w3"),
              with_overrides=recipe.Row("x", overrides="seed=3", ar_capped_by="class_time"),
              sampling_gpt2=recipe.Row("x", sampled_from="gpt2"))
  monkeypatch.setattr(recipe, "ROWS", rows)
  with pytest.raises(ValueError, match="must name a row that trains LD4LG"):
    recipe.row_config("sst", "on_guided", SMOKE)
  with pytest.raises(ValueError, match="takes neither overrides nor sampled_from"):
    recipe.row_config("sst", "with_overrides", SMOKE)
  with pytest.raises(ValueError, match="must name a row that trains"):
    recipe.check_sampled_from("sst", "sampling_gpt2", SMOKE)


def test_rows_link_the_shared_codec_only_when_they_agree_with_it(tmp_path):
  codec = Workdir(tmp_path / "codec")
  for name in ("autoencoder", "tfds", "latents"):
    (codec.root / name).mkdir(parents=True)
  codec.config_file.write_text(recipe.row_config("sst", "old_default", SMOKE).to_json())
  later = Workdir(tmp_path / "later")
  recipe.link_codec(codec, later, recipe.row_config("sst", "later", SMOKE))
  assert all((later.root / n).is_symlink() for n in ("autoencoder", "tfds", "latents"))
  compressed = Workdir(tmp_path / "compressed")
  recipe.link_codec(codec, compressed, recipe.row_config("sst", "later_compressed", SMOKE))
  assert (compressed.root / "autoencoder").is_symlink() and not (compressed.root / "latents").exists()
  other = ab.apply_overrides(recipe.row_config("sst", "old_default", SMOKE), "autoencoder.d_model=64")
  with pytest.raises(ValueError, match="autoencoder.d_model: saved 128, now 64"):
    recipe.link_codec(codec, Workdir(tmp_path / "other"), other)
  # A row that trains its own autoencoder shares the prepared data only (its latents are its autoencoder's)...
  narrow = Workdir(tmp_path / "narrow")
  recipe.link_codec(codec, narrow, recipe.row_config("sst", "ae_narrow", SMOKE), own_autoencoder=True)
  assert [p.name for p in narrow.root.iterdir()] == ["tfds"] and (narrow.root / "tfds").is_symlink()
  # ...and still agrees with the codec on the tokenizer and the data.
  other_data = ab.apply_overrides(recipe.row_config("sst", "ae_narrow", SMOKE), "data.max_length=32")
  with pytest.raises(ValueError, match="data.max_length: saved 64, now 32"):
    recipe.link_codec(codec, Workdir(tmp_path / "other_data"), other_data, own_autoencoder=True)
  assert recipe.ROWS["ae_narrow"].own_autoencoder and not recipe.ROWS["class_time"].own_autoencoder
  assert recipe.row_config("sst", "ae_narrow", SMOKE).model.latent_dim == 64  # The denoiser reads the new width.


def _scores(mauve, ppl, acc):
  return {"mauve": {"mean": sum(mauve) / len(mauve), "std": 0.01, "values": mauve},
          "perplexity": {"mean": sum(ppl) / len(ppl), "std": 1.0, "values": ppl},
          "perplexity_median": {"mean": sum(ppl) / len(ppl) - 100, "std": 2.0, "values": [p - 100 for p in ppl]},
          "class_accuracy": {"mean": sum(acc) / len(acc), "std": 0.01, "values": acc}}


def test_the_table_compares_every_row_with_the_baseline():
  records = {"old_default": {"scores": _scores([0.2, 0.22, 0.21], [500, 510, 505], [0.5, 0.52, 0.51]),
                         "train_seconds": 600.0, "train_steps": 10, "description": "base"},
             "class_time_w3": {"scores": _scores([0.3, 0.32, 0.31], [500, 512, 503], [0.6, 0.62, 0.61]),
                               "train_seconds": 660.0, "train_steps": 10, "sampled_from": "class_time",
                               "description": "guided"}}
  comp = recipe.comparisons(records)
  assert set(comp) == {"class_time_w3"}
  assert comp["class_time_w3"]["mauve"]["difference"] == pytest.approx(0.1)
  assert comp["class_time_w3"]["mauve"]["p_value"] < 0.001 and comp["class_time_w3"]["perplexity"]["p_value"] > 0.5
  report = {"dataset": "sst", "preset": "smoke", "steps": 10, "draws": [3, 4], "rows": records, "comparisons": comp,
            "judge": {"max_steps": 10, "valid_loss": 5.0}, "reconstruction": {"exact_match": 0.9, "bleu": 98.0},
            "classifier_accuracy_on_real_validation": 0.75}
  table = recipe.format_table(report)
  assert "| class_time_w3 | 0.310 ± 0.010 | 505.0 ± 1.0 | 405.0 ± 2.0 |" in table  # mean, then median
  assert "+0.1 (p " in table and "(same model)" in table and "0.750" in table
  assert "own autoencoder" not in table
  # A row on its own autoencoder shows its reconstruction, and is flagged when its decoder barely reads the latents.
  records["ae_narrow"] = dict(records["class_time_w3"], sampled_from=None,
                              reconstruction={"exact_match": 0.006, "bleu": 10.6, "num_sentences": 500})
  records["ae_wide"] = dict(records["ae_narrow"], reconstruction={"exact_match": 0.978, "bleu": 99.7})
  table = recipe.format_table(dict(report, comparisons=recipe.comparisons(records)))
  assert "`ae_narrow` exact 0.6%, BLEU 10.6; `ae_wide` exact 97.8%, BLEU 99.7." in table
  assert "Warning: `ae_narrow`: the autoencoder reconstructs under 50%" in table


def test_budget_series_place_each_gpt2_point_at_its_capping_row_s_budget():
  def row(mauve, ppl, steps, seconds, capped_by=None):
    return {"scores": _scores([mauve] * 3, [ppl] * 3, [0.7] * 3), "train_steps": steps, "train_seconds": seconds,
            "ar_capped_by": capped_by}
  records = {"class_time": row(0.28, 509, 1500, 1165.0), "class_time_w5": row(0.18, 437, 1500, 1165.0),
             "class_time_w5_steps3000": row(0.30, 400, 3000, 1000.0),
             "gpt2": row(0.57, 421, 705, 1165.0, "class_time"),
             "gpt2_steps3000": row(0.55, 450, 600, 1000.0, "class_time_w5_steps3000")}
  curves = recipe.budget_curves(records)
  default, w1, gpt2 = (curves[s] for s in recipe.BUDGET_SERIES)
  assert [(p["steps"], p["row"]) for p in default] == [(1500, "class_time_w5"), (3000, "class_time_w5_steps3000")]
  assert [p["row"] for p in w1] == ["class_time"]  # Unscored rows are left out of their series.
  assert [(p["steps"], p["train_steps"]) for p in gpt2] == [(1500, 705), (3000, 600)]
  crossings = recipe.ttq.crossings(curves)
  # MAUVE: LD4LG 0.18 -> 0.30 against the GPT-2's 0.57 -> 0.55; straight lines in log(steps) meet ahead.
  assert crossings["LD4LG (`:cpu` default, w = 5) vs GPT-2 baseline"]["mauve"]["status"] == "ahead_of_range"
  # Perplexity: LD4LG was behind (437 > 421) and is ahead at 3,000 (400 < 450): measured, not extrapolated.
  assert crossings["LD4LG (`:cpu` default, w = 5) vs GPT-2 baseline"]["perplexity"] == {"status": "crossed",
                                                                                         "steps": 3000}
  lines = "\n".join(recipe._budget_lines({"curves": curves, "crossings": crossings}))
  assert "- GPT-2 baseline (MAUVE / judge ppl): 1500: 0.570 / 421.0 (19.4 min, 705 steps run)" in lines
  assert "perplexity crossed at 3000 steps" in lines


@pytest.mark.extended
@pytest.mark.slow
def test_recipe_benchmark_smoke(tmp_path, data_dir):
  cmd = [sys.executable, "-m", "ldlg.benchmarks.recipe", f"--workdir={tmp_path}", f"--data_dir={data_dir}",
         "--preset=smoke", "--dataset=sst", "--rows=old_default,class_time_w3,later,gpt2,ae_narrow"]
  run = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                       text=True, timeout=2400)
  assert run.returncode == 0, run.stderr[-4000:]
  report = json.loads((tmp_path / "sst" / "recipe.json").read_text())
  assert list(report["rows"]) == ["old_default", "class_time", "class_time_w3", "later", "gpt2",
                                  "ae_narrow"]  # Needed rows too.
  for name, row in report["rows"].items():
    assert 0 < row["scores"]["mauve"]["mean"] <= 1, name
    assert ("class_accuracy" in row["scores"]) == (name != "gpt2"), name  # The GPT-2 is unconditional.
  assert set(report["comparisons"]) == {"class_time", "class_time_w3", "later", "gpt2", "ae_narrow"}
  gpt2 = report["rows"]["gpt2"]
  assert gpt2["ar_capped_by"] == "class_time" and gpt2["train_steps"] == SMOKE["steps"]  # Its steps, within the cap.
  rows = tmp_path / "sst" / "rows"
  assert (rows / "later" / "latents").is_symlink()  # One codec for every row...
  assert (rows / "class_time_w3" / "checkpoints").resolve() == (rows / "class_time" / "checkpoints").resolve()
  assert not (rows / "class_time_w3" / "metrics.jsonl").exists()  # ...and the guided row trained nothing.
  assert "| class_time_w3 |" in (tmp_path / "recipe.md").read_text()
  # A row on its own autoencoder trained it (and its latents, 64 wide) in its workdir, and reports its reconstruction.
  narrow = rows / "ae_narrow"
  assert not (narrow / "autoencoder").is_symlink() and not (narrow / "latents").is_symlink()
  assert json.loads((narrow / "autoencoder" / "config.json").read_text())["d_model"] == 64
  assert 0 <= report["rows"]["ae_narrow"]["reconstruction"]["exact_match"] <= 1
  assert "`ae_narrow` exact" in (tmp_path / "recipe.md").read_text()
