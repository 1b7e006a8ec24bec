"""Path helpers shared by the rank, BN and transform modules.

Paths are written the way Flax names variables: a tuple of keys such as
``("stage1_block0", "conv1", "kernel")`` or the same joined by ``/``
(``"stage1_block0/conv1/kernel"``). Both spellings are accepted wherever a user
names a path.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax


def key_name(key: Any) -> str:
  """The plain name of one pytree path entry (DictKey, GetAttrKey, SequenceKey)."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_tuple(path: Sequence[Any] | str) -> tuple[str, ...]:
  """Normalises a jax key path, a tuple of names or a '/'-joined string."""
  if isinstance(path, str):
    return tuple(p for p in path.split("/") if p)
  return tuple(key_name(k) for k in path)


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

  Raises:
    ValueError: naming ``name`` if the two structures differ.
  """
  treedef = jax.tree.structure(params)
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(
        f"{name} does not match the structure of params: {first_line}"
    ) from None
