"""The whole offline pipeline on the tiny config: own tokenizer + BART → latents → denoiser → text → metrics."""

import json
import math
import pathlib

import pytest

from configs import tiny
from ldlg import methods
from ldlg import pipeline
from ldlg.methods.gaussian.text_sampler import TextSampler
from ldlg.engine.workdir import Workdir


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tiny_cli_run, data_dir, caplog):
  """The CLI's tiny pipeline run (one device, tests/conftest.py) wrote everything a user reads."""
  config = tiny.get_config()
  wd = Workdir(tiny_cli_run)
  assert (wd.autoencoder_dir / "reconstruction.json").exists()
  manifest = json.loads((wd.latents_dir("validation") / "manifest.json").read_text())
  assert manifest["complete"] and manifest["num_examples"] == config.data.max_examples
  assert manifest["latent_dim"] == config.model.latent_dim

  records = [json.loads(l) for l in wd.samples_file.read_text().splitlines()]
  assert len(records) == config.sample.num_samples
  assert all(r["text"] and r["seed"] == config.sample.seed and 1 <= r["length"] <= 32 for r in records)

  metrics = json.loads(wd.metrics_json.read_text())
  for key in ("mauve", "diversity", "memorization", "unique_tokens"):
    assert set(metrics[key]) >= {"mean", "std"}, key
    assert len(metrics[key]["values"]) == config.eval.num_draws
  assert metrics["featurizer"] == "all-MiniLM-L6-v2"
  assert 0 < metrics["mauve"]["mean"] <= 1 and 0 <= metrics["memorization"]["mean"] <= 1
  # The held-out latents' likelihood through the probability-flow ODE and the VLB (nats per dimension).
  latent_nll = metrics["latent_likelihood"]
  assert latent_nll["num_examples"] == config.eval.likelihood_examples and latent_nll["ode_mean_nfe"] > 0
  # Finite; large for a 20-step model, whose x0 estimate near t = 0 is far off (the exactness of these numbers is
  # checked against closed forms in tests/test_continuous_time.py).
  assert all(math.isfinite(latent_nll[k]) for k in ("ode_nll_per_dim", "vlb_per_dim", "ode_nll_per_token"))

  # Same seed, same texts: sample again from the same checkpoint, in this process, which has 2 devices (the run
  # had one): the samples do not depend on the device count.
  sampler = TextSampler.from_workdir(config, wd)
  again = sampler.sample(sampler.load_params(), num_samples=config.sample.num_samples, seed=config.sample.seed)
  assert [r["text"] for r in again] == [r["text"] for r in records]

  # Everything is done: a second pipeline run only reports that.
  caplog.set_level("INFO")
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  assert all(f"Stage {s.name}: already done" in caplog.text for s in methods.stages(config))


@pytest.mark.slow
def test_colab_notebook_cells_run(tiny_cli_run):
  """The sampling notebook's code (install cells aside) runs against a real workdir."""
  wd = Workdir(tiny_cli_run)
  notebook = json.loads((pathlib.Path(__file__).parents[1] / "launch" / "sample_colab.ipynb").read_text())
  namespace = {}
  for cell in notebook["cells"]:
    source = "".join(cell["source"])
    shell_lines = any(line.lstrip().startswith(("%", "!")) for line in source.splitlines())
    if cell["cell_type"] != "code" or shell_lines:  # Installs: not for a test.
      continue
    source = source.replace('pathlib.Path("runs/e2e_cpu")', f'pathlib.Path({str(wd.root)!r})')
    exec(compile(source, "sample_colab.ipynb", "exec"), namespace)  # pylint: disable=exec-used
  assert len(namespace["records"]) == 8 and all("text" in r for r in namespace["records"])
  # The trajectory cells: decoded x̂0 at 9 steps of 3 samples, and the token changes between them.
  trajectory = namespace["trajectory"]
  assert trajectory["steps"][0] == 0 and trajectory["steps"][-1] == 49 and len(trajectory["steps"]) == 9
  assert all(len(texts) == 3 for texts in trajectory["texts"]) and len(trajectory["final"]) == 3
  assert trajectory["texts"][-1] == trajectory["final"]  # At the last DDIM step the sample is the estimate.
  assert len(trajectory["tokens_changed"]) == 8 and all(c >= 0 for row in trajectory["tokens_changed"] for c in row)


@pytest.mark.slow
def test_bart_seq2seq_baseline_fine_tunes_a_pretrained_bart_and_scores_one_output_per_source(
    tiny_cli_run, tmp_path, data_dir, caplog):
  """The AR seq2seq baseline from an existing BART (the tiny run's, as a user passes facebook/bart-base): fine-tuned
  on (meaning representation -> text) by the engine, one beam-search output per distinct eval source, scored."""
  import jax
  import numpy as np
  from ldlg.codecs.bart import codec as bart_codec
  from ldlg.methods.bart_seq2seq import stages as bart_seq2seq_stages
  from ldlg.methods.seq2seq.stages import eval_sources
  config = tiny.get_config("ar_seq2seq")
  config.autoencoder.update(pretrain=False, name=str(Workdir(tiny_cli_run).autoencoder_dir))
  wd = Workdir(tmp_path / "wd")
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  # Fine-tuned from the pretrained weights: the loss falls, and the saved params moved away from them.
  log = [json.loads(l) for l in (wd.root / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in log] == [5, 10, 15, 20] and log[-1]["loss"] < log[0]["loss"]
  pretrained = bart_codec.load_autoencoder(config, wd)
  finetuned, meta = bart_seq2seq_stages.load_finetuned(config, wd)
  assert meta["autoencoder"] == pretrained.name
  moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(pretrained.params),
                                                      jax.tree.leaves(finetuned.params))]
  assert max(moved) > 0
  # One output per source, in the eval split's order of distinct sources, scored as candidate 0 ("first").
  sources = [s for s, _ in eval_sources(config, wd, data_dir)]
  records = [json.loads(l) for l in wd.samples_file.read_text().splitlines()]
  assert [(r["source_index"], r["candidate"], r["source"]) for r in records] == [
      (i, 0, s) for i, s in enumerate(sources)]
  assert len(sources) == config.sample.num_sources and records[0]["seconds_per_source"] > 0
  metrics = json.loads(wd.metrics_json.read_text())
  assert set(metrics["seq2seq"]) == {"first"} and metrics["num_candidates"] == 1
  assert metrics["seq2seq"]["first"]["num_sources"] == len(sources)
  caplog.set_level("INFO")
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  assert all(f"Stage {s.name}: already done" in caplog.text for s in methods.stages(config))
