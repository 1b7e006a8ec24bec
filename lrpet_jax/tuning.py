"""Latency-tuned compact models: per layer, the fastest exact form.

After LRPET's projection a layer's kernel W_r has rank r, and three forms
compute the same function:

- ``dense``: the k×k conv with kernel W_r (rank None in the rank tree);
- ``split``: the factorized pair, a k×k conv with r filters then a 1×1 conv;
- ``split`` at a rank rounded up to a multiple the hardware likes (8, 16):
  exact, since the singular values past r are zero.

Fewer MACs do not make a layer faster when its channel counts suit the
hardware badly (ResNet-56's 16-channel layers on a CPU run their 7-filter
factorization slower than the dense conv). ``tune`` times every form of every
projected layer on this backend, at the batch size the model is exported
for, BatchNorm folded (a bias per layer, as deployed), and keeps the fastest.
Then it times the whole tuned model against the whole dense one and, should
the tuned model not be faster by a margin (3 %), keeps every layer dense: the
tuned model is never slower than the dense one on the machine it was tuned
on.
"""

import dataclasses
import math
import statistics
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lrpet_jax import _trees
from lrpet_jax import compact
from lrpet_jax import folding
from lrpet_jax import models
from lrpet_jax.models import layers

MULTIPLES = (8, 16)


def interleaved_seconds(calls: dict, repeats: int = 9) -> dict[str, float]:
  """{name: median wall time} of ``calls`` {name: (fn, args)}, timed in turn
  (A, B, C, A, B, C, ...) after compilation and a warm-up of each, so that
  drifts of the machine's speed fall on all of them alike."""
  for fn, args in calls.values():
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, (fn, args) in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def median_seconds(fn, *args, repeats: int = 9) -> float:
  """Median wall time of ``fn(*args)`` after compilation and one warm-up."""
  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


@dataclasses.dataclass(frozen=True)
class LayerSite:
  """A projected layer as the model calls it."""

  path: tuple[str, ...]
  module: Any  # the dense model's LowRankConv / LowRankDense
  input_shape: tuple[int, ...]  # per example


def layer_sites(model: nn.Module, variables: Any, input_shape, ranks
                ) -> list[LayerSite]:
  """Every layer of ``model`` whose kernel has a rank, with its input shape."""
  ranked = {p[:-1] for p in _trees.leaves_by_path(ranks)}
  sites = []

  def record(next_fun, args, kwargs, context):
    if (isinstance(context.module, (layers.LowRankConv, layers.LowRankDense))
        and context.method_name == "__call__"
        and tuple(context.module.path) in ranked):
      sites.append(LayerSite(tuple(context.module.path), context.module,
                             tuple(args[0].shape[1:])))
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return sites


def candidate_ranks(rank: int, kernel_shape, multiples=MULTIPLES) -> list:
  """None (dense), then each factorized rank ≥ ``rank`` worth trying."""
  full = min(math.prod(kernel_shape[:-1]), kernel_shape[-1])
  out = [None]
  for r in [rank] + [-(-rank // m) * m for m in multiples]:
    if r <= full and r not in out and layers.is_factorized(r, kernel_shape):
      out.append(r)
  return out


def _layer_alone(site: LayerSite, rank, dtype):
  """The layer at ``rank`` with a bias (BatchNorm folded), on its own."""
  m = site.module
  kw = dict(features=m.features, rank=rank, use_bias=True, dtype=dtype)
  if isinstance(m, layers.LowRankConv):
    return layers.LowRankConv(kernel_size=m.kernel_size, strides=m.strides,
                              padding=m.padding, **kw)
  return layers.LowRankDense(**kw)


def time_layer(site: LayerSite, rank, batch: int, dtype=None,
               repeats: int = 9) -> float:
  layer = _layer_alone(site, rank, dtype)
  x = jnp.asarray(np.random.default_rng(0).normal(
      size=(batch,) + site.input_shape), dtype or jnp.float32)
  variables = layer.init(jax.random.key(0), x[:1])
  return median_seconds(jax.jit(layer.apply), variables, x, repeats=repeats)


def tune(model_name: str, dense_variables: Any, ranks: Any, *,
         num_classes: int = 10, input_shape=(32, 32, 3), batch: int = 256,
         dtype=None, multiples=MULTIPLES, repeats: int = 9,
         min_speedup: float = 1.03,
         log=lambda message: None) -> tuple[Any, dict]:
  """The fastest exact form of every projected layer, measured here.

  Args:
    model_name, num_classes: the zoo model.
    dense_variables: its projected variables (every ranked kernel of rank ≤
      its rank: LRPET's final projection).
    ranks: the rank tree of the projection.
    input_shape: (H, W, C) of one example.
    batch: the batch size to tune for.
    dtype: computation dtype (None: float32; ``jnp.bfloat16``).
    multiples: rank multiples to try beyond the rank itself.
    repeats: timed calls per measurement (median).
    min_speedup: the whole tuned model is kept only if it is at least this
      much faster than the dense one (measured, interleaved); otherwise every
      layer stays dense. Above 1 so that noise cannot make it slower.
    log: called with a line per layer shape measured.

  Returns:
    (tuned ranks: a rank tree for ``models.create`` with None where a layer
    stays dense, report: per-layer rows with every measured form, the whole
    dense and tuned models' times, and whether the guard kept all dense).
  """
  dense = models.create(model_name, num_classes, dtype=dtype)
  sites = layer_sites(dense, dense_variables, input_shape, ranks)
  rows, chosen = _fastest_forms(sites, dense_variables, ranks, batch, dtype,
                                multiples, repeats, log)
  tuned = jax.tree_util.tree_map_with_path(
      lambda p, r: None if r is None else chosen[
          tuple(_trees.key_name(k) for k in p)],
      ranks, is_leaf=lambda r: r is None)
  x = jnp.asarray(np.random.default_rng(1).normal(
      size=(batch,) + tuple(input_shape)), dtype or jnp.float32)
  pairs = models.bn_pairs(dense_variables["params"])
  calls = {}
  for label, r in (("dense", None), ("tuned", tuned)):
    model = models.create(model_name, num_classes, ranks=r, dtype=dtype)
    v = dense_variables if r is None else compact.factorize(dense_variables, r)
    folded = jax.device_put(folding.fold(v, pairs))
    fn = jax.jit(lambda f, x, model=model: folding.folded_apply(model, f, x))
    calls[label] = (fn, (folded, x))
  whole = interleaved_seconds(calls, repeats)
  all_dense = whole["dense"] / whole["tuned"] < min_speedup
  if all_dense:
    tuned = jax.tree.map(lambda r: None, ranks, is_leaf=lambda r: r is None)
  report = {"backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "batch": batch,
            "dtype": jnp.dtype(dtype or jnp.float32).name, "layers": rows,
            "dense_ms": whole["dense"] * 1e3, "tuned_ms": whole["tuned"] * 1e3,
            "speedup": whole["dense"] / whole["tuned"],
            "kept_all_dense": bool(all_dense)}
  return tuned, report


def _fastest_forms(sites, dense_variables, ranks, batch, dtype, multiples,
                   repeats, log) -> tuple[list[dict], dict]:
  """(report rows, {kernel path: chosen rank or None}): every candidate form
  of every site timed alone, once per distinct layer configuration."""
  flat_ranks = _trees.leaves_by_path(ranks)
  params = _trees.leaves_by_path(dense_variables["params"])
  measured = {}  # one measurement per distinct (layer config, input, rank)
  rows, chosen = [], {}
  for site in sites:
    key = site.path + ("kernel",)
    rank, shape = flat_ranks[key], tuple(params[key].shape)
    times = {}
    for r in candidate_ranks(rank, shape, multiples):
      config = (type(site.module).__name__, shape, site.input_shape,
                getattr(site.module, "strides", 1),
                getattr(site.module, "padding", None), r)
      if config not in measured:
        measured[config] = time_layer(site, r, batch, dtype, repeats)
        log(f"{'/'.join(site.path)} {'x'.join(map(str, shape))}"
            f" {'dense' if r is None else f'rank {r}'}:"
            f" {measured[config] * 1e3:.3f} ms")
      times["dense" if r is None else str(r)] = measured[config]
    best = min(times, key=times.get)
    chosen[key] = None if best == "dense" else int(best)
    rows.append({"layer": "/".join(site.path), "shape": list(shape),
                 "rank": rank, "form": "dense" if best == "dense" else "split",
                 "tuned_rank": chosen[key], "ms": {
                     k: round(v * 1e3, 4) for k, v in times.items()}})
  return rows, chosen


def format_report(report: dict) -> str:
  """The tuning report as a table: each layer's measured forms and choice."""
  lines = [f"{'layer':<30} {'shape':<14} {'rank':>4} {'chosen':>8}"
           "  measured ms per form"]
  for row in report["layers"]:
    chosen = ("dense" if row["tuned_rank"] is None
              else f"r={row['tuned_rank']}")
    forms = "  ".join(f"{k if k == 'dense' else 'r=' + k} {v:.3f}"
                      for k, v in row["ms"].items())
    lines.append(f"{row['layer']:<30} {'x'.join(map(str, row['shape'])):<14}"
                 f" {row['rank']:>4} {chosen:>8}  {forms}")
  verdict = (" (not faster: every layer kept dense)"
             if report["kept_all_dense"] else "")
  lines.append(
      f"whole model, batch {report['batch']}, {report['dtype']},"
      f" {report['backend']} ({report['device']}), BatchNorm folded: dense"
      f" {report['dense_ms']:.3f} ms, tuned {report['tuned_ms']:.3f} ms,"
      f" speed-up {report['speedup']:.2f}x{verdict}")
  return "\n".join(lines) + "\n"
