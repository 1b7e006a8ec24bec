"""Cost accounting (MACs, params, FLOPs) and FLOPs-budget ranks, for any model.

MACs follow the paper's tables: a conv costs H_out·W_out·c_out·kh·kw·c_in/groups,
a dense layer in·out; BatchNorm, activations, pooling and biases are not
counted. They are counted from the jaxpr (half the ``matmul_flops``), so any
module that convolves or multiplies matrices is counted, factorized or not.

FLOPs are counted from the jaxpr of the eval-mode forward pass (``flops``),
before any backend sees it, so every backend reports the same number:

- ``matmul_flops``: 2 per multiply-add of every convolution and matrix
  product, taps on zero padding included (= 2·MACs for the zoo models);
- ``elementwise_flops``: 1 per output element of every elementwise arithmetic
  op (BatchNorm's subtract, multiply and add, ReLU's max, residual and bias
  adds, the pooling division), 1 per input element of every reduction
  (global average pooling's sum) and 1 per window tap of a pooling window
  (max pooling). Data movement (pad, slice, reshape,
  broadcast, dtype conversion) counts 0, and so does a convolution with a
  constant one-hot kernel (``nn.ConvLocal``'s patch extraction).

Only work whose result reaches the output is counted: a layer applied to a
value nobody reads costs nothing here.

XLA's own cost analysis is not used: on GPU it leaves out the convolutions it
hands to cuDNN (2.4M FLOPs reported for ResNet-56's 125M MACs on an H200), and
on CPU it skips the padding taps.
"""

import math
import numbers
from typing import Any

import jax
from jax.extend import core as jax_core
import numpy as np

from lrpet_jax.analysis import factorized
from lrpet_jax.analysis import tracing
from lrpet_jax.core import _trees
from lrpet_jax.core import ranks as ranks_lib


def layer_costs(model, variables: Any, input_shape: tuple[int, ...], *,
                apply_fn=None) -> list[tracing.Layer]:
  """Every kernel's layer the model runs on one example of ``input_shape``
  (``tracing.layers``; each has ``path``, ``kernel_shape``, ``kind``,
  ``macs``, ``positions`` and ``out_positions``). ``apply_fn``: as in
  ``cost``."""
  return tracing.layers(apply_fn or tracing.eval_apply(model), variables,
                        input_shape)


_ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "max", "min", "neg", "abs", "sign", "exp",
    "exp2", "log", "log1p", "expm1", "sqrt", "rsqrt", "cbrt", "tanh",
    "logistic", "integer_pow", "pow", "square", "erf", "erf_inv", "rem",
    "atan2", "sin", "cos", "tan", "floor", "ceil", "round", "clamp",
    "select_n", "add_any", "nextafter", "reciprocal"})
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min",
                         "reduce_prod", "argmax", "argmin"})


def _size(aval) -> int:
  return math.prod(aval.shape)


def _conv_macs(eqn) -> int:
  """A convolution's MACs; a transposed (lhs-dilated) one without the
  inserted zeros: input size × taps × c_out/groups (``layer_table``)."""
  dn, p = eqn.params["dimension_numbers"], eqn.params
  lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
  if any(d != 1 for d in p["lhs_dilation"]):
    taps = math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
    return (_size(lhs) * taps * rhs.shape[dn.rhs_spec[0]]
            // (p["feature_group_count"] * p["batch_group_count"]))
  per_output = _size(rhs) // rhs.shape[dn.rhs_spec[0]]  # kh·kw·c_in/groups
  return _size(eqn.outvars[0].aval) * per_output


def _live_masks(jaxpr, outs_live=None) -> list:
  """For each eqn, which of its outputs reach ``jaxpr``'s outputs (those
  marked in ``outs_live``, default all): work on values nobody reads is not
  counted."""
  outs_live = outs_live or [True] * len(jaxpr.outvars)
  needed = {v for v, live in zip(jaxpr.outvars, outs_live)
            if live and not isinstance(v, jax_core.Literal)}
  masks = []
  for eqn in reversed(jaxpr.eqns):
    mask = [v in needed for v in eqn.outvars]
    if any(mask) or eqn.effects:
      needed.update(v for v in eqn.invars
                    if not isinstance(v, jax_core.Literal))
    masks.append(mask)
  return masks[::-1]


_CONSTANT_SIZE = 1 << 20  # larger constants are not evaluated


def _constant(eqn, values: dict):
  """The value of ``eqn``'s output if it is computed from literals and
  constants alone (as ``conv_general_dilated_patches`` builds its one-hot
  kernel), else None."""
  if (len(eqn.outvars) != 1 or list(jax_core.jaxprs_in_params(eqn.params))
      or _size(eqn.outvars[0].aval) > _CONSTANT_SIZE):
    return None
  args = []
  for v in eqn.invars:
    if isinstance(v, jax_core.Literal):
      args.append(v.val)
    elif v in values:
      args.append(values[v])
    else:
      return None
  try:
    return np.asarray(eqn.primitive.bind(*args, **eqn.params))
  except Exception:  # pylint: disable=broad-except
    return None


def _selects(eqn, values: dict) -> bool:
  """A convolution whose kernel is a constant 0/1 array with one 1 per
  output feature: it moves data (patch extraction), it multiplies nothing."""
  rhs = values.get(eqn.invars[1])
  if rhs is None:
    return False
  o = eqn.params["dimension_numbers"].rhs_spec[0]
  ones = np.moveaxis(rhs == 1, o, 0).reshape(rhs.shape[o], -1)
  return bool(np.all((rhs == 0) | (rhs == 1)) and np.all(ones.sum(1) == 1))


def _jaxpr_flops(jaxpr, counts: dict[str, int], times: int = 1,
                 outs_live=None) -> None:
  values = {}  # constant values computed inside the jaxpr
  for eqn, mask in zip(jaxpr.eqns, _live_masks(jaxpr, outs_live)):
    value = _constant(eqn, values)
    if value is not None:
      values[eqn.outvars[0]] = value
    if not any(mask):
      continue
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      if not _selects(eqn, values):
        counts["matmul_flops"] += 2 * _conv_macs(eqn) * times
    elif name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      depth = math.prod(lhs.shape[d] for d in contract)
      counts["matmul_flops"] += 2 * _size(eqn.outvars[0].aval) * depth * times
    elif name in _ELEMENTWISE:
      counts["elementwise_flops"] += _size(eqn.outvars[0].aval) * times
    elif name in _REDUCTIONS:
      counts["elementwise_flops"] += _size(eqn.invars[0].aval) * times
    elif name.startswith("reduce_window"):  # pooling: one per window tap
      counts["elementwise_flops"] += _size(eqn.outvars[0].aval) * math.prod(
          eqn.params["window_dimensions"]) * times
    elif name in ("while", "cond"):
      raise NotImplementedError(f"flops: control flow ({name}) is not counted")
    inner = times * (eqn.params["length"] if name == "scan" else 1)
    for sub in jax_core.jaxprs_in_params(eqn.params):
      same = name != "scan" and len(sub.outvars) == len(eqn.outvars)
      _jaxpr_flops(sub, counts, inner, mask if same else None)


def flops(fn, *args) -> dict[str, int]:
  """{"flops", "matmul_flops", "elementwise_flops"} of ``fn(*args)``, from its
  jaxpr (see the module docstring); ``args`` may be ``ShapeDtypeStruct``s."""
  counts = {"matmul_flops": 0, "elementwise_flops": 0}
  _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr, counts)
  return {"flops": counts["matmul_flops"] + counts["elementwise_flops"],
          **counts}


def cost(model, variables: Any, input_shape: tuple[int, ...], *,
         apply_fn=None) -> dict[str, float]:
  """{"macs", "params", "flops", "matmul_flops", "elementwise_flops"} of one
  example's eval-mode forward pass, from its jaxpr (``flops``): MACs are the
  multiply-adds of every convolution and matrix product (matmul_flops / 2,
  the paper's convention for conv and dense layers), whatever module makes
  them.

  Args:
    model: a Flax module (or ``Factorized``), unless ``apply_fn`` says how
      to run it.
    variables: its variables (arrays or ``jax.ShapeDtypeStruct``s).
    input_shape: one example's shape, without the batch axis ((H, W, C)
      for images, (L, C) for sequences).
    apply_fn: ``apply_fn(variables, x)``, the forward pass to count: default
      ``model.apply(variables, x, train=False)``
      (``tracing.eval_apply(model, training=False)`` for another flag; the
      BatchNorm-folded model: ``folding.folded_apply``). Params are the
      variables'.
  """
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
  counted = flops(apply_fn or tracing.eval_apply(model), variables,
                  tracing.example(input_shape))
  return {"macs": counted["matmul_flops"] // 2, "params": params, **counted}


def compact_cost(costs: list[tracing.Layer], total_params: int,
                 ranks: Any) -> dict[str, int]:
  """MACs and params of the compact model, from the dense model's layer costs.

  A layer whose kernel has a rank r is factorized (when ``is_factorized``):
  its m·n kernel becomes r·(m + n) weights, its MACs
  ``factorized.layer_macs``.
  """
  flat = _trees.leaves_by_path(ranks)
  macs, params = 0, total_params
  for c in costs:
    rank = flat.get(c.kernel)
    if rank is None:
      macs += c.macs
      continue
    params += (factorized.layer_weights(rank, c.kernel_shape)
               - math.prod(c.kernel_shape))
    macs += factorized.layer_macs(rank, c.kernel_shape, c.positions,
                                  c.out_positions)
  return {"macs": macs, "params": params}


def ranks_for_budget(model, variables: Any,
                     input_shape: tuple[int, ...], *,
                     macs_reduction: float | None = None,
                     params_reduction: float | None = None,
                     include: ranks_lib.IncludeFn | None = None,
                     apply_fn=None) -> Any:
  """Uniform-ratio ranks whose compact model best meets a MACs or params cut.

  The compact model's reduction is a step function of the ratio (ranks are
  integers, and the break-even guard keeps some layers dense); bisection finds
  the step just reaching the target and the one below it, and the closer of
  the two wins.

  Args:
    model: the dense model.
    variables: its variables (arrays or ``jax.ShapeDtypeStruct``s).
    input_shape: one example's shape, without the batch axis.
    macs_reduction / params_reduction: the target fraction removed, in (0, 1);
      give exactly one.
    include: leaf selection, as in ``uniform_ranks`` (default: convolution
      kernels; ``ranks.is_kernel`` adds dense ones).
    apply_fn: as in ``cost``.

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
  costs = layer_costs(model, variables, input_shape, apply_fn=apply_fn)
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
  return ranks_lib.uniform_ranks(params, _closest_ratio(reduction, target,
                                                        top),
                                 include=include)


def _closest_ratio(reduction, target: float, top: float) -> float:
  """The ratio in [0, top] whose ``reduction`` (a non-decreasing step
  function) is closest to ``target``: bisection for the step just reaching
  it, then it or the one below."""
  lo, hi = 0.0, top  # reduction(lo) < target <= reduction(hi), unless lo hits
  if reduction(lo) >= target:
    return lo
  for _ in range(60):
    mid = (lo + hi) / 2
    if reduction(mid) >= target:
      hi = mid
    else:
      lo = mid
  if abs(reduction(lo) - target) < abs(reduction(hi) - target):
    return lo
  return hi
