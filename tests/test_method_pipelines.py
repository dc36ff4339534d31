"""Every registered method runs through the same harness: the AR baseline and masked diffusion (MDLM), each
end to end on the tiny config (tokenizer -> engine trainer -> sample runner -> evaluate with its likelihood)."""

import json
from unittest import mock

import numpy as np
import pytest

from configs import tiny
from ldlg import methods
from ldlg import pipeline
from ldlg.benchmarks import likelihood_curve
from ldlg.engine.workdir import Workdir


@pytest.mark.slow
@pytest.mark.parametrize("variant,likelihood_key", [("ar", "perplexity"), ("mdlm", "perplexity_bound")])
def test_tiny_pipeline_of_another_method(variant, likelihood_key, tmp_path, data_dir, caplog):
  config = tiny.get_config(variant)
  wd = Workdir(tmp_path / "wd")
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  records = [json.loads(l) for l in wd.samples_file.read_text().splitlines()]
  assert len(records) == config.sample.num_samples and all(r["seed"] == config.sample.seed for r in records)
  assert sum(bool(r["text"]) for r in records) == len(records)
  metrics = json.loads(wd.metrics_json.read_text())
  assert set(metrics["mauve"]) >= {"mean", "std"}
  likelihood = metrics["likelihood"]
  # A valid (finite, > 1) figure; after 20 steps MDLM's bound is far above uniform because the pad positions it
  # models (a deterministic function of the text) are not learned yet.
  assert likelihood["split"] == "validation" and 1.0 < likelihood[likelihood_key] < float("inf")
  # Trained by the engine: its checkpoints and deterministic metric log in the usual places.
  log_dir = wd.root / "ar_model" if variant == "ar" else wd.root
  steps = [json.loads(l)["step"] for l in (log_dir / "metrics.jsonl").read_text().splitlines()]
  assert steps == [5, 10, 15, 20]
  # Every stage is done: a second run only says so.
  caplog.set_level("INFO")
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  assert all(f"Stage {s.name}: already done" in caplog.text for s in methods.stages(config))
  # The likelihood of kept checkpoints: the final one's is the number evaluate reported, an earlier checkpoint's
  # is its own (checked for the AR run, whose restore path is the benchmark's own; MDLM's is the sample stage's),
  # and a re-run reuses what was scored.
  assert methods.get(config).checkpoint_steps(config, wd) == [10, 20]
  steps = [10, 20] if variant == "ar" else [20]
  curve = likelihood_curve.run([wd.root], data_dir, tmp_path / "curve", steps=steps)
  points = curve["runs"]["wd"]["points"]
  assert [p["step"] for p in points] == steps and points[0]["exact"] == (variant == "ar")
  final = likelihood["nll_per_token"] if variant == "ar" else likelihood["nelbo_per_token"]
  np.testing.assert_allclose(points[-1]["nll_per_token"], final, rtol=1e-5)
  if variant == "ar":
    assert abs(points[0]["nll_per_token"] - final) > 1e-3
  with mock.patch.object(methods.get(config), "token_nll", side_effect=AssertionError("recomputed")):
    assert likelihood_curve.run([wd.root], data_dir, tmp_path / "curve", steps=steps)["runs"]["wd"]["points"] == points
  with pytest.raises(ValueError, match=r"no checkpoint for steps \[5\].*kept checkpoints are \[10, 20\]"):
    likelihood_curve.run([wd.root], data_dir, tmp_path / "curve5", steps=[5])


def test_likelihood_curve_divides_by_the_exact_run_at_the_steps_both_have():
  point = lambda step, ppl, exact: {"step": step, "nll_per_token": float(np.log(ppl)), "perplexity": ppl,
                                    "exact": exact}
  runs = {"mdlm": {"points": [point(500, 30.0, False), point(1000, 12.0, False)]},
          "ar": {"points": [point(1000, 6.0, True), point(1500, 5.0, True)]}}
  assert likelihood_curve.pick_reference(runs) == "ar"
  assert likelihood_curve.ratios(runs, "ar") == {"mdlm": [{"step": 1000, "perplexity_ratio": 2.0}]}
  assert likelihood_curve.pick_reference({"mdlm": runs["mdlm"]}) is None


def test_every_method_is_registered_under_its_name():
  for name in methods.MODULES:
    assert methods.get(name).name == name
  with pytest.raises(ValueError, match="unknown method 'nope'"):
    methods.get("nope")


@pytest.mark.slow
def test_tiny_diffuseq_pipeline_writes_candidates_per_source_and_the_seq2seq_table(tmp_path, data_dir, caplog):
  from ldlg.data.seq2seq import group_references
  from ldlg.data.splits import load_texts
  config = tiny.get_config("diffuseq")
  wd = Workdir(tmp_path / "wd")
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  records = [json.loads(l) for l in wd.samples_file.read_text().splitlines()]
  k, n = config.sample.num_candidates, config.sample.num_sources
  # Candidate c of source s is sample s * k + c, for the first n distinct validation sources, in order.
  sources = [s for s, _ in group_references(load_texts(config, data_dir, wd, "validation"))[:n]]
  assert [(r["source_index"], r["candidate"]) for r in records] == [(s, c) for s in range(n) for c in range(k)]
  assert [r["source"] for r in records] == [s for s in sources for _ in range(k)]
  assert records[0]["seconds_per_source"] > 0 and records[0]["checkpoint_step"] == config.train.num_steps
  metrics = json.loads(wd.metrics_json.read_text())
  for system in ("first", "mbr"):
    report = metrics["seq2seq"][system]
    assert report["num_sources"] == n and 0.0 <= report["slot_error_rate"] <= 1.0
    assert 0.0 <= report["bleu"] <= 100.0 and report["bertscore_model"]
  assert metrics["num_candidates"] == k
  # Trained with the importance sampler of t (its loss reports whether the sampler is warm yet).
  log = [json.loads(l) for l in (wd.root / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in log] == [5, 10, 15, 20] and all("importance_warm" in l for l in log)
  caplog.set_level("INFO")
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  assert all(f"Stage {s.name}: already done" in caplog.text for s in methods.stages(config))


@pytest.mark.slow
def test_tiny_ld4lg_seq2seq_pipeline_conditions_on_each_source(tmp_path, data_dir, caplog):
  from ldlg.codecs.bart import sources as sources_lib
  config = tiny.get_config("ld4lg_seq2seq")
  wd = Workdir(tmp_path / "wd")
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  # The training split's distinct sources were encoded once each, for the latents there are now.
  assert sources_lib.sources_done(wd, config.data.train_split)
  records = [json.loads(l) for l in wd.samples_file.read_text().splitlines()]
  k, n = config.sample.num_candidates, config.sample.num_sources
  assert [(r["source_index"], r["candidate"]) for r in records] == [(s, c) for s in range(n) for c in range(k)]
  assert len({r["source"] for r in records}) == n
  assert records[0]["guidance_scale"] == 2.0 and records[0]["checkpoint_step"] == config.train.num_steps
  metrics = json.loads(wd.metrics_json.read_text())
  assert {"first", "mbr"} <= set(metrics["seq2seq"]) and metrics["num_candidates"] == k
  assert metrics["seq2seq"]["first"]["num_sources"] == n
  # Each candidate's length was drawn from its own source's row of P(target length | source length).
  from ldlg.codecs.bart import codec as bart_codec
  from ldlg.methods.gaussian import seq2seq_stages
  lengths = seq2seq_stages.length_model(config, wd)
  sources = [records[i * k]["source"] for i in range(n)]
  _, source_mask = bart_codec.load_autoencoder(config, wd).encode(sources)
  source_lengths = np.asarray(source_mask).sum(axis=1)
  assert records[0]["length_from"] == "source" and records[0]["length_bucket"] == config.sample.length_bucket > 0
  assert all(lengths.row(source_lengths[r["source_index"]])[r["length"]] > 0 for r in records)
  assert len({tuple(lengths.row(s)) for s in source_lengths}) > 1  # The rows differ: the draw reads the source.
  caplog.set_level("INFO")
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  assert all(f"Stage {s.name}: already done" in caplog.text for s in methods.stages(config))
