"""Which kernels are projected, and to what rank.

A rank pytree has the structure of ``params``: an int rank at each projected
leaf and ``None`` elsewhere. Map over it with
``jax.tree.map(f, ranks, is_leaf=lambda x: x is None)`` to keep the ``None``s.
"""

from collections.abc import Callable
import numbers
from typing import Any

import jax

from lrpet_jax import _trees
from lrpet_jax import projection

IncludeFn = Callable[[tuple[Any, ...], Any], bool]


def is_kernel(path: tuple[Any, ...], leaf: Any) -> bool:
  """Default selection: leaves named ``kernel`` with ndim ≥ 2 (conv and dense)."""
  return (bool(path) and _trees.key_name(path[-1]) == "kernel"
          and getattr(leaf, "ndim", 0) >= 2)


def uniform_rank(shape: tuple[int, ...], ratio: float) -> int:
  """r = max(1, int(n − n·ratio)), n = min of the matrix dims of ``shape``."""
  n = min(projection.matrix_shape(shape))
  return max(1, int(n - n * ratio))


def uniform_ranks(params: Any, ratio: float, *,
                  include: IncludeFn | None = None) -> Any:
  """The same compression ``ratio`` for every selected kernel.

  Args:
    params: pytree of arrays (or ``jax.ShapeDtypeStruct``s).
    ratio: fraction of each kernel's rank removed, in [0, 1).
    include: ``include(path, leaf) -> bool`` selects the projected leaves
      (``path`` is a jax key path); default ``is_kernel``.

  Returns:
    A rank pytree: int at selected leaves, ``None`` elsewhere.
  """
  if (isinstance(ratio, bool) or not isinstance(ratio, numbers.Real)
      or not 0.0 <= ratio < 1.0):
    raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}")
  include = include or is_kernel

  def rank_of(path, leaf):
    if not include(path, leaf):
      return None
    if getattr(leaf, "ndim", 0) < 2:
      raise ValueError(
          f"include selected {_trees.path_str(path)} of shape"
          f" {getattr(leaf, 'shape', ())}; only leaves with ndim >= 2 can be"
          " projected")
    return uniform_rank(tuple(leaf.shape), ratio)

  return jax.tree_util.tree_map_with_path(rank_of, params)
