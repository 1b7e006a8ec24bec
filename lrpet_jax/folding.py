"""BatchNorm folding for inference: conv/Dense → BatchNorm becomes one layer.

In eval mode a BatchNorm after a layer y = x∗W (+ b) computes

    BN(y) = (y − μ)·a + β,   a = γ / sqrt(σ² + eps)   (per output channel)
          = x∗(W·a) + ((b − μ)·a + β)

so the pair is one layer with kernel W·a (each output channel scaled) and a
bias. For a factorized layer (first_kernel, then second_kernel) only the
second kernel, which produces the output channels, is scaled. This applies to
the dense and the compact models alike, so the two are compared as deployed.

``fold(variables, pairs)`` returns the folded variables; ``folded_apply``
runs any model on them (dense, or ``factorized.Factorized``): every paired
BatchNorm is skipped and its layer adds the folded bias (Flax method
interception at trace time, so the compiled graph is conv → bias → …, with
no BatchNorm arithmetic left). ``pairs`` come from ``tracing.bn_pairs``.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lrpet_jax import _trees

BIAS = "folded_bias"  # the collection holding each folded layer's bias


def module_pairs(kernel_pairs: Mapping[str, str]) -> dict[tuple, tuple]:
  """{layer module path: BatchNorm module path} from ``tracing.bn_pairs``'s
  {kernel path: BatchNorm path} (the kernel path without its ``kernel``)."""
  out = {}
  for kernel, bn in kernel_pairs.items():
    k = _trees.path_tuple(kernel)
    if k[-1] != "kernel":
      raise ValueError(f"pairs: {kernel!r} does not name a kernel")
    out[k[:-1]] = _trees.path_tuple(bn)
  return out


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


def fold(variables: Any, kernel_pairs: Mapping[str, str], *,
         eps: float = 1e-5) -> dict[str, Any]:
  """Folded variables of a dense or compact model.

  Args:
    variables: {"params", "batch_stats"} of a dense or compact model.
    kernel_pairs: {kernel path: BatchNorm path} of the *dense* model
      (``tracing.bn_pairs(...).pairs``); for a compact model the same layer
      paths hold ``first_kernel``/``second_kernel`` instead.
    eps: the BatchNorm epsilon (1e-5, as ``layers.batch_norm``).

  Returns:
    {"params": params with each paired layer's output kernel scaled by a,
    its own bias (if it has one) folded, and the paired BatchNorms removed;
    "folded_bias": {layer path: {"bias": ...}} for the paired layers without
    a bias of their own; "batch_stats" of the BatchNorms left unpaired}.
  """
  params = _plain(jax.device_get(variables["params"]))
  stats = _plain(jax.device_get(variables.get("batch_stats", {})))
  biases = {}
  for layer, bn in module_pairs(kernel_pairs).items():
    module = _get(params, layer)
    out_name = "second_kernel" if "second_kernel" in module else "kernel"
    bn_params, bn_stats = _get(params, bn), _get(stats, bn)
    mean = np.asarray(bn_stats["mean"], np.float64)
    var = np.asarray(bn_stats["var"], np.float64)
    gamma = np.asarray(bn_params.get("scale", np.ones_like(var)), np.float64)
    beta = np.asarray(bn_params.get("bias", np.zeros_like(var)), np.float64)
    a = gamma / np.sqrt(var + eps)
    kernel = np.asarray(module[out_name])
    module[out_name] = (np.asarray(kernel, np.float64) * a).astype(kernel.dtype)
    bias = np.asarray(module.get("bias", np.zeros_like(var)), np.float64)
    bias = ((bias - mean) * a + beta).astype(kernel.dtype)
    if "bias" in module:  # the layer adds its own bias
      module["bias"] = bias
    else:
      _set(biases, layer, {"bias": bias})
    _set(params, bn, None)
    _set(stats, bn, None)
  prune = lambda t: {k: prune(v) for k, v in t.items() if v is not None and (
      not isinstance(v, dict) or prune(v))} if isinstance(t, dict) else t
  out = {"params": prune(params), BIAS: prune(biases)}
  if prune(stats):
    out["batch_stats"] = prune(stats)
  return out


def folded_apply(model, folded: Mapping[str, Any], x: jax.Array,
                 **kwargs) -> jax.Array:
  """``model.apply(..., **kwargs)`` on ``fold``'s output; ``kwargs`` default
  to ``train=False`` (pass e.g. ``training=False`` for another flag).

  A layer with a folded bias adds it (in its output's dtype); a BatchNorm
  whose statistics ``fold`` removed returns its input unchanged. Other
  modules run as usual.
  """
  biases = _trees.leaves_by_path(folded[BIAS])
  stats = _trees.leaves_by_path(folded.get("batch_stats", {}))

  def intercept(next_fun, args, kw, context):
    path = tuple(context.module.path)
    if context.method_name != "__call__":
      return next_fun(*args, **kw)
    if (isinstance(context.module, nn.BatchNorm)
        and path + ("mean",) not in stats):
      return args[0]
    out = next_fun(*args, **kw)
    if path + ("bias",) in biases:
      out = out + jnp.asarray(biases[path + ("bias",)], out.dtype)
    return out

  variables = {k: v for k, v in folded.items() if k != BIAS}
  with nn.intercept_methods(intercept):
    return model.apply(variables, x, **(kwargs or {"train": False}))
