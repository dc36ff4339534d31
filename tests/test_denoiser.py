"""Tests for the LD4LG denoiser (ldlg/models): conditioning switches, padding, positions, dropout, dtype.

Tiny sizes (dim 32, 2 layers, 2 heads). The zero-initialised heads (output projection, AdaLN modulation)
make a freshly initialised model output exactly 0, which would make every equivalence below trivial, so
the tests perturb all parameters with noise first (`perturbed`).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlg.networks import Denoiser, count_params
from ldlg.networks.attention import relative_position_bucket
from tests.helpers.denoiser_params import init_params, perturbed

LATENT, DIM, LAYERS, HEADS, MAX_LEN, B, L = 16, 32, 2, 2, 12, 4, 10
TINY = dict(latent_dim=LATENT, dim=DIM, num_layers=LAYERS, num_heads=HEADS, max_len=MAX_LEN)


def _inputs(seed=0, lengths=(10, 7, 3, 1)):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  z_t = jax.random.normal(k1, (B, L, LATENT))
  self_cond = jax.random.normal(k2, (B, L, LATENT))
  t = jax.random.randint(k3, (B,), 0, 1000)
  mask = jnp.arange(L)[None, :] < jnp.asarray(lengths)[:, None]
  return z_t, t, mask, self_cond


def _model_and_params(**kw):
  model = Denoiser(**{**TINY, **kw})
  z_t, t, mask, self_cond = _inputs()
  return model, perturbed(init_params(model, jax.random.key(0), z_t, t, mask, self_cond))


@pytest.fixture(scope="module")
def cond_model():
  return _model_and_params(num_classes=3)


def _apply(model, params, *args, **kw):
  return model.apply({"params": params}, *args, **kw)


def test_output_shape_dtype_and_dependence_on_inputs(cond_model):
  model, params = cond_model
  z_t, t, mask, self_cond = _inputs()
  out = _apply(model, params, z_t, t, mask, self_cond, None, jnp.array([0, 1, 2, 3]))
  assert out.shape == (B, L, LATENT) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  valid = np.asarray(mask)
  # Time, the noisy input and the self-conditioning input all reach the valid outputs.
  for changed in (_apply(model, params, z_t, t + 100, mask, self_cond, None, jnp.array([0, 1, 2, 3])),
                  _apply(model, params, z_t * 1.5, t, mask, self_cond, None, jnp.array([0, 1, 2, 3])),
                  _apply(model, params, z_t, t, mask, None, None, jnp.array([0, 1, 2, 3]))):
    assert np.abs(np.asarray(changed - out)).max(-1)[valid].min() > 1e-6  # every valid position moves


def test_float_and_int_timesteps_agree(cond_model):
  model, params = cond_model
  z_t, t, mask, _ = _inputs()
  np.testing.assert_allclose(_apply(model, params, z_t, t, mask),
                             _apply(model, params, z_t, t.astype(jnp.float32), mask), atol=1e-6)


def test_fresh_model_predicts_zero():
  """Zero-initialised output head: x̂ = 0, the mean of the normalised latents, before any training."""
  model = Denoiser(**TINY)
  z_t, t, mask, _ = _inputs()
  variables = model.init(jax.random.key(0), z_t, t, mask)
  np.testing.assert_array_equal(model.apply(variables, z_t, t, mask), 0.0)


def test_per_example_self_cond_switch(cond_model):
  model, params = cond_model
  z_t, t, mask, self_cond = _inputs()
  has = jnp.array([True, False, True, False])
  mixed = _apply(model, params, z_t, t, mask, self_cond, has)
  with_sc = _apply(model, params, z_t, t, mask, self_cond)
  without = _apply(model, params, z_t, t, mask, None)
  expected = jnp.where(has[:, None, None], with_sc, without)
  np.testing.assert_allclose(mixed, expected, atol=1e-6)
  # has_self_cond=None with an estimate means all True.
  np.testing.assert_allclose(_apply(model, params, z_t, t, mask, self_cond, jnp.ones((B,), bool)),
                             with_sc, atol=1e-6)


def test_class_none_equals_null_class_and_classes_differ(cond_model):
  model, params = cond_model
  z_t, t, mask, self_cond = _inputs()
  null = jnp.full((B,), 3)
  np.testing.assert_allclose(_apply(model, params, z_t, t, mask, self_cond),
                             _apply(model, params, z_t, t, mask, self_cond, None, null), atol=1e-6)
  a = _apply(model, params, z_t, t, mask, self_cond, None, jnp.zeros((B,), jnp.int32))
  b = _apply(model, params, z_t, t, mask, self_cond, None, jnp.ones((B,), jnp.int32))
  assert np.abs(np.asarray(a - b)).max(-1)[np.asarray(mask)].min() > 1e-6


def test_unconditional_model_has_no_class_table_and_ignores_class_id():
  model, params = _model_and_params()
  assert "class_embed" not in params
  z_t, t, mask, _ = _inputs()
  np.testing.assert_array_equal(_apply(model, params, z_t, t, mask),
                                _apply(model, params, z_t, t, mask, None, None, jnp.zeros((B,), int)))


def test_init_with_or_without_self_cond_gives_same_param_tree():
  model = Denoiser(**TINY)
  z_t, t, mask, self_cond = _inputs()
  with_sc = model.init(jax.random.key(0), z_t, t, mask, self_cond)["params"]
  without = model.init(jax.random.key(0), z_t, t, mask)["params"]
  assert jax.tree.structure(with_sc) == jax.tree.structure(without)
  assert jax.tree.map(jnp.shape, with_sc) == jax.tree.map(jnp.shape, without)


def test_padded_values_do_not_reach_valid_outputs(cond_model):
  model, params = cond_model
  z_t, t, mask, self_cond = _inputs()
  pad = ~mask[..., None]
  noise = 100.0 * jax.random.normal(jax.random.key(9), z_t.shape)
  labels = jnp.array([0, 1, 2, 3])
  base = _apply(model, params, z_t, t, mask, self_cond, None, labels)
  changed = _apply(model, params, jnp.where(pad, noise, z_t), t, mask,
                   jnp.where(pad, -noise, self_cond), None, labels)
  valid = np.asarray(mask)
  np.testing.assert_array_equal(np.asarray(base)[valid], np.asarray(changed)[valid])
  # Even NaN/inf in the padding stays out (padded inputs are zeroed before use).
  nan_pad = _apply(model, params, jnp.where(pad, jnp.nan, z_t), t, mask,
                   jnp.where(pad, jnp.inf, self_cond), None, labels)
  np.testing.assert_array_equal(np.asarray(base)[valid], np.asarray(nan_pad)[valid])
  assert np.isfinite(np.asarray(nan_pad)).all()


def test_padded_example_equals_unpadded_example(cond_model):
  """The key masks do their job: a length-n example padded to L gives the output of the bare length-n one."""
  model, params = cond_model
  z_t, t, mask, self_cond = _inputs()
  n = 7  # example 1 has 7 valid tokens
  padded = _apply(model, params, z_t, t, mask, self_cond, None, jnp.array([0, 1, 2, 3]))[1, :n]
  bare = _apply(model, params, z_t[1:2, :n], t[1:2], jnp.ones((1, n), bool), self_cond[1:2, :n], None,
                jnp.array([1]))[0]
  np.testing.assert_allclose(padded, bare, atol=1e-5)


def test_relative_position_buckets_hand_computed():
  # Bidirectional, 32 buckets, max distance 128: 16 buckets per direction, offsets 0..7 exact, then
  # bucket 8 + floor(8 * log(n / 8) / log(16)) up to 15; keys after the query add 16.
  offsets = jnp.array([0, -1, -7, -8, -11, -12, -16, -31, -32, -64, -127, -128, -1000, 1, 7, 8, 16, 128])
  expected = [0, 1, 7, 8, 8, 9, 10, 11, 12, 14, 15, 15, 15, 17, 23, 24, 26, 31]
  np.testing.assert_array_equal(relative_position_bucket(offsets, 32, 128), expected)


class _JnpWithOldClip:
  """jax.numpy with the `clip(a_max=...)` keyword that HF's Flax T5 still uses (removed from newer JAX)."""

  def __getattr__(self, name):
    return getattr(jnp, name)

  @staticmethod
  def clip(x, a_min=None, a_max=None):
    return jnp.clip(x, a_min, a_max)


def test_relative_position_buckets_match_hf_t5(monkeypatch):
  t5 = pytest.importorskip("transformers.models.t5.modeling_flax_t5")
  monkeypatch.setattr(t5, "jnp", _JnpWithOldClip())
  offsets = jnp.arange(-300, 301)
  for buckets, max_distance in ((32, 128), (16, 64), (8, 20)):
    ref = t5.FlaxT5Attention._relative_position_bucket(offsets, True, buckets, max_distance)
    np.testing.assert_array_equal(relative_position_bucket(offsets, buckets, max_distance), ref)


def test_positions_matter_and_relative_bias_alone_breaks_equivariance():
  model, params = _model_and_params()
  z_t, t, mask, _ = _inputs()
  full = jnp.ones_like(mask)
  perm = jax.random.permutation(jax.random.key(3), L)

  def equivariance_gap(p):
    out = _apply(model, p, z_t, t, full)
    out_perm = _apply(model, p, z_t[:, perm], t, full)
    return float(jnp.abs(out_perm - out[:, perm]).max())

  # With no absolute positions and a zero relative bias the transformer is permutation-equivariant ...
  no_pos = {**params, "pos_embed": jnp.zeros_like(params["pos_embed"]),
            "rel_pos_bias": {"embedding": jnp.zeros_like(params["rel_pos_bias"]["embedding"])}}
  assert equivariance_gap(no_pos) < 1e-5
  # ... and the relative position bias alone breaks it, as do the full positional features.
  only_rel = {**no_pos, "rel_pos_bias": params["rel_pos_bias"]}
  assert equivariance_gap(only_rel) > 1e-3
  assert equivariance_gap(params) > 1e-3


def test_dropout_only_in_training():
  model, params = _model_and_params(dropout=0.3)
  z_t, t, mask, self_cond = _inputs()
  args = (z_t, t, mask, self_cond)
  eval1, eval2 = _apply(model, params, *args), _apply(model, params, *args)
  np.testing.assert_array_equal(eval1, eval2)
  # train=False equals the same model built without dropout.
  no_drop = Denoiser(**TINY)
  np.testing.assert_array_equal(eval1, _apply(no_drop, params, *args))
  rngs = lambda s: {"dropout": jax.random.key(s)}
  tr1 = _apply(model, params, *args, train=True, rngs=rngs(1))
  tr1b = _apply(model, params, *args, train=True, rngs=rngs(1))
  tr2 = _apply(model, params, *args, train=True, rngs=rngs(2))
  np.testing.assert_array_equal(tr1, tr1b)
  assert float(jnp.abs(tr1 - tr2).max()) > 1e-3
  assert float(jnp.abs(tr1 - eval1).max()) > 1e-3


def test_bfloat16_compute_keeps_float32_params_and_output(cond_model):
  _, params = cond_model
  model32 = Denoiser(**TINY, num_classes=3)
  model16 = Denoiser(**TINY, num_classes=3, dtype="bfloat16")
  z_t, t, mask, self_cond = _inputs()
  init16 = model16.init(jax.random.key(0), z_t, t, mask, self_cond)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(init16))
  out32 = _apply(model32, params, z_t, t, mask, self_cond)
  out16 = _apply(model16, params, z_t, t, mask, self_cond)
  assert out16.dtype == jnp.float32 and np.isfinite(np.asarray(out16)).all()
  valid = np.asarray(mask)
  err = np.abs(np.asarray(out16 - out32))[valid].max() / np.abs(np.asarray(out32))[valid].max()
  assert 0 < err < 0.05, err  # bf16 has ~3 significant digits; > 0 shows bf16 really ran


def _expected_param_count(latent_dim, dim, num_layers, num_heads, ff_mult, max_len, num_classes,
                          rel_pos_buckets):
  """Closed-form count of the architecture in denoiser.py / blocks.py."""
  hidden, time = ff_mult * dim, 4 * dim
  block = (2 * 4 * dim * dim            # self- and cross-attention q, k, v, out (no biases)
           + 3 * 2 * dim                # three pre-LNs
           + dim * 2 * hidden + 2 * hidden + hidden * dim + dim  # GeGLU in (value + gate) and out
           + time * 2 * dim + 2 * dim)  # AdaLN modulation
  top = (dim * time + time + time * time + time  # time MLP
         + time * dim + dim                      # time -> input sequence
         + 2 * (latent_dim * dim + dim)          # input projection, self-conditioning projection
         + max_len * dim + dim                   # absolute positions, h_null
         + rel_pos_buckets * num_heads           # shared T5 bias
         + 2 * dim + dim * latent_dim + latent_dim  # final LN, output projection
         + (num_classes + 1) * dim * (num_classes > 0))
  return num_layers * block + top


def test_tiny_param_count_matches_closed_form(cond_model):
  _, params = cond_model
  assert count_params(params) == _expected_param_count(LATENT, DIM, LAYERS, HEADS, 4, MAX_LEN, 3, 32)


def test_paper_config_param_count():
  model = Denoiser()  # paper defaults: 768 wide, 12 layers, 12 heads, unconditional
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 768)), jnp.zeros((1,)),
                                             jnp.ones((1, 64), bool))["params"])
  n = count_params(shapes)
  print(f"paper-config denoiser parameters: {n:,} ({n / 1e6:.1f}M)")
  assert n == _expected_param_count(768, 768, 12, 12, 4, 64, 0, 32)
  assert 100e6 < n < 300e6


def test_jit_traces_once(cond_model):
  model, params = cond_model
  z_t, t, mask, self_cond = _inputs()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def apply(params, z_t, t, mask, self_cond, has, labels):
    return _apply(model, params, z_t, t, mask, self_cond, has, labels)

  has, labels = jnp.array([True, False, True, True]), jnp.array([0, 1, 3, 2])
  first = apply(params, z_t, t, mask, self_cond, has, labels)
  second = apply(params, z_t + 1.0, t + 1, ~mask, self_cond, ~has, labels)  # new values, same shapes
  assert first.shape == second.shape


@pytest.mark.parametrize("kwargs,call,message", [
    ({}, dict(length=MAX_LEN + 1), "exceeds max_len"),
    ({}, dict(latent=LATENT + 1), "latent_dim"),
    ({}, dict(int_mask=True), "mask must be a bool"),
    ({}, dict(has_only=True), "has_self_cond was given without self_cond"),
    ({"dtype": "float16x"}, {}, "dtype must be one of"),
    ({"num_heads": 5}, {}, "not divisible by num_heads"),
])
def test_bad_inputs_raise_clear_errors(kwargs, call, message):
  model = Denoiser(**{**TINY, **kwargs})
  length, latent = call.get("length", L), call.get("latent", LATENT)
  z_t = jnp.zeros((2, length, latent))
  mask = jnp.ones((2, length), jnp.int32 if call.get("int_mask") else bool)
  has = jnp.ones((2,), bool) if call.get("has_only") else None
  with pytest.raises(ValueError, match=message):
    model.init(jax.random.key(0), z_t, jnp.zeros((2,)), mask, None, has)


def test_count_params_counts_scalars():
  tree = {"a": jnp.zeros((3, 4)), "b": [jnp.zeros((5,)), jax.ShapeDtypeStruct((2, 2, 2), jnp.float32)]}
  assert count_params(tree) == 12 + 5 + 8
  assert count_params({"s": jnp.zeros(())}) == 1  # A scalar is one parameter (not zero: shape () ).
