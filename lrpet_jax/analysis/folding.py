"""BatchNorm folding for inference: conv/Dense → BatchNorm becomes one layer.

In eval mode a BatchNorm after a layer y = x∗W (+ b) computes

    BN(y) = (y − μ)·a + β,   a = γ / sqrt(σ² + eps)   (per output channel)
          = x∗(W·a) + ((b − μ)·a + β)

so the pair is one layer with kernel W·a (each output channel scaled) and a
bias. For a factorized layer (first_kernel, then second_kernel) only the
second kernel, which produces the output channels, is scaled. This applies to
the dense and the compact models alike, so the two are compared as deployed.

``fold(variables, pairing)`` returns the folded variables; ``folded_apply``
runs any model on them (dense, or ``factorized.Factorized``): every folded
BatchNorm is skipped and its layer adds the folded bias (Flax method
interception at trace time, so the compiled graph is conv → bias → …, with
no BatchNorm arithmetic left). ``pairing`` comes from ``tracing.bn_pairs``:
a BatchNorm folds only where every call of it reads the output of a layer
that runs once and whose output nothing else reads (``Pairing.folds``); the
others stay in the graph (``Pairing.kept`` says why), with each module's
own epsilon and the kernel's output axis as the op uses it.
"""

from collections.abc import Mapping
from typing import Any

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lrpet_jax.analysis import nnx_models
from lrpet_jax.analysis import tracing
from lrpet_jax.core import _trees

BIAS = "folded_bias"  # the collection holding each folded layer's bias
# In ``BIAS``, under a folded BatchNorm's path: the module call to skip
# (whatever its class: normalizations are found by what they compute).
SKIP = "folded_away"


def module_pairs(kernel_pairs: Mapping[str, str]) -> dict[tuple, tuple]:
  """{layer module path: BatchNorm module path} from {kernel path:
  BatchNorm path} (the kernel path without its ``kernel``)."""
  out = {}
  for kernel, bn in kernel_pairs.items():
    k = _trees.path_tuple(kernel)
    if k[-1] != "kernel":
      raise ValueError(f"pairs: {kernel!r} does not name a kernel")
    out[k[:-1]] = _trees.path_tuple(bn)
  return out


def _plan(pairs) -> tuple[dict, dict, dict]:
  """({layer path: BatchNorm path}, {layer path: output axis of its kernel},
  {BatchNorm path: epsilon}) of what to fold."""
  if isinstance(pairs, tracing.Pairing):
    folds, axes = pairs.folds, pairs.fold_axes
  else:  # a plain {kernel path: BatchNorm path}: every pair, last axis
    folds, axes = pairs, {}
  layers = module_pairs(folds)
  out_axes = {_trees.path_tuple(k)[:-1]: a for k, a in axes.items()}
  eps = {_trees.path_tuple(bn): getattr(bn, "epsilon", None)
         for bn in folds.values()}
  return layers, out_axes, eps


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _plain(tree):
  if hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def fold(variables: Any, pairs: Any, *, eps: float = 1e-5) -> dict[str, Any]:
  """Folded variables of a dense or compact model.

  Args:
    variables: {"params", "batch_stats"} of a dense or compact model.
    pairs: the dense model's ``tracing.Pairing`` (``tracing.bn_pairs``):
      its ``folds`` are folded, each along its kernel's output axis with its
      BatchNorm's own epsilon, and its ``kept`` BatchNorms stay; or a plain
      {kernel path: BatchNorm path} of layers known to be foldable. For a
      compact model the same layer paths hold ``first_kernel`` and
      ``second_kernel`` instead (the second is scaled).
    eps: the epsilon of BatchNorm paths that do not carry their own.

  Returns:
    {"params": params with each folded layer's output kernel scaled by a,
    its own bias (if it has one) folded, and the folded BatchNorms removed;
    "folded_bias": {layer path: {"bias": ...}} for the folded layers without
    a bias of their own; "batch_stats" of the BatchNorms left in the graph}.
  """
  params = _plain(jax.device_get(variables["params"]))
  stats = _plain(jax.device_get(variables.get("batch_stats", {})))
  layers, out_axes, epsilons = _plan(pairs)
  biases = {}
  for layer, bn in layers.items():
    module = _get(params, layer)
    compact = "second_kernel" in module
    out_name = "second_kernel" if compact else "kernel"
    axis = -1 if compact else out_axes.get(layer, -1)
    bn_params, bn_stats = _get(params, bn), _get(stats, bn)
    mean = np.asarray(bn_stats["mean"], np.float64)
    var = np.asarray(bn_stats["var"], np.float64)
    gamma = np.asarray(bn_params.get("scale", np.ones_like(var)), np.float64)
    beta = np.asarray(bn_params.get("bias", np.zeros_like(var)), np.float64)
    a = gamma / np.sqrt(var + (epsilons.get(bn) or eps))
    kernel = np.asarray(module[out_name])
    shape = [1] * kernel.ndim
    shape[axis] = a.size
    module[out_name] = (np.asarray(kernel, np.float64)
                        * a.reshape(shape)).astype(kernel.dtype)
    bias = np.asarray(module.get("bias", np.zeros_like(var)), np.float64)
    bias = ((bias - mean) * a + beta).astype(kernel.dtype)
    if "bias" in module:  # the layer adds its own bias
      module["bias"] = bias
    else:
      _set(biases, layer, {"bias": bias})
  for bn in set(layers.values()):  # after all: a BatchNorm may fold twice
    _set(params, bn, None)
    _set(stats, bn, None)
    _set(biases, bn, {SKIP: np.zeros((), np.float32)})
  prune = lambda t: {k: prune(v) for k, v in t.items() if v is not None and (
      not isinstance(v, dict) or prune(v))} if isinstance(t, dict) else t
  out = {"params": prune(params), BIAS: prune(biases)}
  if prune(stats):
    out["batch_stats"] = prune(stats)
  return out


def folded_apply(model, folded: Mapping[str, Any], x: jax.Array,
                 **kwargs) -> jax.Array:
  """``model.apply(..., **kwargs)`` on ``fold``'s output; ``kwargs`` default
  to ``tracing.eval_flags(model)`` (pass e.g. ``training=False`` for
  another flag).

  A layer with a folded bias adds it (in its output's dtype); a BatchNorm
  whose statistics ``fold`` removed returns its input unchanged. Other
  modules run as usual.
  """
  biases = _trees.leaves_by_path(folded[BIAS])
  stats = _trees.leaves_by_path(folded.get("batch_stats", {}))

  def on_call(module, path, call, args, kw):
    if path is None:
      return call(*args, **kw)
    if path + (SKIP,) in biases or (
        isinstance(module, (nn.BatchNorm, nnx.BatchNorm))
        and path + ("mean",) not in stats):
      return args[0]
    out = call(*args, **kw)
    if path + ("bias",) in biases:
      out = out + jnp.asarray(biases[path + ("bias",)], out.dtype)
    return out

  def intercept(next_fun, args, kw, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kw)
    return on_call(context.module, tuple(context.module.path), next_fun, args,
                   kw)

  variables = {k: v for k, v in folded.items() if k != BIAS}
  kwargs = kwargs or tracing.eval_flags(model)
  nnx_model = getattr(model, "nnx_model", None) or model
  if isinstance(nnx_model, nnx_models.NnxModel):  # the folded BatchNorms'
    with nnx_models.intercept_calls(on_call):     # variables are gone
      return nnx_model.apply(variables, x, partial=True, **kwargs)
  with nn.intercept_methods(intercept):
    return model.apply(variables, x, **kwargs)
