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


def ranks_to_dict(ranks: Any) -> dict[str, int]:
  """{"block/conv/kernel": rank} for the ranked leaves (JSON-friendly)."""
  return {_trees.path_str(p): int(r)
          for p, r in jax.tree_util.tree_leaves_with_path(ranks)}


def ranks_from_dict(params: Any, mapping: dict[str, int]) -> Any:
  """The rank pytree for ``params`` from ``ranks_to_dict``'s format."""
  wanted = {_trees.path_tuple(k): v for k, v in mapping.items()}
  known = set(_trees.leaves_by_path(params))
  missing = [k for k in wanted if k not in known]
  if missing:
    raise ValueError(
        f"ranks name {_trees.path_str(missing[0])!r}, which is not in params")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: wanted.get(_trees.path_tuple(path)), params)


def round_ranks(ranks: Any, params: Any, multiple: int = 8) -> Any:
  """Each rank rounded up to a multiple of ``multiple`` (at most full rank).

  For export only: factorizing a rank-r projected kernel at r' > r adds exactly
  zero singular directions, so the compact model computes the same function,
  while channel counts that are multiples of the SIMD width run faster on CPU
  (``benchmarks/compact_inference.py`` measures both).
  """
  if isinstance(multiple, bool) or not isinstance(multiple, numbers.Integral) or (
      multiple < 1):
    raise ValueError(f"multiple must be an int >= 1, got {multiple!r}")

  def up(rank, leaf):
    if rank is None:
      return None
    full = min(projection.matrix_shape(leaf.shape))
    return min(-(-rank // multiple) * multiple, full)

  return jax.tree.map(up, ranks, params, is_leaf=lambda r: r is None)
