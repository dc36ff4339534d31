"""The engine's trainer on a toy regression (fast to compile): resume = uninterrupted run, damaged checkpoints
fall back to the previous intact one, non-finite updates and divergence stop without a bad checkpoint, the metric
log is trimmed on resume, and registries fail naming the choices."""

import itertools
import json
import logging
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ldlg.engine import checkpoints
from ldlg.engine import parallel
from ldlg.engine import train_state as train_state_lib
from ldlg.engine import trainer
from ldlg.engine.registry import Registry
from ldlg.methods.base import per_example_keys

DIM = 4


def toy_loss(params, rng, batch):
  """Per-example noisy regression of x onto a target: keyed on example_index, so device-split invariant."""
  (k,) = per_example_keys(rng, batch["example_index"], 1)
  noise = jax.vmap(lambda key: 0.01 * jax.random.normal(key, (DIM,)))(k)
  pred = batch["x"] @ params["w"] + params["b"]
  loss = jnp.mean(jnp.square(pred[:, None] + noise - batch["y"][:, None]))
  return loss, {"loss": loss}


def toy_batches(num_devices, batch_size=8, seed=0):
  def batches(start_step):
    for step in itertools.count(start_step):
      r = np.random.default_rng([seed, step])
      x = r.normal(size=(batch_size, DIM)).astype(np.float32)
      y = x @ np.arange(1, DIM + 1, dtype=np.float32) + 0.5
      yield parallel.shard_batch({"x": x, "y": y, "example_index": np.arange(batch_size)}, num_devices)
  return batches


def toy_job(num_devices=1, lr=0.05, **optim):
  config = ml_collections.ConfigDict(dict(lr=lr, warmup_steps=0, schedule="constant", weight_decay=0.0, b1=0.9,
                                          b2=0.999, eps=1e-8, grad_clip=0.0, **optim))
  return trainer.TrainJob(init_params=lambda rng: {"w": jnp.zeros((DIM,)), "b": jnp.zeros(())},
                          loss_fn=toy_loss, batches=toy_batches(num_devices), optim=config,
                          init_rng=jax.random.PRNGKey(0), rng=jax.random.PRNGKey(1), ema_decay=0.9)


def toy_run(directory, num_steps=12, num_devices=1, **kw):
  return trainer.TrainRun(directory=directory, num_steps=num_steps, log_every=2, ckpt_every=4,
                          devices=jax.local_devices()[:num_devices], desc="toy", **kw)


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.to_dict()))]


def test_resume_equals_uninterrupted_and_log_is_trimmed(tmp_path):
  straight = trainer.train(toy_job(), toy_run(tmp_path / "a"))
  assert straight.stopped_by == "num_steps" and straight.step == 12
  first = trainer.train(toy_job(), toy_run(tmp_path / "b", stop_at=5))
  assert first.stopped_by == "stop_at" and first.step == 5
  with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # Written after the checkpoint, before a "crash".
    f.write(json.dumps({"step": 6, "loss": 0.0}) + "\n" + '{"step": 7, "lo')
  second = trainer.train(toy_job(), toy_run(tmp_path / "b"))
  assert second.resumed_from == 5 and second.step == 12
  for a, b in zip(leaves(straight.state), leaves(second.state)):
    np.testing.assert_array_equal(a, b)
  # The JSONL log is deterministic: a resumed run's log equals the uninterrupted one's, line for line,
  # except the stop_at session's extra final log line at step 5.
  log_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
  log_b = [l for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if json.loads(l)["step"] != 5]
  assert log_a == log_b


def test_a_stop_signal_at_any_point_of_a_step_ends_with_a_checkpoint(tmp_path):
  # The SIGTERM lands late in step 3: after the step decided not to save (ckpt_every=4), while its hooks run
  # (the same window as writing the log line, where the CLI test's poller fires). The run must still stop
  # with a checkpoint, at step 4, and resume to the uninterrupted result.
  sigterm_in_step_3 = (3, lambda step, get_state: os.kill(os.getpid(), signal.SIGTERM))
  first = trainer.train(toy_job(), toy_run(tmp_path / "b", hooks=[sigterm_in_step_3]))
  assert first.stopped_by == "signal" and first.step == 4
  assert checkpoints.Checkpointer(tmp_path / "b" / "checkpoints").latest_step() == 4
  second = trainer.train(toy_job(), toy_run(tmp_path / "b"))
  assert second.resumed_from == 4 and second.step == 12
  straight = trainer.train(toy_job(), toy_run(tmp_path / "a"))
  for a, b in zip(leaves(straight.state), leaves(second.state)):
    np.testing.assert_array_equal(a, b)


def test_two_devices_equal_one(tmp_path):
  one = trainer.train(toy_job(1), toy_run(tmp_path / "a", num_steps=6, num_devices=1))
  two = trainer.train(toy_job(2), toy_run(tmp_path / "b", num_steps=6, num_devices=2))
  for a, b in zip(leaves(one.state), leaves(two.state)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _largest_file(step_dir):
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate_array", "delete_metadata", "delete_meta_item"])
def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, damage, caplog):
  trainer.train(toy_job(), toy_run(tmp_path, num_steps=8))  # Checkpoints at 4 and 8.
  latest = tmp_path / "checkpoints" / "8"
  if damage == "truncate_array":
    f = _largest_file(latest)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  elif damage == "delete_metadata":
    (latest / "state" / "_METADATA").unlink()
  else:
    import shutil
    shutil.rmtree(latest / "meta")
  caplog.set_level(logging.WARNING)
  resumed = trainer.train(toy_job(), toy_run(tmp_path, num_steps=12))
  assert resumed.resumed_from == 4 and resumed.step == 12
  assert "step 8" in caplog.text and "previous" in caplog.text
  # It ends where an uninterrupted run ends: the fallback lost work, not correctness.
  straight = trainer.train(toy_job(), toy_run(tmp_path / "straight", num_steps=12))
  for a, b in zip(leaves(straight.state), leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)


def test_no_intact_checkpoint_is_one_clear_error(tmp_path):
  trainer.train(toy_job(), toy_run(tmp_path, num_steps=4))
  (tmp_path / "checkpoints" / "4" / "state" / "_METADATA").unlink()
  with pytest.raises(checkpoints.CheckpointError, match="step 4"):
    trainer.train(toy_job(), toy_run(tmp_path, num_steps=8))


def test_shape_mismatch_is_reported_as_such(tmp_path):
  trainer.train(toy_job(), toy_run(tmp_path, num_steps=4))
  bigger = toy_job()
  bigger.init_params = lambda rng: {"w": jnp.zeros((DIM + 1,)), "b": jnp.zeros(())}
  with pytest.raises(ValueError, match="does not fit the model"):
    trainer.train(bigger, toy_run(tmp_path, num_steps=8))


def test_non_finite_update_stops_before_a_bad_checkpoint(tmp_path):
  # lr=1e38 with Adam: the first update is ~1e38 per coordinate, the next loss overflows to inf.
  with pytest.raises(FloatingPointError, match="non-finite.*last good checkpoint"):
    trainer.train(toy_job(lr=1e38), toy_run(tmp_path, num_steps=8))
  job = toy_job(lr=1e38)
  target = train_state_lib.TrainState.create(job.init_params(None),
                                             train_state_lib.make_optimizer(job.optim, 8)).to_dict()
  ckpt = checkpoints.Checkpointer(tmp_path / "checkpoints")
  for step in ckpt.all_steps():  # Whatever was saved is finite.
    state, _ = ckpt.restore(target, step)
    assert checkpoints.all_finite(jax.device_get(state))
  ckpt.close()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] \
      if (tmp_path / "metrics.jsonl").exists() else []
  assert all(np.isfinite(l["loss"]) and np.isfinite(l["param_norm"]) for l in lines)


def test_divergence_warns_then_stops_after_patience(caplog):
  """A log window far above the running level warns; `patience` such windows in a row stop the run; a
  window back at the level resets the count."""
  caplog.set_level(logging.WARNING)
  watch = trainer._Divergence(factor=10.0, patience=2)  # pylint: disable=protected-access
  assert not any(watch.update(loss, step) for step, loss in enumerate([1.0, 0.8, 0.7, 0.6]))
  assert not watch.update(50.0, 5) and "diverging" in caplog.text
  assert not watch.update(0.6, 6)  # Back to normal: the count starts again.
  assert not watch.update(1e6, 7)
  assert watch.update(1e6, 8)
  warn_only = trainer._Divergence(factor=10.0, patience=0)  # pylint: disable=protected-access
  assert not any(warn_only.update(loss, i) for i, loss in enumerate([1.0, 1e6, 1e6, 1e6]))


def test_registry_names_the_choices():
  reg = Registry("thing")
  reg.register("a")(int)
  assert reg.get("a") is int and "a" in reg
  with pytest.raises(ValueError, match=r"unknown thing 'b'; choose one of \['a'\]"):
    reg.get("b")
  with pytest.raises(ValueError, match="registered already"):
    reg.register("a")(float)
