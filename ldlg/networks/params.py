"""Parameter counting for any params pytree (real arrays or `jax.ShapeDtypeStruct`s from eval_shape)."""
import math
from typing import Any

import jax


def count_params(params: Any) -> int:
  """Total number of scalars in a pytree of arrays or shape structs.

  Args:
    params: a params pytree (e.g. `variables["params"]`), or its `jax.eval_shape` abstract version, so
      the paper-size model can be counted without allocating it.

  Returns:
    The number of parameters, as a Python int.
  """
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
