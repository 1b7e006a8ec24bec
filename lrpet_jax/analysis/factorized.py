"""The compact model of any Flax model: each ranked layer as two layers.

``Factorized(module, ranks)`` is ``module`` itself, run with every layer
whose kernel has a rank r (and whose split saves MACs, ``is_factorized``)
replaced by its exact factorization, through Flax method interception:

    conv:  x → the same conv with r filters (kernel first_kernel, its own
             strides, padding — SAME, explicit or CIRCULAR —, dilation and
             dtype, no bias) → 1×1 conv (second_kernel (1, 1, r, c_out),
             as a matmul over channels) + the layer's bias
    dense: x → x @ first_kernel (d_in, r) @ second_kernel (r, d_out) + bias

so ``first · second = W_r``: after LRPET's final projection the compact
model computes what the dense one does. Its variables are the dense model's
with each split layer's ``kernel`` replaced by ``first_kernel`` and
``second_kernel`` (``compact.factorize``); ``init`` draws those two with the
layer's own ``kernel_init``. Any layer whose module has a ``features``
attribute (``nn.Conv``, ``nn.Dense`` and modules like them) can be split:
the first half is that module cloned with r features and no bias. A
grouped convolution (``feature_group_count`` > 1) cannot: its matrix view
is not a grouped conv; leave it unranked.

``Factorized`` has ``init`` and ``apply`` with the module's own arguments
(e.g. ``train=False``), so it stands wherever the module does. For a Flax
NNX model (``nnx_models.NnxModel``) it is the ``nnx.Module`` with each split
layer replaced by an ``nnx_models.SplitLayer`` (the same two factors, the
same variables).
"""

from collections.abc import Sequence
import threading
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lrpet_jax.analysis import nnx_models
from lrpet_jax.core import _trees
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.core import projection


def is_factorized(rank: int | None, kernel_shape: Sequence[int]) -> bool:
  """Whether a kernel of ``kernel_shape`` (..., c_out) at ``rank`` is split in
  two: only where that reduces its weights, r·(m + n) < m·n (break-even
  guard; (m, n) = ``projection.matrix_shape``)."""
  if rank is None:
    return False
  m, n = projection.matrix_shape(kernel_shape)
  return rank * (m + n) < m * n


def layer_weights(rank: int | None, kernel_shape: Sequence[int]) -> int:
  """The layer's weights at ``rank`` (None: dense): r·(m + n) if split,
  else m·n."""
  m, n = projection.matrix_shape(kernel_shape)
  return rank * (m + n) if is_factorized(rank, kernel_shape) else m * n


def layer_macs(rank: int | None, kernel_shape: Sequence[int], positions: int,
               out_positions: int | None = None) -> int:
  """The factorized-MACs rule: MACs of a layer at ``rank`` (None: dense).

  Dense: positions·m·n, ``positions`` being the MACs per kernel weight of
  its op (output positions; input positions for a transposed conv). Split
  (``is_factorized``): positions·m·r for the first half (the same op with r
  outputs) plus out_positions·r·n for the second (a 1×1 conv at every
  output position; ``out_positions`` defaults to ``positions``).
  """
  m, n = projection.matrix_shape(kernel_shape)
  if not is_factorized(rank, kernel_shape):
    return positions * m * n
  if out_positions is None:
    out_positions = positions
  return positions * m * rank + out_positions * rank * n


class Factorized:
  """``module`` with each layer of ``ranks`` run as its factorization.

  Args:
    module: a Flax module (the dense model): Linen, an ``nnx.Module`` or an
      ``nnx_models.NnxModel``.
    ranks: a ``Ranks`` or a rank tree of the dense model's params (int at
      each ranked ``kernel`` leaf, None elsewhere).
  """

  def __init__(self, module: nn.Module, ranks: Any):
    if nnx_models.is_nnx_module(module):
      module = nnx_models.NnxModel.of(module)
    self.module = module
    self.ranks = {}  # {layer module path: rank}
    by_path = ({_trees.path_tuple(k): r for k, r in ranks.items()}
               if isinstance(ranks, ranks_lib.Ranks)
               else _trees.leaves_by_path(ranks))
    for path, rank in by_path.items():
      if path[-1] != "kernel":
        raise ValueError(f"ranks[{_trees.path_str(path)}]: only leaves named"
                         " 'kernel' can be split")
      self.ranks[path[:-1]] = int(rank)
    self._inside = threading.local()  # computing a split layer's halves
    self._nnx = None
    if isinstance(module, nnx_models.NnxModel):
      shapes = module.kernel_shapes()
      for path in self.ranks:
        if path + ("kernel",) not in shapes:
          raise ValueError(f"ranks name {_trees.path_str(path)}/kernel,"
                           " which is not a kernel of the NNX model")
      self._nnx = module.with_split_layers({
          path: rank for path, rank in self.ranks.items()
          if is_factorized(rank, shapes[path + ("kernel",)])})

  def __repr__(self):
    return f"Factorized({type(self.module).__name__}, {len(self.ranks)} ranks)"

  def init(self, *args, **kwargs):
    if self._nnx is not None:
      return self._nnx.init(*args, **kwargs)
    with nn.intercept_methods(self._intercept):
      return self.module.init(*args, **kwargs)

  def apply(self, *args, **kwargs):
    if self._nnx is not None:
      return self._nnx.apply(*args, **kwargs)
    with nn.intercept_methods(self._intercept):
      return self.module.apply(*args, **kwargs)

  @property
  def nnx_model(self):
    """For an NNX model: the compact model as an ``NnxModel`` (its
    ``module(variables)`` is the ``nnx.Module``); else None."""
    return self._nnx

  def _intercept(self, next_fun, args, kwargs, context):
    rank = self.ranks.get(tuple(context.module.path))
    if (rank is None or context.method_name != "__call__"
        or getattr(self._inside, "active", False)):
      return next_fun(*args, **kwargs)
    module = context.module
    self._inside.active = True  # the clones below are modules of their own
    try:
      shape = dense_kernel_shape(module, args, kwargs)
      if not is_factorized(rank, shape):
        self._inside.active = False
        return next_fun(*args, **kwargs)
      _check_splittable(module)
      return split_call(module, rank, shape, args, kwargs)
    finally:
      self._inside.active = False


def dense_kernel_shape(module, args, kwargs) -> tuple[int, ...]:
  """The shape of the ``kernel`` the (unsplit) module makes for these inputs."""
  params = jax.eval_shape(lambda: module.clone(parent=None).init(
      jax.random.key(0), *args, **kwargs))["params"]
  return tuple(params["kernel"].shape)


# The Linen layers split here: exactly these classes (a subclass may compute
# on its kernel or its output).
SPLITTABLE = (nn.Conv, nn.ConvTranspose, nn.Dense, nn.DenseGeneral)


def _check_splittable(module) -> None:
  where = "/".join(module.path)
  if hasattr(module, "features") and type(module) not in SPLITTABLE:
    raise ValueError(
        f"{where}: cannot factorize a {type(module).__name__} (a subclass of"
        f" {type(module).__mro__[1].__name__}, which may compute on its kernel"
        " or output; only nn.Conv, nn.ConvTranspose, nn.Dense and"
        " nn.DenseGeneral themselves split exactly); leave its kernel"
        " unranked")
  if not hasattr(module, "features"):
    raise ValueError(
        f"{where}: cannot factorize a {type(module).__name__} (no `features`"
        " attribute, as nn.Conv and nn.Dense have); leave its kernel unranked")
  if getattr(module, "feature_group_count", 1) != 1:
    raise ValueError(
        f"{where}: a grouped convolution (feature_group_count="
        f"{module.feature_group_count}) has no factorized form; leave its"
        " kernel unranked")


def split_call(module, rank: int, shape, args, kwargs):
  """The layer's output through its two factors (see the module docstring),
  creating ``first_kernel``, ``second_kernel`` (and ``bias``) at init."""
  init = getattr(module, "kernel_init", nn.initializers.lecun_normal())
  param_dtype = getattr(module, "param_dtype", jnp.float32)
  first = module.param("first_kernel", init, tuple(shape[:-1]) + (rank,),
                       param_dtype)
  second = module.param("second_kernel", init,
                        (1,) * (len(shape) - 2) + (rank, shape[-1]),
                        param_dtype)
  bias = None
  if getattr(module, "use_bias", False):
    bias = module.param("bias", module.bias_init, (shape[-1],), param_dtype)
  half = module.clone(parent=None, features=rank, use_bias=False)
  y = half.apply({"params": {"kernel": first}}, *args, **kwargs)
  y = jnp.dot(y, second.reshape(rank, shape[-1]).astype(y.dtype),
              precision=getattr(module, "precision", None))
  if bias is not None:
    y = y + bias.astype(y.dtype)
  return y
