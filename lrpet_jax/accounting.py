"""Cost accounting (MACs, params, XLA FLOPs) and FLOPs-budget ranks.

MACs follow the paper's tables: a conv costs H_out·W_out·c_out·kh·kw·c_in/groups,
a dense layer in·out; BatchNorm, activations, pooling and biases are not
counted. ``xla_flops`` is what XLA's cost analysis reports for the compiled
eval-mode forward pass, for comparison: 2 per multiply-add plus BN, ReLU and
adds, but without the taps that fall on zero padding (so below 2·MACs for
CIFAR-sized inputs: ResNet-56 125.5M MACs, 236.6M XLA FLOPs).
"""

import dataclasses
import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lrpet_jax import _trees
from lrpet_jax import ranks as ranks_lib
from lrpet_jax.models import layers


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """One conv or dense layer of a traced forward pass (per example)."""

  path: tuple[str, ...]           # the module's path; its kernel is path + ("kernel",)
  kernel_shapes: tuple[tuple[int, ...], ...]
  positions: int                  # output spatial positions (1 for dense)

  @property
  def macs(self) -> int:
    return self.positions * sum(math.prod(s) for s in self.kernel_shapes)


_LAYER_TYPES = (layers.LowRankConv, layers.LowRankDense, nn.Conv, nn.Dense)


def _example_input(input_shape):
  shape = tuple(input_shape)
  if len(shape) == 3:
    shape = (1,) + shape
  return jax.ShapeDtypeStruct((1,) + shape[1:], jnp.float32)


def layer_costs(model: nn.Module, variables: Any,
                input_shape: tuple[int, ...]) -> list[LayerCost]:
  """The conv/dense layers ``model`` runs on one example of ``input_shape``."""
  found = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (isinstance(context.module, _LAYER_TYPES)
        and context.method_name == "__call__"):
      kernels = tuple(
          tuple(v.shape) for k, v in context.module.variables["params"].items()
          if k.endswith("kernel"))
      found.append(LayerCost(tuple(context.module.path), kernels,
                             math.prod(out.shape[1:-1])))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                   _example_input(input_shape))
  return found


def cost(model: nn.Module, variables: Any,
         input_shape: tuple[int, ...]) -> dict[str, float]:
  """{"macs", "params", "xla_flops"} of one example's eval-mode forward pass.

  Args:
    model: a Flax module with ``__call__(x, train)``.
    variables: its variables (arrays or ``jax.ShapeDtypeStruct``s).
    input_shape: (H, W, C) or (N, H, W, C); costs are per example.
  """
  macs = sum(c.macs for c in layer_costs(model, variables, input_shape))
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      variables, _example_input(input_shape)).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):  # older jax returns one dict per device
    analysis = analysis[0]
  return {"macs": macs, "params": params,
          "xla_flops": float(analysis.get("flops", float("nan")))}


def compact_cost(costs: list[LayerCost], total_params: int,
                 ranks: Any) -> dict[str, int]:
  """MACs and params of the compact model, from the dense model's layer costs.

  A layer whose kernel has a rank r is factorized (when ``is_factorized``):
  its m·n kernel becomes r·(m + n) weights at the same output positions.
  """
  flat = _trees.leaves_by_path(ranks)
  macs, params = 0, total_params
  for c in costs:
    (shape,) = c.kernel_shapes
    rank = flat.get(c.path + ("kernel",))
    weights = math.prod(shape)
    if layers.is_factorized(rank, shape):
      m, n = math.prod(shape[:-1]), shape[-1]
      params += rank * (m + n) - weights
      weights = rank * (m + n)
    macs += c.positions * weights
  return {"macs": macs, "params": params}


def ranks_for_budget(model: nn.Module, variables: Any,
                     input_shape: tuple[int, ...], *,
                     macs_reduction: float | None = None,
                     params_reduction: float | None = None,
                     include: ranks_lib.IncludeFn | None = None) -> Any:
  """Uniform-ratio ranks whose compact model best meets a MACs or params cut.

  The compact model's reduction is a step function of the ratio (ranks are
  integers, and the break-even guard keeps some layers dense); bisection finds
  the step just reaching the target and the one below it, and the closer of
  the two wins.

  Args:
    model: the dense model.
    variables: its variables (arrays or ``jax.ShapeDtypeStruct``s).
    input_shape: (H, W, C) or (N, H, W, C).
    macs_reduction / params_reduction: the target fraction removed, in (0, 1);
      give exactly one.
    include: leaf selection, as in ``uniform_ranks`` (default: convolution
      kernels; ``ranks.is_kernel`` adds dense ones).

  Returns:
    A rank pytree (``uniform_ranks(params, ratio, include=include)``).
  """
  if (macs_reduction is None) == (params_reduction is None):
    raise ValueError("give exactly one of macs_reduction and params_reduction")
  field, target = (("macs", macs_reduction) if macs_reduction is not None
                   else ("params", params_reduction))
  name = f"{field}_reduction"
  if (isinstance(target, bool) or not isinstance(target, numbers.Real)
      or not 0.0 < target < 1.0):
    raise ValueError(f"{name} must be in (0, 1), got {target!r}")
  params = variables["params"]
  costs = layer_costs(model, variables, input_shape)
  dense_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  dense = {"macs": sum(c.macs for c in costs), "params": dense_params}

  def reduction(ratio):
    ranks = ranks_lib.uniform_ranks(params, ratio, include=include)
    return 1.0 - compact_cost(costs, dense_params, ranks)[field] / dense[field]

  top = 1.0 - 1e-9
  best = reduction(top)
  if best < target:
    raise ValueError(
        f"{name}={target} is unreachable: the best achievable with uniform"
        f" ranks is {best:.4f}")
  lo, hi = 0.0, top  # reduction(lo) < target <= reduction(hi), unless lo hits
  if reduction(lo) >= target:
    hi = lo
  else:
    for _ in range(60):
      mid = (lo + hi) / 2
      if reduction(mid) >= target:
        hi = mid
      else:
        lo = mid
  ratio = hi
  if hi > 0.0 and abs(reduction(lo) - target) < abs(reduction(hi) - target):
    ratio = lo
  return ranks_lib.uniform_ranks(params, ratio, include=include)
