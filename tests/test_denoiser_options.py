"""The Denoiser's later-version / official-code options: defaults unchanged, each option's shapes and the
equivalence that defines it, and the engine's pmapped step (1 vs 2 devices) and exact resume with all on.

Tiny sizes (dim 32, latent 16). Parameters are perturbed first (`perturbed`): the zero-initialised heads
would otherwise make every output 0 and every equivalence trivial.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ldlg.engine import parallel
from ldlg.engine import train_state as train_state_lib
from ldlg.engine import trainer
from ldlg.methods.gaussian import schedules
from ldlg.methods.gaussian.denoise_fn import denoise_fn_from_module
from ldlg.methods.gaussian.losses import make_loss_fn
from ldlg.networks import Denoiser
from ldlg.networks.attention import RelativePositionBias
from ldlg.networks.denoiser import noise_level_table
from ldlg.networks.embeddings import ScaledRelativePositionBias
from tests.helpers.denoiser_params import init_params, perturbed

LATENT, DIM, B, L = 16, 32, 4, 10
TINY = dict(latent_dim=LATENT, dim=DIM, num_layers=2, num_heads=2, max_len=12, num_classes=3)
NEW_DEFAULTS = dict(time_input="t", noise_schedule="linear", beta_start=1e-4, beta_end=0.02, latent_scale=1.0,
                    self_cond_mode="cross_attention", unet_skips=False, unet_skip_count=0, init_scales="default",
                    head_dim=0, gelu_approximate=True, class_input="memory_token")
ALL_ON = dict(time_input="alpha_bar", noise_schedule="cosine", self_cond_mode="concat", unet_skips=True,
              init_scales="official_v1", head_dim=8, class_input="time")


def _inputs(seed=0, lengths=(10, 7, 3, 1)):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  mask = jnp.arange(L)[None, :] < jnp.asarray(lengths)[:, None]
  return (jax.random.normal(k1, (B, L, LATENT)), jax.random.randint(k3, (B,), 0, 1000), mask,
          jax.random.normal(k2, (B, L, LATENT)))


def _build(**kw):
  model = Denoiser(**{**TINY, **kw})
  z_t, t, mask, self_cond = _inputs()
  return model, perturbed(init_params(model, jax.random.key(0), z_t, t, mask, self_cond))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("train",))
def _apply(model, params, *args, train=False, rngs=None):
  # Jitted: op-by-op dispatch of even a tiny transformer is slow on a loaded 2-core machine.
  return model.apply({"params": params}, *args, train=train, rngs=rngs)


def _shapes(params):
  return {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.slow
def test_new_fields_at_their_defaults_change_nothing():
  """Parameters (init) and outputs (dropout on) are bit-identical with the new fields given at their defaults."""
  z_t, t, mask, self_cond = _inputs()
  cid, has = jnp.array([0, 1, 2, 3]), jnp.array([True, False, True, False])
  for kw in (dict(TINY, dropout=0.1),):
    old, new = Denoiser(**kw), Denoiser(**kw, **NEW_DEFAULTS)
    p_old = init_params(old, jax.random.key(0), z_t, t, mask, self_cond)
    p_new = init_params(new, jax.random.key(0), z_t, t, mask, self_cond)
    assert _shapes(p_old) == _shapes(p_new)
    jax.tree.map(np.testing.assert_array_equal, p_old, p_new)
    params = perturbed(p_old)
    for args in ((z_t, t, mask, self_cond, has, cid), (z_t, t, mask)):
      run = lambda m: _apply(m, params, *args, train=True, rngs={"dropout": jax.random.key(5)})
      np.testing.assert_array_equal(run(old), run(new))


@pytest.mark.slow
def test_all_options_shapes():
  model, params = _build(**ALL_ON)
  shapes = _shapes(params)
  z_t, t, mask, self_cond = _inputs()
  out = _apply(model, params, z_t, t, mask, self_cond, None, jnp.array([0, 1, 2, 3]))
  assert out.shape == (B, L, LATENT) and out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()
  assert model.heads == DIM // 8
  assert shapes["['rel_pos_bias']['embedding']"] == (32, DIM // 8)                # one column per head
  assert shapes["['block_0']['self_attn']['query']['kernel']"] == (DIM, DIM // 8, 8)
  assert shapes["['input_proj']['kernel']"] == (2 * LATENT, DIM)                   # [z_t ; estimate]
  assert shapes["['null_self_cond']"] == (LATENT,) and "['self_cond_proj']['kernel']" not in shapes
  assert {k for k in shapes if k.startswith("['skip_proj")} == {"['skip_proj_0']['kernel']", "['skip_proj_0']['bias']"}
  assert shapes["['skip_proj_0']['kernel']"] == (2 * DIM, DIM)


@pytest.mark.parametrize("time_input", ["alpha_bar", "log_snr"])
def test_noise_level_input_equals_t_input_fed_the_noise_level(time_input):
  """time_input=alpha_bar/log_snr is the t-model (T = 1000) fed noise_level_table[t]: same params, same output."""
  kw = dict(noise_schedule="cosine", latent_scale=0.7)
  model, params = _build(time_input=time_input, **kw)
  reference = Denoiser(**TINY, num_timesteps=1000)
  z_t, t, mask, self_cond = _inputs()
  ab = schedules.alphas_cumprod_table("cosine", 1000, latent_scale=0.7)
  level = jnp.asarray(noise_level_table(time_input, ab), jnp.float32)[t]
  np.testing.assert_allclose(_apply(model, params, z_t, t, mask, self_cond),
                             _apply(reference, params, z_t, level, mask, self_cond), atol=1e-5)
  # The table is the one the loss uses: ᾱ of the shifted schedule built from the same config fields.
  cfg = ml_collections.ConfigDict(dict(schedule="cosine", num_timesteps=1000, latent_scale=0.7))
  np.testing.assert_allclose(ab, schedules.schedule_from_config(cfg).alphas_cumprod, rtol=2e-5)
  lo, hi = noise_level_table(time_input, ab).min(), noise_level_table(time_input, ab).max()
  assert 0 <= lo and hi <= 1000  # the sinusoid sees the range t would


def test_latent_scale_shifts_log_snr_by_two_log_scale():
  ab = schedules.alphas_cumprod_table("linear", 1000)
  shifted = schedules.alphas_cumprod_table("linear", 1000, latent_scale=0.5)
  inside = np.abs(schedules.log_snr(ab, np.inf)) < 15
  np.testing.assert_allclose(schedules.log_snr(shifted, np.inf)[inside],
                             schedules.log_snr(ab, np.inf)[inside] + 2 * np.log(0.5), atol=1e-9)
  sched = schedules.scaled_schedule(schedules.get_schedule("linear", 1000), 0.5)
  assert np.all(np.diff(np.asarray(sched.alphas_cumprod)) <= 0) and np.all(np.asarray(sched.betas) > 0)


def test_concat_self_cond_switch_and_padding():
  model, params = _build(self_cond_mode="concat")
  z_t, t, mask, self_cond = _inputs()
  none = _apply(model, params, z_t, t, mask)
  with_sc = _apply(model, params, z_t, t, mask, self_cond)
  has = jnp.array([True, False, True, False])
  mixed = _apply(model, params, z_t, t, mask, self_cond, has)
  # Per example: without an estimate exactly as self_cond=None, with one exactly as all-True.
  np.testing.assert_array_equal(mixed[1::2], none[1::2])
  np.testing.assert_array_equal(mixed[0::2], with_sc[0::2])
  valid = np.asarray(mask)
  assert np.abs(np.asarray(with_sc - none)).max(-1)[valid].min() > 1e-6  # the estimate reaches every position
  # Estimate values at padded positions do not reach valid outputs.
  junk = jnp.where(mask[..., None], self_cond, 1e6)
  np.testing.assert_allclose(np.asarray(_apply(model, params, z_t, t, mask, junk))[valid],
                             np.asarray(with_sc)[valid], atol=1e-5)


@pytest.mark.slow
def test_unet_skip_with_identity_projection_equals_no_skip():
  """A skip projection [I; 0] passes the block input through unchanged: the model is then the skip-free one."""
  model, params = _build(unet_skips=True, unet_skip_count=1)
  plain = Denoiser(**TINY)
  z_t, t, mask, self_cond = _inputs()
  identity = dict(params, skip_proj_0={"kernel": jnp.concatenate([jnp.eye(DIM), jnp.zeros((DIM, DIM))]),
                                       "bias": jnp.zeros((DIM,))})
  no_skip = {k: v for k, v in identity.items() if k != "skip_proj_0"}
  np.testing.assert_allclose(_apply(model, identity, z_t, t, mask, self_cond),
                             _apply(plain, no_skip, z_t, t, mask, self_cond), atol=1e-5)
  # With its own weights, block 0's output reaches block 1 twice: the output differs.
  assert np.abs(np.asarray(_apply(model, params, z_t, t, mask, self_cond)
                           - _apply(plain, no_skip, z_t, t, mask, self_cond))).max() > 1e-3


@pytest.mark.slow
def test_official_init_scales():
  """Initial statistics N(0,1), and the forward scales: official(P) = default(P with the scales folded in)."""
  model = Denoiser(**TINY, init_scales="official_v1", head_dim=8)
  z_t, t, mask, self_cond = _inputs()
  fresh = init_params(model, jax.random.key(0), z_t, t, mask, self_cond)
  for name in ("pos_embed", "null_self_cond"):
    assert 0.8 < float(jnp.std(fresh[name])) < 1.2, name
  assert 0.8 < float(jnp.std(fresh["rel_pos_bias"]["embedding"])) < 1.2
  assert 0.8 < float(jnp.std(fresh["class_embed"]["embedding"])) < 1.2
  assert float(jnp.std(init_params(Denoiser(**TINY), jax.random.key(0), z_t, t, mask)["pos_embed"])) < 0.05
  params = perturbed(fresh)
  folded = dict(params, pos_embed=params["pos_embed"] * DIM ** -0.5,
                rel_pos_bias={"embedding": params["rel_pos_bias"]["embedding"] * np.sqrt(8)})
  default = Denoiser(**TINY, head_dim=8)
  np.testing.assert_allclose(_apply(model, params, z_t, t, mask, self_cond),
                             _apply(default, folded, z_t, t, mask, self_cond), atol=1e-4)
  table = {"embedding": jax.random.normal(jax.random.key(3), (32, 4))}
  np.testing.assert_allclose(ScaledRelativePositionBias(4, scale=3.0).apply({"params": table}, 7),
                             3.0 * RelativePositionBias(4).apply({"params": table}, 7), rtol=1e-6)


def test_exact_gelu_changes_the_time_path_only_by_the_gelu():
  model, params = _build(gelu_approximate=False)
  z_t, t, mask, self_cond = _inputs()
  exact = _apply(model, params, z_t, t, mask, self_cond)
  tanh = _apply(Denoiser(**TINY), params, z_t, t, mask, self_cond)
  diff = float(jnp.abs(exact - tanh).max())
  assert 0 < diff < 0.1 * float(jnp.abs(tanh).max())  # tanh GELU approximates erf GELU to ~1e-3


def test_class_through_the_time_embedding_moves_the_output_only_through_its_projection():
  model, params = _build(class_input="time")
  assert _shapes(params)["['class_to_time']['kernel']"] == (DIM, 4 * DIM)
  z_t, t, mask, self_cond = _inputs()
  run = lambda p, c: np.asarray(_apply(model, p, z_t, t, mask, self_cond, None, jnp.full((B,), c)))
  assert np.abs(run(params, 0) - run(params, 1)).max() > 1e-4
  # With the projection zeroed, the class has no other way in: every class (and the null) gives one output.
  cut = dict(params, class_to_time=jax.tree.map(jnp.zeros_like, params["class_to_time"]))
  for c in (1, 2, 3):
    np.testing.assert_array_equal(run(cut, c), run(cut, 0))


@pytest.mark.parametrize("kw, message", [
    (dict(time_input="sigma"), "time_input"), (dict(self_cond_mode="add"), "self_cond_mode"),
    (dict(init_scales="torch"), "init_scales"), (dict(head_dim=12), "head_dim"),
    (dict(class_input="token"), "class_input"),
    (dict(unet_skips=True, unet_skip_count=2), "unet_skip_count")])
def test_bad_options_raise(kw, message):
  z_t, t, mask, _ = _inputs()
  with pytest.raises(ValueError, match=message):
    Denoiser(**TINY, **kw).init(jax.random.key(0), z_t, t, mask)


def _job(model, b=8, l=6):
  k_lat, k_lab = jax.random.split(jax.random.PRNGKey(0))
  latents = np.asarray(jax.random.normal(k_lat, (b, l, LATENT)))
  lengths = np.array([6, 1, 3, 5, 2, 6, 4, 6])
  host_batch = {"latents": latents, "mask": np.arange(l)[None] < lengths[:, None],
                "label": np.asarray(jax.random.randint(k_lab, (b,), 0, 3))}
  schedule = schedules.get_schedule("cosine", 1000)
  loss_fn = make_loss_fn(denoise_fn_from_module(model), schedule, objective="v", self_condition_prob=0.5,
                         label_dropout=0.1, num_classes=3)
  optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, schedule="constant", weight_decay=0.01, b1=0.9,
                                         b2=0.999, eps=1e-8, grad_clip=1.0, decay_mask="matrices"))

  def init_params(rng):
    return perturbed(model.init(rng, jnp.asarray(latents), jnp.zeros((b,), jnp.int32),
                                 jnp.asarray(host_batch["mask"]), jnp.asarray(latents))["params"])

  def batches(start_step, num_devices=1):
    while True:  # the same batch every step, with its global example indices
      yield parallel.shard_batch(dict(host_batch, example_index=np.arange(b)), num_devices)

  rng = jax.random.PRNGKey(42)
  return trainer.TrainJob(init_params=jax.jit(init_params), loss_fn=loss_fn, batches=batches, optim=optim,
                          init_rng=jax.random.PRNGKey(1), rng=rng, ema_decay=0.99), host_batch


@pytest.mark.extended
@pytest.mark.slow
def test_all_options_two_device_step_equals_one_device_step():
  assert jax.local_device_count() >= 2, "conftest.py should force 2 host CPU devices"
  model = Denoiser(**TINY, **ALL_ON, dropout=0.0)
  job, host_batch = _job(model)
  params = job.init_params(job.init_rng)
  tx = train_state_lib.make_optimizer(job.optim, 10)

  def run(num_devices):
    devices = jax.local_devices()[:num_devices]
    state = parallel.replicate(train_state_lib.TrainState.create(params, tx), devices)
    batch = next(job.batches(0, num_devices))
    state, metrics = trainer.make_p_train_step(job, devices)(state, batch)
    return jax.device_get((parallel.unreplicate(state).params, parallel.unreplicate(metrics)))

  (p1, m1), (p2, m2) = run(1), run(2)
  for key in ("loss", "t_mean", "self_cond_frac", "grad_norm"):
    np.testing.assert_allclose(m2[key], m1[key], rtol=1e-5, err_msg=key)
  # Adam's first step is lr·g/(|g| + eps): summation-order noise in a tiny gradient can move a coordinate by
  # a few 1e-6 (of a 1e-3 step).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), p2, p1)
  moved = jax.tree.map(lambda a, s: np.max(np.abs(a - s)), p1, jax.device_get(params))
  assert max(jax.tree_util.tree_leaves(moved)) > 5e-4


@pytest.mark.extended
@pytest.mark.slow
def test_all_options_resume_is_exact(tmp_path):
  """stop_at=2 then resume to 4 steps gives the parameters of 4 uninterrupted steps, bit for bit."""
  model = Denoiser(**TINY, **ALL_ON, dropout=0.1)
  job, _ = _job(model)
  devices = jax.local_devices()[:1]
  run = lambda d, stop=None: trainer.train(job, trainer.TrainRun(directory=d, num_steps=4, log_every=1, ckpt_every=2,
                                                                  stop_at=stop, devices=devices))
  straight = run(tmp_path / "straight")
  first = run(tmp_path / "resumed", stop=2)
  assert first.stopped_by == "stop_at" and first.step == 2
  resumed = run(tmp_path / "resumed")
  assert resumed.resumed_from == 2 and resumed.step == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.state.params),
               jax.device_get(straight.state.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.state.ema_params),
               jax.device_get(straight.state.ema_params))
