"""The engine's data-parallel train step over 2 CPU devices equals the 1-device step on the same global batch.

This is what the loss's per-example keys are for: each device passes the shared rng and its examples'
global indices (axis_index * B_local + arange(B_local)), so every example draws the same t, noise and
coins on either layout, and pmean of the per-device equal-weight means is the global mean.
"""
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
import pytest

from ldlg.engine import parallel
from ldlg.engine import train_state as train_state_lib
from ldlg.engine import trainer
from ldlg.methods.gaussian.denoise_fn import denoise_fn_from_module
from ldlg.methods.gaussian.losses import make_loss_fn
from ldlg.methods.gaussian.samplers import mask_from_lengths
from ldlg.methods.gaussian.schedules import get_schedule
from ldlg.networks.denoiser import Denoiser
from tests.helpers.denoiser_params import perturbed_denoiser_params

NUM_CLASSES = 2


@pytest.mark.extended
@pytest.mark.slow
def test_two_device_step_equals_one_device_step():
  assert jax.local_device_count() >= 2, "conftest.py should force 2 host CPU devices"
  b, l, d = 8, 6, 8
  model = Denoiser(latent_dim=d, dim=16, num_layers=1, num_heads=2, ff_mult=2, max_len=l,
                   num_classes=NUM_CLASSES, dropout=0.0, num_timesteps=100)
  k_lat, k_lab, k_init = jax.random.split(jax.random.PRNGKey(0), 3)
  batch = {"latents": jax.random.normal(k_lat, (b, l, d)),
           "mask": mask_from_lengths(jnp.array([6, 1, 3, 5, 2, 6, 4, 6]), l),
           "label": jax.random.randint(k_lab, (b,), 0, NUM_CLASSES)}
  params = perturbed_denoiser_params(model, batch, k_init)
  loss_fn = make_loss_fn(denoise_fn_from_module(model), get_schedule("linear", 100),
                         self_condition_prob=0.5, label_dropout=0.1, num_classes=NUM_CLASSES)
  optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, schedule="constant", weight_decay=0.01,
                                         b1=0.9, b2=0.999, eps=1e-8, grad_clip=0.0))
  tx = train_state_lib.make_optimizer(optim, 10)
  rng = jax.random.PRNGKey(42)
  # The engine's own pmapped step (what every training job runs), on 1 and on 2 devices.
  job = trainer.TrainJob(init_params=None, loss_fn=loss_fn, batches=None, optim=optim, init_rng=rng, rng=rng,
                         ema_decay=0.999)
  # The 1-device step on the whole batch, with grads taken outside the engine for the gradient check.
  (_, single_metrics), single_grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, jax.random.fold_in(rng, 0), dict(batch, example_index=jnp.arange(b)))

  def run(num_devices):
    devices = jax.local_devices()[:num_devices]
    state = parallel.replicate(train_state_lib.TrainState.create(params, tx), devices)
    sharded = parallel.shard_batch(dict(jax.device_get(batch), example_index=np.arange(b)), num_devices)
    state, metrics = trainer.make_p_train_step(job, devices)(state, sharded)
    return jax.device_get((parallel.unreplicate(state).params, parallel.unreplicate(metrics)))

  one_params, one_metrics = run(1)
  p_params, p_metrics = run(2)
  single_metrics, single_grads = jax.device_get((single_metrics, single_grads))
  for key in ("loss", "t_mean", "self_cond_frac", "null_label_frac"):
    np.testing.assert_allclose(p_metrics[key], single_metrics[key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(one_metrics[key], single_metrics[key], rtol=1e-6, err_msg=key)
  assert 0 < float(single_metrics["self_cond_frac"]) < 1  # both kinds of example are in the batch
  np.testing.assert_allclose(p_metrics["grad_norm"], optax.global_norm(single_grads), rtol=1e-5)
  np.testing.assert_allclose(one_metrics["grad_norm"], optax.global_norm(single_grads), rtol=1e-5)
  jax.tree_util.tree_map(lambda a, s: np.testing.assert_allclose(a, s, atol=1e-6), p_params, one_params)
  # The step did move the parameters (by about lr per coordinate for Adam's first step).
  moved = jax.tree_util.tree_map(lambda a, s: np.max(np.abs(a - s)), one_params, jax.device_get(params))
  assert max(jax.tree_util.tree_leaves(moved)) > 5e-4
