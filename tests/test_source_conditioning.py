"""Source conditioning for sequence-to-sequence LD4LG: the `cond` pytree, the denoiser's source memory, source
dropout in the loss, and classifier-free guidance against the null source in every sampler family."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from ldlg.methods.gaussian import condition
from ldlg.methods.gaussian import schedules
from ldlg.methods.gaussian.fast_samplers import make_continuous_sampler
from ldlg.methods.gaussian.losses import make_loss_fn
from ldlg.methods.gaussian.method import GaussianDiffusion
from ldlg.methods.gaussian.samplers import make_sampler
from ldlg.networks import Denoiser

SCHEDULE = schedules.get_schedule("sqrt", 50)
B, L, D, S, DS = 3, 5, 4, 6, 7


def _source(seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  source = jax.random.normal(k1, (B, S, DS))
  source_mask = jnp.arange(S)[None, :] < jnp.array([[6], [3], [1]])
  return source, source_mask


def test_cond_helpers_null_drop_and_double():
  source, source_mask = _source()
  cond = {"class_id": jnp.array([0, 1, 2]), "source": source, "source_mask": source_mask}
  nulled = condition.null(cond, num_classes=3)
  np.testing.assert_array_equal(nulled["class_id"], [3, 3, 3])
  assert not nulled["source_mask"].any() and nulled["source"] is source  # values kept, all masked
  dropped = condition.drop(cond, {"source": jnp.array([False, True, False])}, num_classes=3)
  np.testing.assert_array_equal(dropped["class_id"], [0, 1, 2])  # only the asked field is dropped
  np.testing.assert_array_equal(dropped["source_mask"].any(axis=1), [True, False, True])
  doubled = condition.with_null(cond, num_classes=3)
  assert doubled["source"].shape == (2 * B, S, DS)
  np.testing.assert_array_equal(doubled["class_id"], [0, 1, 2, 3, 3, 3])
  np.testing.assert_array_equal(doubled["source_mask"][:B], source_mask)
  # A bare array is a class id; None stays None.
  assert set(condition.as_dict(jnp.array([1, 2, 0]))) == {"class_id"}
  assert condition.null(None, 3) is None and condition.with_null(None, 3) is None
  with pytest.raises(ValueError, match="together"):
    condition.as_dict({"source": source})
  with pytest.raises(ValueError, match="unknown conditioning"):
    condition.as_dict({"label": jnp.zeros(3)})
  with pytest.raises(ValueError, match="num_classes"):
    condition.null({"class_id": jnp.zeros(3, jnp.int32)}, 0)
  with pytest.raises(ValueError, match=r"source must be \[B=4"):
    condition.check({"source": source, "source_mask": source_mask}, 4)


def test_denoiser_reads_valid_source_rows_only_and_a_masked_source_is_the_null_source():
  model = Denoiser(latent_dim=D, dim=16, num_layers=2, num_heads=2, max_len=L, source_dim=DS)
  z = jax.random.normal(jax.random.PRNGKey(1), (B, L, D))
  t, mask = jnp.array([3, 20, 40]), jnp.ones((B, L), bool)
  source, source_mask = _source()
  params = model.init(jax.random.PRNGKey(2), z, t, mask, source=source, source_mask=source_mask)["params"]
  assert params["source_proj"]["kernel"].shape == (DS, 16) and params["null_source"].shape == (16,)
  # The zero-initialised output layer would hide every input: move it.
  params = jax.tree_util.tree_map(lambda p: p + 0.05 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
  run = lambda s, m: np.asarray(model.apply({"params": params}, z, t, mask, source=s, source_mask=m))
  base = run(source, source_mask)
  # Changing a masked source position changes nothing; changing a valid one changes that example only.
  masked_changed = source.at[1, 4].set(100.0)
  np.testing.assert_array_equal(run(masked_changed, source_mask), base)
  valid_changed = source.at[1, 0].set(100.0)
  out = run(valid_changed, source_mask)
  assert not np.allclose(out[1], base[1]) and np.array_equal(out[[0, 2]], base[[0, 2]])
  # A source masked out entirely is exactly "no source" (source=None), whatever its values.
  none = np.asarray(model.apply({"params": params}, z, t, mask))
  np.testing.assert_allclose(run(source * 7.0, jnp.zeros_like(source_mask)), none, rtol=1e-6, atol=1e-6)
  assert not np.allclose(base, none)
  with pytest.raises(ValueError, match="source_dim=0"):
    Denoiser(latent_dim=D, dim=16, num_layers=1, num_heads=2, max_len=L).init(
        jax.random.PRNGKey(0), z, t, mask, source=source, source_mask=source_mask)


def test_source_dropout_nulls_the_asked_share_and_leaves_the_label_coins_alone():
  """The network reports 1 where it was given no source: with an L1 loss on a zero target the loss is the
  null-source share, which must be p (within 4 standard errors) and equal the reported metric."""
  n, p_drop = 20000, 0.1
  batch = {"latents": jnp.zeros((n, 1, 1)), "mask": jnp.ones((n, 1), bool), "label": jnp.arange(n) % 4,
           "source": jnp.ones((n, 2, 3)), "source_mask": jnp.ones((n, 2), bool)}

  def reports_null_source(params, z, t, mask, self_cond, has_self_cond, cond, train, rng):
    out = 1.0 - cond["source_mask"].any(axis=1).astype(jnp.float32)
    return jnp.broadcast_to(out[:, None, None], z.shape)

  rng = jax.random.PRNGKey(0)
  loss_fn = make_loss_fn(reports_null_source, SCHEDULE, loss_type="l1", self_condition_prob=0.0, num_classes=4,
                         source_conditioned=True, source_dropout=p_drop)
  loss, m = loss_fn(None, rng, batch)
  assert abs(float(loss) - p_drop) < 4 * math.sqrt(p_drop * (1 - p_drop) / n)
  assert float(loss) == pytest.approx(float(m["null_source_frac"]), abs=1e-6)
  # The label coins are the class-only model's coins: adding a source does not reshuffle them.
  seen = {}

  def records(params, z, t, mask, self_cond, has_self_cond, cond, train, rng):
    seen.setdefault("ids", []).append(cond["class_id"])
    return z
  make_loss_fn(records, SCHEDULE, self_condition_prob=0.0, num_classes=4)(None, rng, batch)
  make_loss_fn(records, SCHEDULE, self_condition_prob=0.0, num_classes=4, source_conditioned=True)(None, rng, batch)
  np.testing.assert_array_equal(seen["ids"][0], seen["ids"][1])
  with pytest.raises(ValueError, match="no 'source'"):
    loss_fn(None, rng, {k: v for k, v in batch.items() if not k.startswith("source")})


def _source_reporter(calls):
  """Outputs 1 at every position of a row that has a source, 0 where it has the null source."""
  def denoise_fn(params, z, t, mask, self_cond, has_self_cond, cond, train, rng):
    calls.append(z.shape[0])
    has = cond["source_mask"].any(axis=1).astype(jnp.float32)
    return jnp.broadcast_to(has[:, None, None], z.shape)
  return denoise_fn


@pytest.mark.parametrize("kind", ["ddim", "dpm_solver_pp_2m", "pc"])
def test_guidance_contrasts_the_source_with_the_null_source_in_one_call(kind):
  """x̂0 = w·1 + (1-w)·0 = w from the doubled batch (one call per step with 2B rows), with no classes."""
  source, source_mask = _source()
  cond = {"source": source, "source_mask": source_mask}
  mask = jnp.ones((B, 2), bool)
  for w in (1.0, 2.5):
    calls = []
    kw = dict(guidance_scale=w, self_condition=False, source_conditioned=True)
    if kind == "ddim":
      sample = make_sampler(_source_reporter(calls), SCHEDULE, num_steps=4, eta=0.0, **kw)
    else:
      sample = make_continuous_sampler(_source_reporter(calls), SCHEDULE, kind=kind, num_steps=4, **kw)
    x = sample(None, jax.random.PRNGKey(0), mask, cond, 1)
    np.testing.assert_allclose(np.asarray(x), w, rtol=1e-5)
    assert set(calls) == {B if w == 1.0 else 2 * B}
  with pytest.raises(ValueError, match="conditional model"):
    make_sampler(_source_reporter([]), SCHEDULE, num_steps=4, guidance_scale=2.0)


def test_source_conditioned_method_from_config_trains_and_samples():
  """config.model.source_dim switches the method to a source-conditioned denoiser: its parameters hold the
  source projection, the loss needs and uses the source, and the sampler takes a dict cond."""
  config = tiny.get_config()
  config.model.source_dim = DS
  config.sample.update(num_steps=3, guidance_scale=2.0)
  method = GaussianDiffusion.from_config(config)
  params = method.init_params(jax.random.PRNGKey(0))
  assert params["source_proj"]["kernel"].shape == (DS, config.model.dim)
  n, length = 4, 8
  source, source_mask = _source()
  batch = {"latents": jax.random.normal(jax.random.PRNGKey(1), (n, length, method.latent_dim)),
           "mask": jnp.ones((n, length), bool), "source": jnp.concatenate([source, source[:1]]),
           "source_mask": jnp.concatenate([source_mask, source_mask[:1]])}
  # Off the zero-initialised output layer, so gradients reach every input path.
  params = jax.tree_util.tree_map(lambda p: p + 0.05 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
  # One compiled program for the loss and its gradient (an eager grad of the whole denoiser costs ~30 s on CPU).
  (loss, metrics), grads = jax.jit(jax.value_and_grad(method.loss_fn, has_aux=True))(
      params, jax.random.PRNGKey(2), batch)
  assert np.isfinite(float(loss)) and "null_source_frac" in metrics
  assert float(jnp.abs(grads["source_proj"]["kernel"]).sum()) > 0  # the source reaches the loss
  x = method.make_sampler()(params, jax.random.PRNGKey(3), batch["mask"],
                            {"source": batch["source"], "source_mask": batch["source_mask"]})
  assert x.shape == batch["latents"].shape and np.isfinite(np.asarray(x)).all()
