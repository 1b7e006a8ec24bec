"""BatchNorm side of LRPET: rectification factors and precise BN statistics.

Variables follow Flax's layout: ``params`` holds each BatchNorm module's
``scale`` (γ) and ``bias``; ``batch_stats`` holds its running ``mean`` and
``var``.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrpet_jax.core import _trees

Path = str | Sequence[str]


def bn_out_scales(params: Any, batch_stats: Any, pairs: Mapping[Path, Path], *,
                  eps: float = 1e-5) -> Any:
  """Per-output-channel factors a = γ / sqrt(running_var + eps) for BN rectification.

  Args:
    params: the model's ``params`` collection.
    batch_stats: the model's ``batch_stats`` collection.
    pairs: {kernel path: BatchNorm path}, one entry per kernel that feeds a
      BatchNorm. A kernel path names the kernel leaf in ``params``
      (``"block1/conv1/kernel"`` or ``("block1", "conv1", "kernel")``); a
      BatchNorm path names the BatchNorm module (``"block1/bn1"``), whose
      ``var`` is read from ``batch_stats`` and ``scale`` from ``params`` (γ = 1
      if the module has no scale). For a user model, list the pairs in which
      the kernel's output goes straight into the BatchNorm.
    eps: the BatchNorm's epsilon where a BatchNorm path does not carry its
      own (``tracing.bn_pairs``' do: its module's ``epsilon``); Flax's
      default 1e-5, as PyTorch's.

  Returns:
    A pytree like ``params`` with a (c_out,) array at each paired kernel and
    ``None`` elsewhere: the ``out_scales`` argument of ``project_params`` and of
    ``low_rank_projection``'s update.
  """
  param_leaves = _trees.leaves_by_path(params)
  stat_leaves = _trees.leaves_by_path(batch_stats)
  scales = {}
  for kernel_path, bn_path in pairs.items():
    kp, bp = _trees.path_tuple(kernel_path), _trees.path_tuple(bn_path)
    if kp not in param_leaves:
      raise ValueError(
          f"pairs: kernel path {_trees.path_str(kp)!r} is not in params")
    if bp + ("var",) not in stat_leaves:
      raise ValueError(
          f"pairs: BatchNorm path {_trees.path_str(bp)!r} (for kernel"
          f" {_trees.path_str(kp)!r}) has no 'var' in batch_stats")
    var = stat_leaves[bp + ("var",)]
    gamma = param_leaves.get(bp + ("scale",), jnp.ones_like(var))
    c_out = jnp.shape(param_leaves[kp])[-1]
    if jnp.shape(var) != (c_out,):
      raise ValueError(
          f"pairs: BatchNorm {_trees.path_str(bp)!r} has {jnp.shape(var)}"
          f" channels but kernel {_trees.path_str(kp)!r} has {c_out} outputs")
    scales[kp] = gamma / jnp.sqrt(var + getattr(bn_path, "epsilon", eps))
  return jax.tree_util.tree_map_with_path(
      lambda path, _: scales.get(_trees.path_tuple(path)), params)


def _mutated_stats(out) -> Any:
  """The ``batch_stats`` of ``apply_fn``'s (outputs, mutated) result."""
  if not (isinstance(out, tuple) and len(out) == 2
          and isinstance(out[1], Mapping) and "batch_stats" in out[1]):
    raise ValueError(
        "apply_fn must return (outputs, {'batch_stats': ...}): run the model"
        " in training mode with mutable=['batch_stats'], e.g."
        " functools.partial(model.apply, train=True, mutable=['batch_stats'])")
  return out[1]["batch_stats"]


def recompute_batch_stats(apply_fn: Callable[..., tuple[Any, Mapping[str, Any]]],
                          variables: Mapping[str, Any],
                          batches: Iterable[Any]) -> Any:
  """Precise BN: running statistics re-estimated from scratch over ``batches``.

  Each running mean (var) becomes the equally weighted average over the batches
  of the per-batch means (variances) that Flax's BatchNorm computes, whatever
  the module's momentum and the old statistics.

  Flax updates ``new = m·old + (1 − m)·batch_stat``. Running with ``old = 0``
  gives (1 − m)·batch_stat; one extra pass with ``old = 1`` on the first batch
  gives m, so batch_stat = new / (1 − m) per variable.

  Args:
    apply_fn: ``apply_fn(variables, x) -> (outputs, {"batch_stats": ...})``
      running the model in training mode, e.g.
      ``functools.partial(model.apply, train=True, mutable=["batch_stats"])``.
    variables: the model's variables, including ``batch_stats``.
    batches: iterable of model inputs (at least one).

  Returns:
    The new ``batch_stats`` (same structure and dtypes).
  """
  if "batch_stats" not in variables:
    raise ValueError("variables has no 'batch_stats' collection")
  old = variables["batch_stats"]
  rest = {k: v for k, v in variables.items() if k != "batch_stats"}

  @jax.jit
  def stats_from_rest(rest, start, x):
    return _mutated_stats(apply_fn({**rest, "batch_stats": start}, x))

  def stats_from(start, x):
    return stats_from_rest(rest, start, x)

  zeros = jax.tree.map(jnp.zeros_like, old)
  iterator = iter(batches)
  try:
    first = next(iterator)
  except StopIteration:
    raise ValueError("batches is empty: need at least one batch") from None
  total = stats_from(zeros, first)
  momentum = jax.tree.map(
      jnp.subtract, stats_from(jax.tree.map(jnp.ones_like, old), first), total)
  if any(np.any(np.asarray(m) > 1.0 - 1e-6)
         for m in jax.tree.leaves(momentum)):
    raise ValueError(
        "a BatchNorm with momentum 1 never updates its statistics; cannot"
        " recompute them")
  count = 1
  add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
  for x in iterator:
    total = add(total, stats_from(zeros, x))
    count += 1
  return jax.tree.map(
      lambda t, m, o: (t / (count * (1.0 - m))).astype(o.dtype),
      total, momentum, old)
