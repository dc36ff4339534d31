"""A data-parallel AdamW step over 2 CPU devices equals the 1-device step on the same global batch.

This is what the loss's per-example keys are for: each device passes the shared rng and its examples'
global indices (axis_index * B_local + arange(B_local)), so every example draws the same t, noise and
coins on either layout, and pmean of the per-device equal-weight means is the global mean.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ldlg.methods.gaussian.denoise_fn import denoise_fn_from_module
from ldlg.methods.gaussian.losses import make_loss_fn
from ldlg.methods.gaussian.samplers import mask_from_lengths
from ldlg.methods.gaussian.schedules import get_schedule
from ldlg.networks.denoiser import Denoiser

NUM_CLASSES = 2


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

  @jax.jit
  def init(rng):
    params = model.init(rng, batch["latents"], jnp.zeros((b,), jnp.int32), batch["mask"],
                        batch["latents"], jnp.ones((b,), bool), batch["label"])["params"]
    # Move off the zero-initialised output layer so every parameter gets a gradient.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.fold_in(rng, 1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])

  params = init(k_init)
  loss_fn = make_loss_fn(denoise_fn_from_module(model), get_schedule("linear", 100),
                         self_condition_prob=0.5, label_dropout=0.1, num_classes=NUM_CLASSES)
  tx = optax.adamw(1e-3, weight_decay=0.01)
  opt_state = jax.jit(tx.init)(params)  # jitted: eager init would compile once per leaf shape
  rng = jax.random.PRNGKey(42)

  def train_step(params, opt_state, batch, rng, axis_name=None):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rng, batch)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), grads, metrics

  single_params, single_grads, single_metrics = jax.jit(train_step)(
      params, opt_state, dict(batch, example_index=jnp.arange(b)), rng)

  def device_step(params, opt_state, local_batch, rng):
    b_local = local_batch["latents"].shape[0]
    index = jax.lax.axis_index("batch") * b_local + jnp.arange(b_local)
    return train_step(params, opt_state, dict(local_batch, example_index=index), rng, axis_name="batch")

  sharded = jax.tree_util.tree_map(lambda x: np.reshape(x, (2, b // 2) + x.shape[1:]), batch)
  p_params, p_grads, p_metrics = jax.pmap(
      device_step, axis_name="batch", in_axes=(None, None, 0, None))(
          params, opt_state, sharded, rng)

  # Compare on the host: eager jnp ops here would compile once per leaf shape.
  p_params, p_grads, p_metrics, single_params, single_grads, single_metrics = jax.device_get(
      (p_params, p_grads, p_metrics, single_params, single_grads, single_metrics))
  for key in ("loss", "t_mean", "self_cond_frac", "null_label_frac"):
    np.testing.assert_allclose(p_metrics[key][0], single_metrics[key], rtol=1e-6, err_msg=key)
  assert 0 < float(single_metrics["self_cond_frac"]) < 1  # both kinds of example are in the batch
  for dev in range(2):
    jax.tree_util.tree_map(lambda a, s: np.testing.assert_allclose(a[dev], s, rtol=1e-5, atol=1e-8),
                           p_grads, single_grads)
    jax.tree_util.tree_map(lambda a, s: np.testing.assert_allclose(a[dev], s, atol=1e-6),
                           p_params, single_params)
  # The step did move the parameters (by about lr per coordinate for Adam's first step).
  moved = jax.tree_util.tree_map(lambda a, s: np.max(np.abs(a - s)), single_params, jax.device_get(params))
  assert max(jax.tree_util.tree_leaves(moved)) > 5e-4
