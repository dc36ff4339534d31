"""Training job: pmap equals one device, SIGTERM + resume equals an uninterrupted run, bad configs fail fast."""

import dataclasses
import json
import os
import pathlib
import signal

import jax
import ml_collections
import numpy as np
import pytest

from configs import tiny
from ldlg import pipeline
from ldlg.codecs.bart import codec as bart_codec
from ldlg.engine import checkpoints as checkpointing
from ldlg.engine import parallel
from ldlg.engine import signals
from ldlg.engine import train_state as train_state_lib
from ldlg.engine import trainer
from ldlg.methods.gaussian import stages as gaussian_stages
from ldlg.methods.gaussian.method import GaussianDiffusion
from ldlg.data import precompute as precompute_lib
from ldlg.data import testing as data_testing
from ldlg.engine.workdir import Workdir
from tests.helpers import subprocesses


def tiny_config(**train_overrides):
  config = tiny.get_config()
  config.train.update(train_overrides)
  return config


@pytest.fixture(scope="module")
def latents_root(tmp_path_factory) -> pathlib.Path:
  """Latents of 96 synthetic sentences from the hashing encoder (d = the tiny model's latent_dim)."""
  config = tiny.get_config()
  records = data_testing.synthetic_records(96, seed=0, max_words=20)
  tokenizer = data_testing.make_word_tokenizer([r["text"] for r in records], model_max_length=32)
  encoder = data_testing.HashingAutoencoder(tokenizer, latent_dim=config.model.latent_dim,
                                            max_length=config.data.max_length)
  root = tmp_path_factory.mktemp("latents")
  for split in ("validation",):
    precompute_lib.precompute_latents(encoder, records, root, split=split, shard_size=64, batch_size=32,
                                      compute_stats=True, show_progress=False)
  return root


def workdir_with_latents(tmp_path: pathlib.Path, latents_root: pathlib.Path) -> Workdir:
  wd = Workdir(tmp_path / "wd")
  (wd.root / "latents").mkdir(parents=True)
  os.symlink(latents_root / "validation", wd.latents_dir("validation"))
  return wd


def final_params(wd: Workdir):
  ckpt = checkpointing.Checkpointer(wd.checkpoint_dir)
  meta = ckpt.restore_meta()
  step = ckpt.latest_step()
  config = tiny.get_config()
  abstract = GaussianDiffusion.from_config(config).init_params(jax.random.PRNGKey(0), abstract=True)
  optim = ml_collections.ConfigDict(meta["config"]["optim"])  # The optimizer the run was trained with.
  tx = train_state_lib.make_optimizer(optim, meta["config"]["train"]["num_steps"])
  target = {"step": jax.ShapeDtypeStruct((), np.int32), "params": abstract, "ema_params": abstract,
            "opt_state": jax.eval_shape(tx.init, abstract)}
  saved, _ = ckpt.restore(target)
  ckpt.close()
  return step, saved


def test_pmap_two_devices_equals_one_device(latents_root, tmp_path):
  assert jax.local_device_count() == 2, "conftest forces 2 CPU devices"
  config = tiny_config(batch_size=8)
  wd = workdir_with_latents(tmp_path, latents_root)
  store = bart_codec.open_latent_store(config, wd, "validation")
  params = GaussianDiffusion.from_config(config).init_params(jax.random.PRNGKey(1))
  # The output layer starts at zero; perturb every weight so all gradients are non-trivial.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree.unflatten(treedef, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  tx = train_state_lib.make_optimizer(config.optim, config.train.num_steps)
  rng = jax.random.PRNGKey(3)

  def run(num_devices):
    devices = jax.local_devices()[:num_devices]
    state = parallel.replicate(train_state_lib.TrainState.create(params, tx), devices)
    job, _, _ = gaussian_stages.train_job(config, wd, devices=devices)
    step_fn = trainer.make_p_train_step(dataclasses.replace(job, rng=rng), devices)
    batches = store.batches(8, num_local_devices=num_devices, seed=0)
    losses = []
    for _ in range(3):
      state, metrics = step_fn(state, next(batches))
      losses.append(float(metrics["loss"][0]))
    return parallel.unreplicate(state), losses

  one, losses_one = run(1)
  two, losses_two = run(2)
  np.testing.assert_allclose(losses_one, losses_two, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert int(one.step) == int(two.step) == 3


def _main_cmd(wd: Workdir, *overrides: str) -> list[str]:
  return subprocesses.cli_command(wd.root, *overrides, mode="train")


@pytest.mark.slow
def test_sigterm_then_resume_is_bit_identical_to_uninterrupted(latents_root, tmp_path):
  num_steps = 200
  overrides = (f"--config.train.num_steps={num_steps}", "--config.train.log_every=1",
               f"--config.train.ckpt_every={num_steps}")
  env = dict(subprocesses.CLI_ENV, XLA_FLAGS=os.environ["XLA_FLAGS"])  # Two devices: resume under pmap.

  interrupted = workdir_with_latents(tmp_path / "a", latents_root)
  # Preempt once training is under way (a few steps logged).
  code, out = subprocesses.interrupt_when(
      _main_cmd(interrupted, *overrides),
      lambda: interrupted.metrics_file.exists() and len(interrupted.metrics_file.read_text().splitlines()) >= 3,
      signal.SIGTERM, env=env, timeout=600)
  # Saved, then a non-zero exit that says what happened and what to do (not "0": the run is not finished).
  assert code == signals.EXIT_CODE_INTERRUPTED, out[-3000:]
  assert "interrupted" in out and "rerun" in out, out[-3000:]
  stopped_at, _ = final_params(interrupted)
  assert 3 <= stopped_at < num_steps, f"the SIGTERM should have stopped training early (at {stopped_at})"

  resumed = subprocesses.run_cli(_main_cmd(interrupted, *overrides), env=env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from step {stopped_at}" in resumed.stderr

  straight = workdir_with_latents(tmp_path / "b", latents_root)
  run = subprocesses.run_cli(_main_cmd(straight, *overrides), env=env)
  assert run.returncode == 0, run.stderr[-3000:]

  step_a, state_a = final_params(interrupted)
  step_b, state_b = final_params(straight)
  assert step_a == step_b == num_steps
  for key in ("params", "ema_params", "opt_state"):
    for a, b in zip(jax.tree.leaves(state_a[key]), jax.tree.leaves(state_b[key])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_train_writes_metrics_and_checkpoint_and_compiles_once(latents_root, tmp_path, monkeypatch):
  traces = []
  original = trainer.train_step
  monkeypatch.setattr(trainer, "train_step", lambda *a, **k: traces.append(1) or original(*a, **k))
  config = tiny_config(num_steps=10, log_every=5, ckpt_every=5)
  wd = workdir_with_latents(tmp_path, latents_root)
  state = gaussian_stages.train(config, wd).state
  assert int(state.step) == 10
  assert len(traces) == 1, f"the train step was traced {len(traces)} times in 10 steps"
  lines = [json.loads(l) for l in wd.metrics_file.read_text().splitlines()]
  assert [l["step"] for l in lines] == [5, 10]
  # Timings go to TensorBoard only, so that the JSONL log of a resumed run equals an uninterrupted one's.
  assert all(np.isfinite(l["loss"]) and l["grad_norm"] > 0 and l["param_norm"] > 0 for l in lines)
  ckpt = checkpointing.Checkpointer(wd.checkpoint_dir)
  assert ckpt.all_steps() == [5, 10]
  meta = ckpt.restore_meta()
  assert meta["data_position"] == 10 and len(meta["stats"]["mean"]) == config.model.latent_dim
  # The checkpoint stands alone for sampling: stats, length histogram, latent identity, config.
  assert sum(meta["length_counts"]) == 96 and meta["latents"]["latent_dim"] == config.model.latent_dim
  assert meta["config"]["model"]["dim"] == config.model.dim
  ckpt.close()


def test_non_finite_loss_stops_with_last_good_checkpoint(latents_root, tmp_path):
  config = tiny_config(num_steps=10, log_every=1, ckpt_every=2)
  config.optim.lr = 1e30  # Diverges within a few steps.
  config.optim.grad_clip = 0.0
  wd = workdir_with_latents(tmp_path, latents_root)
  with pytest.raises(FloatingPointError, match="non-finite.*last good checkpoint"):
    gaussian_stages.train(config, wd)
  ckpt = checkpointing.Checkpointer(wd.checkpoint_dir)
  steps = ckpt.all_steps()
  ckpt.close()
  lines = [json.loads(l) for l in wd.metrics_file.read_text().splitlines()] if wd.metrics_file.exists() else []
  assert all(isinstance(l["loss"], float) for l in lines)  # Only finite losses were logged.
  if steps:
    _, saved = final_params(wd)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved["params"]))


def test_batch_not_divisible_by_devices(latents_root, tmp_path):
  config = tiny_config(batch_size=7)
  with pytest.raises(ValueError, match="batch_size=7 is not divisible by the 2 devices"):
    gaussian_stages.train(config, workdir_with_latents(tmp_path, latents_root))


def test_latent_width_mismatch(latents_root, tmp_path):
  config = tiny_config()
  config.model.latent_dim = 48
  with pytest.raises(ValueError, match="latent_dim=48 does not match the latent width 32"):
    gaussian_stages.train(config, workdir_with_latents(tmp_path, latents_root))


def test_missing_stage_names_the_stage_to_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="precompute stage has not run.*--mode=precompute"):
    pipeline.run("train", tiny_config(), tmp_path / "empty")


def test_unknown_dataset(tmp_path, data_dir):
  config = tiny_config()
  config.data.name = "imagenet"
  with pytest.raises(ValueError, match="imagenet.*e2e"):
    pipeline.run("pretrain_autoencoder", config, tmp_path / "wd", data_dir=data_dir)


def test_changed_config_on_resume_names_the_fields(tmp_path):
  wd = tmp_path / "wd"
  config = tiny_config()
  with pytest.raises(FileNotFoundError):
    pipeline.run("train", config, wd)
  changed = tiny_config(batch_size=16, num_steps=999)  # num_steps may change; batch_size may not.
  changed.model.dim = 64
  with pytest.raises(ValueError, match=r"(?s)model\.dim: saved 32, now 64.*train\.batch_size: saved 8, now 16") as e:
    pipeline.run("train", changed, wd)
  assert "num_steps" not in str(e.value)


def test_workdir_made_before_a_field_was_added_still_resumes():
  """A saved config without a later-added field matches a current one holding its behaviour-preserving value;
  any other value of it is a difference."""
  from ldlg.engine import workdir as workdir_lib
  current = json.loads(tiny_config().to_json())
  saved = json.loads(tiny_config().to_json())
  del saved["diffusion"]["self_condition_mode"]
  del saved["data"]["group_by_length"], saved["autoencoder"]["group_by_length"]
  assert workdir_lib.config_differences(saved, current) == []
  current["diffusion"]["self_condition_mode"] = "per_batch"
  assert workdir_lib.config_differences(saved, current) == [
      "diffusion.self_condition_mode: saved '<absent>', now 'per_batch'"]
