"""Loss-aware importance sampling of the timestep t (DiffuSeq; Nichol & Dhariwal 2021's "loss-second-moment").

The sampler keeps, for every t, the last `H` (= 10) training losses seen at t. Until every t has H losses,
t is drawn uniformly (weight 1). Once warm,

  p_t ∝ sqrt(E[L_t²])   (E over the H stored losses),   p ← (1 - u) p + u / T   (u = 0.001, a floor so
                                                                              no t is starved),

and each example's loss is weighted by w_t = 1 / (T p_t), so E_{t~p}[w_t L_t] = (1/T) Σ_t L_t: the weighted
objective is an unbiased estimate of the uniform one, with lower variance where the loss is heavy-tailed in t.

The state is a pure pytree (`ImportanceState`: a [T, H] history table and [T] counts), updated inside jit by
`update`; nothing is carried outside the arrays, so a trainer checkpoints and restores it like the params.

Data parallelism. Draws are keyed per example on the *global* `example_index` (like every per-example
choice in `ldlg.methods`), so a step split over devices draws exactly the t a single device would draw for
the whole batch, provided the state is the same everywhere. `update_global` keeps it the same: it gathers
the (t, loss) pairs of all devices (`lax.all_gather` over `ldlg.engine.parallel.AXIS`; the identity outside
pmap), orders them by example_index, and applies them in that order, so every device ends with a
bit-identical table, and the same table as one device running the whole batch given the same losses (a
different batch shape may round the losses themselves differently in the last bit).
"""
from __future__ import annotations

from typing import Mapping, Union

import flax.struct
import jax
import jax.numpy as jnp

from ldlg.engine.parallel import AXIS

HISTORY = 10
UNIFORM_PROB = 0.001


@flax.struct.dataclass
class ImportanceState:
  """The loss history of the importance sampler.

  Attributes:
    history: [T, H] float32, the last H losses seen at each t, oldest first (entries at index >= counts[t]
      are unused zeros).
    counts: [T] int32, how many of the H slots of each t hold a loss (saturates at H).
    uniform_prob: u, the uniform share mixed into p once warm; static.
  """
  history: jax.Array
  counts: jax.Array
  uniform_prob: float = flax.struct.field(pytree_node=False, default=UNIFORM_PROB)

  @property
  def num_timesteps(self) -> int:
    return int(self.history.shape[0])

  @property
  def history_size(self) -> int:
    return int(self.history.shape[1])


def init_state(num_timesteps: int, history: int = HISTORY, uniform_prob: float = UNIFORM_PROB) -> ImportanceState:
  """An empty history: uniform sampling until every t has `history` losses."""
  if num_timesteps < 1 or history < 1:
    raise ValueError(f"need num_timesteps >= 1 and history >= 1, got {num_timesteps}, {history}")
  if not 0.0 <= uniform_prob <= 1.0:
    raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}")
  return ImportanceState(history=jnp.zeros((num_timesteps, history), jnp.float32),
                         counts=jnp.zeros((num_timesteps,), jnp.int32), uniform_prob=float(uniform_prob))


def is_warm(state: ImportanceState) -> jax.Array:
  """True once every t has a full history (bool [])."""
  return jnp.all(state.counts >= state.history_size)


def probabilities(state: ImportanceState) -> jax.Array:
  """p_t [T] float32: uniform before warm-up, (1-u) sqrt(E[L_t²]) / Σ + u / T after."""
  num_t = state.num_timesteps
  uniform = jnp.full((num_t,), 1.0 / num_t, jnp.float32)
  rms = jnp.sqrt(jnp.mean(jnp.square(state.history), axis=1))
  total = jnp.sum(rms)
  # An all-zero history (a loss that is exactly 0 everywhere) has no preferred t: stay uniform.
  weighted = jnp.where(total > 0, rms / jnp.where(total > 0, total, 1.0), uniform)
  mixed = (1.0 - state.uniform_prob) * weighted + state.uniform_prob / num_t
  return jnp.where(is_warm(state), mixed, uniform)


def _example_index(batch: Union[int, jax.Array, Mapping[str, jax.Array]]) -> jax.Array:
  if isinstance(batch, int):
    return jnp.arange(batch)
  if isinstance(batch, Mapping):
    if "example_index" in batch:
      return batch["example_index"]
    first = next(iter(batch.values()))
    return jnp.arange(first.shape[0])
  return jnp.asarray(batch)


def sample_t(state: ImportanceState, key: jax.Array,
             batch: Union[int, jax.Array, Mapping[str, jax.Array]]) -> tuple[jax.Array, jax.Array]:
  """Draws one t per example from p_t and its importance weight 1 / (T p_t).

  Args:
    state: the sampler's state (the same on every device of a step).
    key: a PRNG key shared by every device of a step.
    batch: a batch dict (its "example_index" [b] is used; arange(b) when absent), an [b] array of global
      example indices, or a batch size b (= indices arange(b)). Example i's t is drawn from
      fold_in(key, example_index[i]), so a device's share equals the single-device draw.

  Returns:
    (t [b] int32 in [0, T), weights [b] float32); the weights are exactly 1 before warm-up.
  """
  index = _example_index(batch)
  p = probabilities(state)
  logits = jnp.log(p)
  t = jax.vmap(lambda i: jax.random.categorical(jax.random.fold_in(key, i), logits))(index).astype(jnp.int32)
  weights = 1.0 / (state.num_timesteps * p[t])
  return t, jnp.where(is_warm(state), weights, 1.0).astype(jnp.float32)


def update(state: ImportanceState, t: jax.Array, losses: jax.Array) -> ImportanceState:
  """Appends each (t_i, loss_i) to t_i's history in order (a full history drops its oldest loss).

  Jit-able: a `lax.scan` over the pairs, so two examples with the same t in one batch are both recorded,
  in order, exactly as a Python loop over them would.

  Args:
    state: the sampler's state.
    t: [n] int timesteps.
    losses: [n] float per-example losses (unweighted; gradients are stopped here).

  Returns:
    The new state.
  """
  size = state.history_size
  losses = jax.lax.stop_gradient(losses).astype(jnp.float32)

  def one(carry, pair):
    history, counts = carry
    ti, li = pair
    row, count = history[ti], counts[ti]
    shifted = jnp.concatenate([row[1:], li[None]])
    appended = row.at[jnp.minimum(count, size - 1)].set(li)
    row = jnp.where(count >= size, shifted, appended)
    return (history.at[ti].set(row), counts.at[ti].set(jnp.minimum(count + 1, size))), None

  (history, counts), _ = jax.lax.scan(one, (state.history, state.counts),
                                      (t.astype(jnp.int32).reshape(-1), losses.reshape(-1)))
  return state.replace(history=history, counts=counts)


def _all_gather(x: jax.Array) -> jax.Array:
  """[b, ...] -> [n_devices * b, ...] over the data-parallel axis; the identity outside pmap."""
  try:
    gathered = jax.lax.all_gather(x, AXIS)
  except NameError:  # Unbound axis name: not under pmap.
    return x
  return gathered.reshape((-1,) + x.shape[1:])


def update_global(state: ImportanceState, t: jax.Array, losses: jax.Array,
                  example_index: jax.Array) -> ImportanceState:
  """`update` with the pairs of every device of the step, in global example order.

  Under pmap every device gets the same new state, equal to what one device computes from the whole batch's
  pairs (outside pmap this is `update` on the pairs sorted by example_index).

  Args:
    state: the sampler's state (the same on every device).
    t: [b] this device's timesteps.
    losses: [b] this device's unweighted per-example losses.
    example_index: [b] the examples' global indices.

  Returns:
    The new state.
  """
  t, losses, example_index = (_all_gather(x) for x in (t, jax.lax.stop_gradient(losses), example_index))
  order = jnp.argsort(example_index)
  return update(state, t[order], losses[order])
