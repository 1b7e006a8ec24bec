"""What one traced forward pass says about a model, whatever its names.

The model runs once on abstract values (``jax.eval_shape``) under Flax
method interception; nothing is computed.

- ``layers``: every module call that owns a kernel (``kernel``, or the
  ``first_kernel``/``second_kernel`` of a factorized layer), with its path,
  kernel shapes, input and output shapes: the convolutions and dense layers
  as the model calls them.
- ``bn_pairs``: which BatchNorm normalizes which layer's output: the
  ``nn.BatchNorm`` whose input *is* that layer's output (the layer's own bias
  included), for any module names and nesting. Kernels that feed no
  BatchNorm are listed too (``Pairing.unpaired``): BN rectification leaves
  them alone.

``apply_fn(variables, x)`` runs the model in evaluation mode, e.g.
``lambda v, x: model.apply(v, x, train=False)`` (``eval_apply``).
"""

from collections.abc import Callable
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

KERNELS = ("kernel", "first_kernel", "second_kernel")


def eval_apply(model, **flags) -> Callable:
  """``apply_fn`` of ``model`` in evaluation mode: ``train=False`` unless
  other flags are given (e.g. ``training=False``)."""
  flags = flags or {"train": False}
  return lambda variables, x: model.apply(variables, x, **flags)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One conv or dense layer of a traced forward pass (shapes per example)."""

  path: tuple[str, ...]  # the module's path; its kernel is path + ("kernel",)
  kernel_shapes: tuple[tuple[int, ...], ...]  # kernel, or first and second
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  module: Any  # the module as called (bound during the trace)

  @property
  def positions(self) -> int:
    """Output positions (H_out·W_out for a conv, 1 for a dense layer)."""
    return math.prod(self.output_shape[:-1])

  @property
  def macs(self) -> int:
    return self.positions * sum(math.prod(s) for s in self.kernel_shapes)


def example(input_shape) -> jax.ShapeDtypeStruct:
  """One float32 example: ``input_shape`` is (H, W, C), or any shape whose
  first dimension is the batch (replaced by 1)."""
  shape = tuple(input_shape)
  if len(shape) == 3:
    shape = (1,) + shape
  return jax.ShapeDtypeStruct((1,) + shape[1:], jnp.float32)


def _own_kernels(module) -> tuple[tuple[int, ...], ...]:
  params = module.variables.get("params", {})
  return tuple(tuple(params[k].shape) for k in KERNELS
               if k in params and not isinstance(params[k], dict))


def _trace(apply_fn, variables, input_shape, on_call) -> None:
  """Runs ``apply_fn`` abstractly, calling ``on_call(context, args, out)``
  after every module ``__call__``."""
  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      on_call(context, args, out)
    return out

  # A new function each time: jax caches traces by function, and a cached
  # trace would run no interceptor.
  with nn.intercept_methods(intercept):
    jax.eval_shape(lambda v, x: apply_fn(v, x), variables,
                   example(input_shape))


def layers(apply_fn, variables, input_shape) -> list[Layer]:
  """The layers ``apply_fn`` runs on one example of ``input_shape``
  ((H, W, C), or with a leading batch dimension), in call order."""
  found = []

  def on_call(context, args, out):
    kernels = _own_kernels(context.module)
    if kernels and hasattr(out, "shape") and args:
      found.append(Layer(tuple(context.module.path), kernels,
                         tuple(args[0].shape[1:]), tuple(out.shape[1:]),
                         context.module))

  _trace(apply_fn, variables, input_shape, on_call)
  return found


@dataclasses.dataclass(frozen=True)
class Pairing:
  """{kernel path: BatchNorm path} ('/'-joined, for ``bn_out_scales`` and
  ``folding.fold``) and the kernel paths that feed no BatchNorm."""

  pairs: dict[str, str]
  unpaired: tuple[str, ...]

  def to_json(self) -> dict:
    return {"pairs": self.pairs, "unpaired": list(self.unpaired)}


def bn_pairs(apply_fn, variables, input_shape) -> Pairing:
  """Which BatchNorm normalizes each layer's output (see the module
  docstring); a layer called twice is paired by its first call."""
  outputs, inputs = [], []  # (path, array) of layers and of BatchNorms

  def on_call(context, args, out):
    path = "/".join(context.module.path)
    if isinstance(context.module, nn.BatchNorm) and args:
      inputs.append((path, args[0]))
    elif _own_kernels(context.module):
      outputs.append((path, out))

  _trace(apply_fn, variables, input_shape, on_call)
  pairs, unpaired = {}, []
  for layer, out in outputs:
    kernel = f"{layer}/kernel" if layer else "kernel"
    if kernel in pairs or kernel in unpaired:
      continue
    bn = next((p for p, x in inputs if x is out), None)
    if bn is None:
      unpaired.append(kernel)
    else:
      pairs[kernel] = bn
  return Pairing(pairs, tuple(unpaired))
