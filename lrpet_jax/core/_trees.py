"""Path helpers shared by the rank, BN and transform modules.

Paths are written the way Flax names variables: a tuple of keys such as
``("stage1_block0", "conv1", "kernel")`` or the same joined by ``/``
(``"stage1_block0/conv1/kernel"``). Both spellings are accepted wherever a user
names a path. A Flax NNX ``Variable`` is a pytree node whose one child is its
``value`` attribute: that last key is not part of the path, so an
``nnx.State`` of Variables, the same state made pure and a Linen-style dict
name their leaves alike.
"""

from collections.abc import Mapping, Sequence
import sys
from typing import Any

import jax


def key_name(key: Any) -> str:
  """The plain name of one pytree path entry (DictKey, GetAttrKey, SequenceKey)."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _is_variable_box(key: Any) -> bool:
  return isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value"


def path_tuple(path: Sequence[Any] | str) -> tuple[str, ...]:
  """Normalises a jax key path, a tuple of names or a '/'-joined string."""
  if isinstance(path, str):
    return tuple(p for p in path.split("/") if p)
  return tuple(key_name(k) for k in path if not _is_variable_box(k))


def params_of(tree: Any) -> Any:
  """``tree``, or its ``nnx.Param`` state if it is a Flax NNX module (an
  NNX module exists only once ``flax.nnx`` is imported)."""
  nnx = sys.modules.get("flax.nnx")
  if nnx is not None and isinstance(tree, nnx.Module):
    return nnx.state(tree, nnx.Param)
  return tree


def path_str(path: Sequence[Any] | str) -> str:
  return "/".join(path_tuple(path))


def leaves_by_path(tree: Any) -> dict[tuple[str, ...], Any]:
  """{path tuple: leaf} for every array leaf of ``tree``."""
  return {path_tuple(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def is_rank_map(ranks: Any) -> bool:
  """Whether ``ranks`` is a ``core.ranks.Ranks`` (a mapping with
  ``tree(params)``) rather than a rank pytree (``ranks`` imports this
  module, so the test is by shape)."""
  return isinstance(ranks, Mapping) and callable(getattr(ranks, "tree", None))


def rank_tree(ranks: Any, params: Any) -> Any:
  """The rank pytree of ``params`` from a ``Ranks`` or a rank pytree."""
  return ranks.tree(params) if is_rank_map(ranks) else ranks


def align_to(tree: Any, params: Any, name: str) -> list[Any]:
  """Flattens ``tree`` (a pytree like ``params`` with ``None`` at some leaves)
  into a list aligned with ``jax.tree.leaves(params)``.

  A ``tree`` of another pytree kind with the same leaf paths, its ``None``s
  included (an ``nnx.State`` of Variables for the pure arrays
  ``nnx.Optimizer`` updates, or a dict for a State), is aligned by path.

  Raises:
    ValueError: naming ``name`` if the two structures differ.
  """
  treedef = jax.tree.structure(params)
  try:
    aligned = treedef.flatten_up_to(tree)
    error = ValueError(f"{name} does not match the structure of params")
    if all(x is None or jax.tree_util.treedef_is_leaf(jax.tree.structure(x))
           for x in aligned):
      return aligned
  except (ValueError, TypeError) as e:
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    error = ValueError(
        f"{name} does not match the structure of params: {first_line}")
  paths = [path_tuple(p) for p, _ in jax.tree_util.tree_leaves_with_path(
      params)]
  with_none = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: x is None)[0]
  given = {path_tuple(p): x for p, x in with_none}
  if len(set(paths)) != len(paths) or set(given) != set(paths):
    raise error from None
  return [given[p] for p in paths]
