"""Measuring tools of the speed benchmarks: a matmul roofline, XLA FLOP counts, timings and trace counters.

- `matmul_roofline(n, dtype)`: FLOP/s of one large square matmul on the default device, the practical peak
  the hot loops are compared with (on CPU, what XLA's Eigen/oneDNN matmul reaches on the cores it was given).
- `xla_flops(fn, *args)`: the FLOPs XLA's cost analysis counts for the compiled program. XLA counts the body
  of a while loop (lax.scan, lax.while_loop, lax.fori_loop) ONCE, whatever its trip count, so a loop's FLOPs
  are measured on its body compiled alone and multiplied by the trip count (see ldlg/benchmarks/speed.py).
  A `lax.cond` is counted as XLA counts it (`cond_flops_note`).
- `matmul_shape_rates(shapes, peak)`: FLOP/s of a model's own matmul shapes, timed side by side: how much of the
  roofline a loop could reach if its matmuls were all it did.
- `time_calls(fn, repeats, calls)`: wall seconds per call after a warm-up, median and min over repeats.
- `TraceCounter`: wraps a function so every trace (not call) is counted: more than one per input shape means
  something recompiles.
"""
import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp


def xla_cost(compiled) -> dict[str, float]:
  """The cost analysis of a compiled program as one dict (older JAX returns a list with one dict per device)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def xla_flops(fn: Callable, *args, **kwargs) -> float:
  """FLOPs of `jax.jit(fn)(*args, **kwargs)` by XLA's cost analysis (loop bodies counted once)."""
  return float(xla_cost(jax.jit(fn).lower(*args, **kwargs).compile()).get("flops", float("nan")))


def compiled_flops(lowerable, *args) -> float:
  """FLOPs of an already wrapped function (`jax.jit` or `jax.pmap` result) for these arguments, per device."""
  return float(xla_cost(lowerable.lower(*args).compile()).get("flops", float("nan")))


def time_calls(fn: Callable[[], Any], *, repeats: int = 3, calls: int = 1, warmup: int = 1) -> dict[str, float]:
  """Seconds per call of `fn()` (its result blocked on), after `warmup` untimed calls.

  Returns:
    {"median_s", "min_s", "max_s"}: over `repeats` timings of `calls` back-to-back calls each.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = None
    for _ in range(calls):
      out = fn()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / calls)
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def interleaved_times(calls_by_name: dict, *, rounds: int, calls: int) -> dict[Any, list[float]]:
  """Seconds per call of each no-argument call, measured side by side: every call compiled and warmed first,
  then `rounds` rounds each timing `calls` back-to-back calls of every entry, the order rotated from round to
  round, so all of them see the same drift in the machine's load. Returns {name: [seconds per call, a round]}."""
  names = list(calls_by_name)
  for call in calls_by_name.values():
    jax.block_until_ready(call())
    jax.block_until_ready(call())
  times = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:  # Rotated: none always runs first.
      t0 = time.perf_counter()
      out = None
      for _ in range(calls):
        out = calls_by_name[name]()
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - t0) / calls)
  return times


def first_call_seconds(fn: Callable[[], Any]) -> float:
  """Wall seconds of the first call (tracing, compiling and one run)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


@dataclasses.dataclass
class TraceCounter:
  """Counts how often `wrap(f)` is traced (Python runs only while JAX traces a jitted function)."""
  count: int = 0

  def wrap(self, fn: Callable) -> Callable:
    def counted(*args, **kwargs):
      self.count += 1
      return fn(*args, **kwargs)
    return counted


def matmul_roofline(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> dict[str, float]:
  """FLOP/s of an [n, n] x [n, n] matmul in `dtype` (2 n^3 FLOPs per call), median over repeats.

  Returns:
    {"n", "dtype", "flops_per_s" (median), "best_flops_per_s" (fastest repeat), "seconds"}.
  """
  keys = jax.random.split(jax.random.PRNGKey(0))
  a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in keys)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  calls = max(1, int(2e9 // (2 * n ** 3)))  # about 2 GFLOP a timing, so small n are not all overhead
  t = time_calls(lambda: matmul(a, b), repeats=repeats, calls=calls)
  flops = 2.0 * n ** 3
  return {"n": n, "dtype": dtype, "flops_per_s": flops / t["median_s"], "best_flops_per_s": flops / t["min_s"],
          "seconds": t["median_s"]}


def matmul_shape_rates(shapes: dict[str, tuple[int, int, int, int]], peak: dict, *, dtype: str = "float32",
                       rounds: int = 5, flops_per_timing: float = 2e8) -> dict[str, dict]:
  """FLOP/s of batched matmuls [b, m, k] x [b, k, n] at the given shapes, measured side by side (`interleaved_times`).

  Args:
    shapes: {name: (b, m, k, n)}.
    peak: a `matmul_roofline` result of the same run, for the fractions.
  Returns:
    {name: {"shape": [b, m, k, n], "flops" (of one call), "flops_per_s" (fastest round), "roofline_fraction"
    (over the fastest roofline repeat)}}.
  """
  calls, flops = {}, {}
  for name, (b, m, k, n) in shapes.items():
    x, y = jnp.ones((b, m, k), dtype), jnp.ones((b, k, n), dtype)
    mm = jax.jit(lambda u, v: jnp.einsum("bmk,bkn->bmn", u, v, preferred_element_type=jnp.float32))
    calls[name] = lambda mm=mm, x=x, y=y: mm(x, y)
    flops[name] = 2.0 * b * m * k * n
  per_call = max(1, int(flops_per_timing // min(flops.values())))
  times = interleaved_times(calls, rounds=rounds, calls=per_call)
  out = {}
  for name, t in times.items():
    rate = flops[name] / min(t)
    out[name] = {"shape": list(shapes[name]), "flops": flops[name], "flops_per_s": rate,
                 "roofline_fraction": rate / peak["best_flops_per_s"]}
  return out


def cond_flops_note() -> str:
  """How this XLA counts a lax.cond: measured on a conditional whose branches differ 3x in FLOPs."""
  x = jnp.ones((256, 256), jnp.float32)
  one = lambda v: v @ v
  three = lambda v: (v @ v) @ v @ v
  both = xla_flops(lambda p, v: jax.lax.cond(p, three, one, v), True, x)
  unit = xla_flops(one, x)
  ratio = both / unit
  if abs(ratio - 3) < 0.2:
    return "lax.cond counted as its most expensive branch"
  if abs(ratio - 4) < 0.2:
    return "lax.cond counted as the sum of its branches"
  return f"lax.cond counted as {ratio:.2f}x its cheaper branch (branches 1x and 3x)"
