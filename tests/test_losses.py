"""The diffusion training loss: masking, self-conditioning gradients, coin rates, closed forms."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ldlg.methods.gaussian import parameterization as P
from ldlg.methods.gaussian.denoise_fn import denoise_fn_from_module
from ldlg.methods.gaussian.losses import loss_fn_from_config, make_loss_fn
from ldlg.methods.gaussian.samplers import mask_from_lengths
from ldlg.methods.gaussian.schedules import get_schedule
from ldlg.networks.denoiser import Denoiser
from tests.helpers.denoiser_params import perturbed_denoiser_params

T = 1000
SCHEDULE = get_schedule("linear", T)


class StandIn(nn.Module):
  """A per-position MLP with the Denoiser's call signature (reads t, self_cond and class_id)."""
  latent_dim: int
  num_classes: int = 0
  hidden: int = 16

  @nn.compact
  def __call__(self, z_t, t, mask, self_cond=None, has_self_cond=None, class_id=None, *, train=False):
    b, l, _ = z_t.shape
    has = jnp.full((b,), self_cond is not None) if has_self_cond is None else has_self_cond
    sc = jnp.zeros_like(z_t) if self_cond is None else jnp.where(has[:, None, None], self_cond, 0.0)
    per_example = [t[:, None] / T, has[:, None].astype(jnp.float32)]
    if self.num_classes:
      ids = jnp.full((b,), self.num_classes) if class_id is None else class_id
      per_example.append(nn.Embed(self.num_classes + 1, 4)(ids))
    per_example = jnp.concatenate(per_example, axis=-1)
    feats = jnp.concatenate([z_t, sc, jnp.broadcast_to(per_example[:, None], (b, l, per_example.shape[-1]))],
                            axis=-1)
    return nn.Dense(self.latent_dim)(jnp.tanh(nn.Dense(self.hidden)(feats)))


def make_batch(b=6, l=7, d=4, num_classes=0, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  lengths = jnp.arange(b) % l + 1
  batch = {"latents": jax.random.normal(k1, (b, l, d)), "mask": mask_from_lengths(lengths, l)}
  if num_classes:
    batch["label"] = jax.random.randint(k2, (b,), 0, num_classes)
  return batch


def init_standin(batch, num_classes=0):
  model = StandIn(batch["latents"].shape[-1], num_classes)
  b = batch["latents"].shape[0]
  params = model.init(jax.random.PRNGKey(1), batch["latents"], jnp.zeros((b,), jnp.int32), batch["mask"],
                      batch["latents"], jnp.ones((b,), bool))["params"]
  return denoise_fn_from_module(model), params


@pytest.mark.parametrize("objective", P.OBJECTIVES)
def test_padded_values_change_neither_loss_nor_gradients(objective):
  batch = make_batch(num_classes=3)
  denoise_fn, params = init_standin(batch, num_classes=3)
  loss_fn = jax.jit(jax.value_and_grad(make_loss_fn(denoise_fn, SCHEDULE, objective=objective,
                                                    num_classes=3), has_aux=True))
  (loss, _), grads = loss_fn(params, jax.random.PRNGKey(2), batch)
  garbage = jnp.where(batch["mask"][..., None], batch["latents"], 1e4)
  (loss2, _), grads2 = loss_fn(params, jax.random.PRNGKey(2), dict(batch, latents=garbage))
  assert float(loss) > 0
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, grads2)


def test_first_self_conditioning_pass_gets_no_gradient_closed_form():
  """f = p_plain·z without an estimate, p_w·z + p_sc·x̃ with one: the loss reaches p_plain only through
  the stop-gradient, so with every example self-conditioned its gradient is exactly zero."""
  def denoise_fn(params, z, t, mask, self_cond, has_self_cond, class_id, train, rng):
    plain = params["plain"] * z
    if self_cond is None:
      return plain
    return jnp.where(has_self_cond[:, None, None], params["w"] * z + params["sc"] * self_cond, plain)

  params = {"plain": jnp.array(0.7), "w": jnp.array(0.3), "sc": jnp.array(0.5)}
  batch = make_batch()
  loss_fn = make_loss_fn(denoise_fn, SCHEDULE, self_condition_prob=1.0)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, jax.random.PRNGKey(0), batch)
  assert float(metrics["self_cond_frac"]) == 1.0
  assert float(grads["plain"]) == 0.0
  assert abs(float(grads["sc"])) > 1e-3 and abs(float(grads["w"])) > 1e-3
  # Changing p_plain still changes the loss (through the estimate's value): the path exists, only its
  # gradient is cut.
  moved, _ = loss_fn(dict(params, plain=jnp.array(0.9)), jax.random.PRNGKey(0), batch)
  assert abs(float(moved) - float(loss)) > 1e-4


def test_first_self_conditioning_pass_gets_no_gradient_network():
  """For a real network: gradients equal those of a loss whose first pass sees stop_gradient(params)."""
  batch = make_batch()
  denoise_fn, params = init_standin(batch)

  def frozen_first_pass(p, z, t, mask, self_cond, has_self_cond, class_id, train, rng):
    if self_cond is None:
      p = jax.lax.stop_gradient(p)
    return denoise_fn(p, z, t, mask, self_cond, has_self_cond, class_id, train, rng)

  grad = lambda fn: jax.grad(lambda p: make_loss_fn(fn, SCHEDULE)(p, jax.random.PRNGKey(3), batch)[0])(params)
  g, g_frozen = grad(denoise_fn), grad(frozen_first_pass)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), g, g_frozen)
  assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(g)) > 1e-4


def test_coin_rates_and_uniform_t():
  """Label dropout, self-conditioning coins and t ~ U[0, T) have the configured rates (within 4 SE).

  The denoiser reports what it saw: output 1 where the class is null, 0 where it is the example's own
  label, 100 on any other (wrong) class; x0 target 0 and an L1 loss make the loss the null fraction.
  """
  n, c, p_drop = 20000, 4, 0.1
  labels = jnp.arange(n) % c
  batch = {"latents": jnp.zeros((n, 1, 1)), "mask": jnp.ones((n, 1), bool), "label": labels}

  def reports_class(params, z, t, mask, self_cond, has_self_cond, cond, train, rng):
    class_id = cond["class_id"]
    out = jnp.where(class_id == c, 1.0, jnp.where(class_id == labels, 0.0, 100.0))
    return jnp.broadcast_to(out[:, None, None], z.shape)

  def reports_self_cond(params, z, t, mask, self_cond, has_self_cond, class_id, train, rng):
    out = jnp.zeros(z.shape[:1]) if self_cond is None else has_self_cond.astype(jnp.float32)
    return jnp.broadcast_to(out[:, None, None], z.shape)

  rng = jax.random.PRNGKey(0)
  loss, m = make_loss_fn(reports_class, SCHEDULE, loss_type="l1", label_dropout=p_drop,
                         num_classes=c)(None, rng, batch)
  assert abs(float(loss) - p_drop) < 4 * math.sqrt(p_drop * (1 - p_drop) / n)
  assert float(loss) == pytest.approx(float(m["null_label_frac"]), abs=1e-6)
  assert abs(float(m["t_mean"]) - (T - 1) / 2) < 4 * T / math.sqrt(12 * n)

  loss, m = make_loss_fn(reports_self_cond, SCHEDULE, loss_type="l1", self_condition_prob=0.5)(
      None, rng, batch)
  assert abs(float(loss) - 0.5) < 4 * math.sqrt(0.25 / n)
  assert float(loss) == pytest.approx(float(m["self_cond_frac"]), abs=1e-6)
  # Unconditional config: labels are ignored and the network sees cond=None.
  seen = []
  def records(params, z, t, mask, self_cond, has_self_cond, cond, train, rng):
    seen.append(cond)
    return z
  make_loss_fn(records, SCHEDULE, num_classes=0)(None, rng, batch)
  assert seen and all(x is None for x in seen)


def test_l1_l2_closed_form_equal_weight_per_example():
  """A constant prediction c: the loss is the per-example mean of (c-x)² or |c-x| over valid positions
  and channels, averaged over examples with equal weight (not over tokens)."""
  batch = make_batch(b=5, l=6, d=3)
  denoise_fn = lambda p, z, *args: jnp.full_like(z, p)
  x = np.asarray(batch["latents"], np.float64)
  m = np.asarray(batch["mask"])
  c = 0.4
  for loss_type, f in (("l2", np.square), ("l1", np.abs)):
    loss, _ = make_loss_fn(denoise_fn, SCHEDULE, loss_type=loss_type)(c, jax.random.PRNGKey(0), batch)
    per_example = [f(c - x[i][m[i]]).mean() for i in range(len(x))]
    np.testing.assert_allclose(float(loss), np.mean(per_example), rtol=1e-6)
    token_weighted = f(c - x[m]).mean()
    assert abs(np.mean(per_example) - token_weighted) > 1e-3  # the two weightings differ on this batch


@pytest.mark.parametrize("objective", P.OBJECTIVES)
def test_oracle_output_gives_zero_loss_and_offset_gives_offset(objective):
  """Output = the objective's exact target gives loss 0; target + δ gives δ² (L2) and |δ| (L1)."""
  batch = make_batch()
  x0 = batch["latents"]

  def oracle(delta, z, t, mask, self_cond, has_self_cond, class_id, train, rng):
    ab = SCHEDULE.alphas_cumprod[t]
    eps = P.eps_from_x0(z, x0, ab)
    return P.target_for_objective(objective, x0, eps, ab) + delta

  for delta in (0.0, 0.3):
    for loss_type, expected in (("l2", delta**2), ("l1", delta)):
      loss, m = make_loss_fn(oracle, SCHEDULE, objective=objective, loss_type=loss_type)(
          delta, jax.random.PRNGKey(5), batch)
      # ε from (z, x0) is rounded by 1/sqrt(1-ᾱ) (≈ 100 at t = 0): hence the 1e-3 absolute slack.
      assert float(loss) == pytest.approx(expected, abs=1e-3 if loss_type == "l1" else 1e-5)
      if delta == 0.0:
        assert float(m["x0_mse"]) < 1e-6


def test_determinism_and_example_index_split():
  """Same rng → same loss; other rng → other loss; and a batch split in two halves with global
  example indices gives the full-batch loss as the mean of the halves (what pmean relies on)."""
  batch = make_batch(b=8, num_classes=3)
  denoise_fn, params = init_standin(batch, num_classes=3)
  loss_fn = jax.jit(make_loss_fn(denoise_fn, SCHEDULE, num_classes=3))
  rng = jax.random.PRNGKey(7)
  full, _ = loss_fn(params, rng, batch)
  assert float(full) == float(loss_fn(params, rng, batch)[0])
  assert float(full) != float(loss_fn(params, jax.random.PRNGKey(8), batch)[0])
  halves = []
  for lo in (0, 4):
    half = {k: v[lo:lo + 4] for k, v in batch.items()}
    half["example_index"] = jnp.arange(lo, lo + 4)
    halves.append(float(loss_fn(params, rng, half)[0]))
  np.testing.assert_allclose(np.mean(halves), float(full), rtol=1e-6)


def test_network_calls_per_step():
  calls = []
  def counting(params, z, t, mask, self_cond, has_self_cond, class_id, train, rng):
    calls.append(self_cond is None)
    return z
  batch = make_batch()
  make_loss_fn(counting, SCHEDULE, self_condition_prob=0.0)(None, jax.random.PRNGKey(0), batch)
  assert calls == [True]  # no estimate pass at all
  calls.clear()
  make_loss_fn(counting, SCHEDULE, self_condition_prob=0.5)(None, jax.random.PRNGKey(0), batch)
  assert calls == [True, False]


def test_bad_inputs_name_the_problem():
  batch = make_batch()
  fn = lambda p, z, *a: z
  with pytest.raises(ValueError, match="loss_type"):
    make_loss_fn(fn, SCHEDULE, loss_type="huber")
  with pytest.raises(ValueError, match="self_condition_prob"):
    make_loss_fn(fn, SCHEDULE, self_condition_prob=1.5)
  with pytest.raises(ValueError, match="has no 'label'"):
    make_loss_fn(fn, SCHEDULE, num_classes=2)(None, jax.random.PRNGKey(0), batch)
  with pytest.raises(ValueError, match="mask"):
    make_loss_fn(fn, SCHEDULE)(None, jax.random.PRNGKey(0), dict(batch, mask=batch["mask"].astype(int)))


@pytest.mark.slow
def test_real_denoiser_loss():
  """With the project's Denoiser: padding invariance, and no gradient through the first pass."""
  batch = make_batch(b=4, l=6, d=8, num_classes=2)
  model = Denoiser(latent_dim=8, dim=16, num_layers=1, num_heads=2, ff_mult=2, max_len=8, num_classes=2,
                   num_timesteps=T)
  params = perturbed_denoiser_params(model, batch, jax.random.PRNGKey(0))
  denoise_fn = denoise_fn_from_module(model)

  def frozen_first_pass(p, z, t, mask, self_cond, *rest):
    return denoise_fn(jax.lax.stop_gradient(p) if self_cond is None else p, z, t, mask, self_cond, *rest)

  @jax.jit
  def both(params, batch):
    value_and_grad = lambda fn: jax.value_and_grad(
        lambda p: make_loss_fn(fn, SCHEDULE, num_classes=2)(p, jax.random.PRNGKey(2), batch)[0])(params)
    return value_and_grad(denoise_fn), value_and_grad(frozen_first_pass)[1]

  (loss, g), g_frozen = both(params, batch)
  garbage = dict(batch, latents=jnp.where(batch["mask"][..., None], batch["latents"], 1e3))
  (loss2, g2), _ = both(params, garbage)
  assert np.isfinite(float(loss)) and float(loss) > 0
  np.testing.assert_allclose(loss2, loss, rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, g2)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, g_frozen)
  assert max(float(np.abs(x).max()) for x in jax.tree_util.tree_leaves(g)) > 1e-4


def test_loss_fn_from_config_reads_the_fields():
  batch = make_batch(num_classes=3)
  denoise_fn, params = init_standin(batch, num_classes=3)
  cfg = ml_collections.ConfigDict(dict(objective="v", loss_type="l1", self_condition_prob=0.0,
                                       label_dropout=0.3))
  rng = jax.random.PRNGKey(4)
  got, _ = loss_fn_from_config(denoise_fn, SCHEDULE, cfg, num_classes=3)(params, rng, batch)
  want, _ = make_loss_fn(denoise_fn, SCHEDULE, objective="v", loss_type="l1", self_condition_prob=0.0,
                         label_dropout=0.3, num_classes=3)(params, rng, batch)
  assert float(got) == float(want)
  other, _ = make_loss_fn(denoise_fn, SCHEDULE, num_classes=3)(params, rng, batch)
  assert float(got) != float(other)


# ----------------------------------------------------------------------------- self-conditioning modes

MODES = ("per_example", "per_batch", "skip_if_unused")


def _closed_form_sc(params, z, t, mask, self_cond, has_self_cond, class_id, train, rng):
  """p_plain·z without an estimate, p_w·z + p_sc·x̃ with one (as in the test above)."""
  plain = params["plain"] * z
  if self_cond is None:
    return plain
  return jnp.where(has_self_cond[:, None, None], params["w"] * z + params["sc"] * self_cond, plain)


_SC_PARAMS = {"plain": jnp.array(0.7), "w": jnp.array(0.3), "sc": jnp.array(0.5)}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_at_probability_one_is_the_closed_form_self_conditioned_loss(mode):
  """With probability 1 every mode self-conditions every example: the same loss and gradients as per_example,
  and p_plain (reached only through the stop-gradient estimate) gets exactly zero gradient."""
  batch = make_batch()
  rng = jax.random.PRNGKey(0)
  grad = lambda m: jax.value_and_grad(make_loss_fn(_closed_form_sc, SCHEDULE, self_condition_prob=1.0,
                                                   self_condition_mode=m), has_aux=True)(_SC_PARAMS, rng, batch)
  (loss, metrics), grads = grad(mode)
  (want, _), want_grads = grad("per_example")
  assert float(metrics["self_cond_frac"]) == 1.0
  assert float(grads["plain"]) == 0.0 and abs(float(grads["sc"])) > 1e-3
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), grads, want_grads)


def _counting(calls):
  """The closed-form denoiser, recording at run time (not trace time) every pass without an estimate: the
  estimate pass (the loss's second pass always gets an estimate when self-conditioning is on)."""
  def denoise_fn(params, z, t, mask, self_cond, has_self_cond, class_id, train, rng):
    if self_cond is None:
      jax.debug.callback(lambda: calls.append("estimate_pass"))
    return _closed_form_sc(params, z, t, mask, self_cond, has_self_cond, class_id, train, rng)
  return denoise_fn


@pytest.mark.slow
def test_skip_if_unused_equals_per_example_and_skips_only_when_no_coin_is_up():
  batch = make_batch(b=6)
  denoise_fn, params = init_standin(batch)
  value_and_grad = {(mode, p): jax.jit(jax.value_and_grad(
      make_loss_fn(denoise_fn, SCHEDULE, self_condition_prob=p, self_condition_mode=mode), has_aux=True))
                    for mode in ("skip_if_unused", "per_example") for p in (0.5, 0.05)}
  fracs = set()
  for seed in range(12):
    rng = jax.random.PRNGKey(seed)
    for prob in (0.5, 0.05):
      (loss, m), g = value_and_grad["skip_if_unused", prob](params, rng, batch)
      (want, m_want), g_want = value_and_grad["per_example", prob](params, rng, batch)
      assert float(m["self_cond_frac"]) == float(m_want["self_cond_frac"])  # the same coins
      np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
      jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, g_want)
      fracs.add(float(m["self_cond_frac"]) > 0)
  assert fracs == {True, False}  # both branches were exercised

  # The estimate pass runs exactly when some coin is up.
  calls = []
  loss_fn = jax.jit(make_loss_fn(_counting(calls), SCHEDULE, self_condition_prob=0.05,
                                 self_condition_mode="skip_if_unused"))
  for seed in range(12):
    calls.clear()
    _, m = loss_fn(_SC_PARAMS, jax.random.PRNGKey(seed), batch)
    jax.effects_barrier()
    assert len(calls) == (1 if float(m["self_cond_frac"]) > 0 else 0)


@pytest.mark.slow
def test_per_batch_is_one_coin_per_step_choosing_between_the_two_closed_forms():
  """Each step's loss is the all-self-conditioned loss (probability 1) or the plain one (probability 0), by a
  coin of rate p shared by the whole batch; the estimate pass runs only when the coin is up."""
  batch = make_batch(b=6)
  calls = []
  per_batch = jax.jit(make_loss_fn(_counting(calls), SCHEDULE, self_condition_prob=0.3,
                                   self_condition_mode="per_batch"))
  always = jax.jit(make_loss_fn(_closed_form_sc, SCHEDULE, self_condition_prob=1.0))
  never = jax.jit(make_loss_fn(_closed_form_sc, SCHEDULE, self_condition_prob=0.0))
  n, ups = 200, 0
  for seed in range(n):
    rng = jax.random.PRNGKey(seed)
    calls.clear()
    loss, m = per_batch(_SC_PARAMS, rng, batch)
    jax.effects_barrier()
    frac = float(m["self_cond_frac"])
    assert frac in (0.0, 1.0)
    ups += frac == 1.0
    assert len(calls) == int(frac)
    np.testing.assert_allclose(float(loss), float((always if frac else never)(_SC_PARAMS, rng, batch)[0]),
                               rtol=1e-6)
  assert abs(ups / n - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)


@pytest.mark.parametrize("mode", MODES)
def test_two_device_step_equals_one_device_step_in_every_mode(mode):
  """The engine's pmapped step on 2 devices equals the 1-device step: the per-batch coin and the
  skip decision are the same on every device."""
  from ldlg.engine import parallel
  from ldlg.engine import train_state as train_state_lib
  from ldlg.engine import trainer
  assert jax.local_device_count() >= 2
  batch = make_batch(b=8)
  denoise_fn, params = init_standin(batch)
  loss_fn = make_loss_fn(denoise_fn, SCHEDULE, self_condition_prob=0.5, self_condition_mode=mode)
  optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                         b1=0.9, b2=0.999, eps=1e-8, grad_clip=0.0))
  tx = train_state_lib.make_optimizer(optim, 10)
  job = trainer.TrainJob(init_params=None, loss_fn=loss_fn, batches=None, optim=optim,
                         init_rng=jax.random.PRNGKey(0), rng=jax.random.PRNGKey(3))
  host_batch = dict(jax.device_get(batch), example_index=np.arange(8))

  def run(num_devices):
    devices = jax.local_devices()[:num_devices]
    state = parallel.replicate(train_state_lib.TrainState.create(params, tx), devices)
    step = trainer.make_p_train_step(job, devices)
    out = []
    for _ in range(3):  # several steps: several coins
      state, metrics = step(state, parallel.shard_batch(host_batch, num_devices))
      out.append(jax.device_get(parallel.unreplicate(metrics)))
    return jax.device_get(parallel.unreplicate(state).params), out

  one_params, one_metrics = run(1)
  two_params, two_metrics = run(2)
  for a, b in zip(one_metrics, two_metrics):
    for key in ("loss", "self_cond_frac", "grad_norm"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), two_params, one_params)


@pytest.mark.slow
def test_skip_if_unused_decides_over_the_global_batch():
  """A device none of whose examples is self-conditioned still runs the estimate pass when another device's
  example is (the decision is taken over the global batch, so every device runs the same branch)."""
  batch = dict(make_batch(b=4), example_index=jnp.arange(4))
  frac = lambda rng, lo: float(make_loss_fn(_closed_form_sc, SCHEDULE, self_condition_prob=0.2)(
      _SC_PARAMS, rng, {k: v[lo:lo + 2] for k, v in batch.items()})[1]["self_cond_frac"])
  rng = next(r for r in (jax.random.PRNGKey(s) for s in range(200)) if frac(r, 0) == 0 and frac(r, 2) > 0)
  calls = []
  loss_fn = make_loss_fn(_counting(calls), SCHEDULE, self_condition_prob=0.2, self_condition_mode="skip_if_unused")
  sharded = jax.tree_util.tree_map(lambda x: np.asarray(x).reshape((2, 2) + x.shape[1:]), batch)
  jax.pmap(lambda b: loss_fn(_SC_PARAMS, rng, b)[0], axis_name="batch", devices=jax.local_devices()[:2])(sharded)
  jax.effects_barrier()
  assert len(calls) == 2  # both devices ran the estimate pass


def test_unknown_self_condition_mode_is_refused():
  with pytest.raises(ValueError, match="self_condition_mode"):
    make_loss_fn(lambda p, z, *a: z, SCHEDULE, self_condition_mode="sometimes")
