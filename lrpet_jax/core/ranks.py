"""Which kernels are projected, and to what rank.

A rank pytree has the structure of ``params``: an int rank at each projected
leaf and ``None`` elsewhere. Map over it with
``jax.tree.map(f, ranks, is_leaf=lambda x: x is None)`` to keep the ``None``s.
"""

from collections.abc import Callable, Mapping
import json
import numbers
import pathlib
from typing import Any

import jax

from lrpet_jax.core import _trees
from lrpet_jax.core import projection

IncludeFn = Callable[[tuple[Any, ...], Any], bool]


def is_kernel(path: tuple[Any, ...], leaf: Any) -> bool:
  """Conv and dense kernels: leaves named ``kernel`` with ndim ≥ 2."""
  path = _trees.path_tuple(path)
  return bool(path) and path[-1] == "kernel" and getattr(leaf, "ndim", 0) >= 2


def is_conv_kernel(path: tuple[Any, ...], leaf: Any) -> bool:
  """Selection by shape alone: leaves named ``kernel`` with ndim ≥ 3
  ((kh, kw, c_in, c_out) in 2-D). Right for models of plain ``nn.Conv`` and
  ``nn.Dense``; it cannot tell an attention ``DenseGeneral`` kernel or a
  grouped convolution from a convolution: the pipeline selects from the
  model's layer table instead (``ranking.selection``; ``by_name``).

  The authors' code (canyyang/LRPET, ``cifar10_train.py`` and the ImageNet
  script) projects every ``nn.Conv2d``, the stem included, and never an
  ``nn.Linear``: a 10-class head held at rank 4 would confine the logits to a
  4-dimensional subspace. Pass ``include=is_kernel`` to project dense kernels
  too.
  """
  return is_kernel(path, leaf) and leaf.ndim >= 3


def by_name(kernels) -> IncludeFn:
  """Selects the leaves at these kernel paths (e.g. a layer table's
  ``selected`` layers' ``kernel``)."""
  names = {_trees.path_tuple(k) for k in kernels}
  return lambda path, leaf: _trees.path_tuple(path) in names


def uniform_rank(shape: tuple[int, ...], ratio: float) -> int:
  """r = max(1, int(n − n·ratio)), n = min of the matrix dims of ``shape``."""
  n = min(projection.matrix_shape(shape))
  return max(1, int(n - n * ratio))


def uniform_ranks(params: Any, ratio: float, *,
                  include: IncludeFn | None = None) -> Any:
  """The same compression ``ratio`` for every selected kernel.

  Args:
    params: pytree of arrays (or ``jax.ShapeDtypeStruct``s); or a Flax NNX
      module, whose ``nnx.Param`` state is meant.
    ratio: fraction of each kernel's rank removed, in [0, 1).
    include: ``include(path, leaf) -> bool`` selects the projected leaves
      (``path`` is a jax key path); default ``is_conv_kernel`` (the authors'
      choice), ``is_kernel`` adds dense kernels.

  Returns:
    A rank pytree: int at selected leaves, ``None`` elsewhere.

  r = max(1, int(n − n·ratio)), n = min of the kernel's matrix dimensions:

  >>> import numpy as np
  >>> from lrpet_jax.core.ranks import uniform_ranks
  >>> params = {"conv": {"kernel": np.zeros((3, 3, 16, 32))},
  ...           "head": {"kernel": np.zeros((32, 10))}}
  >>> uniform_ranks(params, 0.54)
  {'conv': {'kernel': 14}, 'head': {'kernel': None}}
  """
  if (isinstance(ratio, bool) or not isinstance(ratio, numbers.Real)
      or not 0.0 <= ratio < 1.0):
    raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}")
  include = include or is_conv_kernel
  params = _trees.params_of(params)

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


def floor_ranks(ranks: Any, params: Any, floor: int,
                first: tuple[Any, ...] | str | None = None,
                first_floor: int | None = None) -> Any:
  """Each rank raised to at least ``floor`` (at most the kernel's full rank).

  The authors' VGG-16 setting (``cifar10_train.py``, "vgg16_bn"): with a
  uniform ratio, the first convolution keeps rank ≥ 18 (2/3 of its 27 rows)
  and every other one rank ≥ 43 (2/3 of 64): ``floor=43, first=<stem kernel
  path>, first_floor=18``.

  Args:
    ranks: a rank pytree of ``params``.
    params: arrays or ``jax.ShapeDtypeStruct``s.
    floor: minimum rank of every ranked kernel (int ≥ 0).
    first: path of the kernel that gets ``first_floor`` instead.
    first_floor: the minimum rank at ``first``.
  """
  for name, value in (("floor", floor), ("first_floor", first_floor)):
    if value is not None and (isinstance(value, bool) or not isinstance(
        value, numbers.Integral) or value < 0):
      raise ValueError(f"{name} must be an int >= 0, got {value!r}")
  if (first is None) != (first_floor is None):
    raise ValueError("give first and first_floor together")
  first = None if first is None else _trees.path_tuple(first)
  if first is not None and _trees.leaves_by_path(ranks).get(first) is None:
    raise ValueError(f"first: {_trees.path_str(first)!r} has no rank")

  def raise_rank(path, rank, leaf):
    if rank is None:
      return None
    low = first_floor if _trees.path_tuple(path) == first else floor
    return min(max(rank, low), min(projection.matrix_shape(leaf.shape)))

  return jax.tree_util.tree_map_with_path(raise_rank, ranks, params,
                                          is_leaf=lambda r: r is None)


class Ranks(Mapping[str, int]):
  """A model's ranks: kernel path ("block/conv/kernel") → rank, in the order
  of the params' leaves.

  Ranks in their three forms: this mapping, the JSON object of
  ``ranks.json`` (``to_json``, ``read``, ``Ranks(mapping)``) and the rank
  pytree the math works on (``tree(params)``: the rank at each ranked leaf,
  ``None`` elsewhere; ``Ranks.of_tree`` back). The public functions that
  take a rank pytree take a ``Ranks`` too (``_trees.rank_tree``).
  """

  def __init__(self, mapping: Mapping[str, int]):
    self._ranks = {}
    for path, rank in mapping.items():
      if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or (
          rank < 1):
        raise ValueError(f"ranks: {_trees.path_str(path)!r} has rank"
                         f" {rank!r}, not an int >= 1")
      self._ranks[_trees.path_str(path)] = int(rank)

  @classmethod
  def of_tree(cls, tree: Any) -> "Ranks":
    """The ranks of a rank pytree (its non-``None`` leaves)."""
    if isinstance(tree, Ranks):
      return tree
    return cls({_trees.path_str(p): r
                for p, r in jax.tree_util.tree_leaves_with_path(tree)})

  def tree(self, params: Any) -> Any:
    """The rank pytree of ``params``; a path not in ``params`` is a
    one-line ValueError naming it."""
    wanted = {_trees.path_tuple(k): v for k, v in self._ranks.items()}
    known = set(_trees.leaves_by_path(params))
    missing = [k for k in wanted if k not in known]
    if missing:
      raise ValueError(f"ranks name {_trees.path_str(missing[0])!r}, which is"
                       " not in params")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: wanted.get(_trees.path_tuple(path)), params)

  @classmethod
  def read(cls, path) -> "Ranks":
    """The ranks of a JSON file (a run's ``ranks.json``)."""
    return cls(json.loads(pathlib.Path(path).read_text()))

  def to_json(self) -> dict[str, int]:
    """{"block/conv/kernel": rank} (``ranks.json``)."""
    return dict(self._ranks)

  def write(self, path) -> None:
    """``to_json`` to the file ``path`` (``read`` reads it back)."""
    pathlib.Path(path).write_text(json.dumps(self._ranks, indent=1) + "\n")

  def __getitem__(self, path) -> int:
    return self._ranks[_trees.path_str(path)]

  def __iter__(self):
    return iter(self._ranks)

  def __len__(self) -> int:
    return len(self._ranks)

  def __eq__(self, other) -> bool:
    return isinstance(other, Mapping) and self._ranks == {
        _trees.path_str(k): v for k, v in other.items()}

  def __hash__(self):
    return hash(tuple(self._ranks.items()))

  def __repr__(self) -> str:
    return f"Ranks({self._ranks!r})"


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of ``multiple`` at or above ``n``."""
  return -(-n // multiple) * multiple


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
    return min(round_up(rank, multiple),
               min(projection.matrix_shape(leaf.shape)))

  return jax.tree.map(up, ranks, params, is_leaf=lambda r: r is None)


def as_json(ranks: Any) -> dict[str, int]:
  """{"block/conv/kernel": rank} of a rank pytree or a ``Ranks``."""
  return Ranks.of_tree(ranks).to_json()
