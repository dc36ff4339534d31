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
  with pytest.raises(ValueError, match=r"differs outside sample\.\*: \['model.class_input'\]"):
    recipe.check_sampled_from("sst", "bad", SMOKE)
  with pytest.raises(ValueError, match="must name a row that trains"):
    recipe.check_sampled_from("sst", "chained", SMOKE)


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


def _scores(mauve, ppl, acc):
  return {"mauve": {"mean": sum(mauve) / len(mauve), "std": 0.01, "values": mauve},
          "perplexity": {"mean": sum(ppl) / len(ppl), "std": 1.0, "values": ppl},
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
  assert "| class_time_w3 | 0.310 ± 0.010 | 505.0 ± 1.0 |" in table
  assert "+0.1 (p " in table and "(same model)" in table and "0.750" in table


@pytest.mark.extended
@pytest.mark.slow
def test_recipe_benchmark_smoke(tmp_path, data_dir):
  cmd = [sys.executable, "-m", "ldlg.benchmarks.recipe", f"--workdir={tmp_path}", f"--data_dir={data_dir}",
         "--preset=smoke", "--dataset=sst", "--rows=old_default,class_time_w3,later"]
  run = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                       text=True, timeout=2400)
  assert run.returncode == 0, run.stderr[-4000:]
  report = json.loads((tmp_path / "sst" / "recipe.json").read_text())
  assert list(report["rows"]) == ["old_default", "class_time", "class_time_w3", "later"]  # The guided row's model too.
  for name, row in report["rows"].items():
    assert 0 < row["scores"]["mauve"]["mean"] <= 1 and "class_accuracy" in row["scores"], name
  assert set(report["comparisons"]) == {"class_time", "class_time_w3", "later"}
  rows = tmp_path / "sst" / "rows"
  assert (rows / "later" / "latents").is_symlink()  # One codec for every row...
  assert (rows / "class_time_w3" / "checkpoints").resolve() == (rows / "class_time" / "checkpoints").resolve()
  assert not (rows / "class_time_w3" / "metrics.jsonl").exists()  # ...and the guided row trained nothing.
  assert "| class_time_w3 |" in (tmp_path / "recipe.md").read_text()
