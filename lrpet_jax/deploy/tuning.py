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

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrpet_jax.analysis import factorized
from lrpet_jax.analysis import folding
from lrpet_jax.analysis import tracing
from lrpet_jax.core import _trees
from lrpet_jax.core import projection
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.deploy import compact

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


def layer_sites(model, variables: Any, input_shape, ranks, *,
                apply_fn=None) -> list[tracing.Layer]:
  """Every layer of ``model`` whose kernel has a rank, as the model calls it
  (``tracing.layers``: path, module, input shape)."""
  ranked = {p[:-1] for p in _trees.leaves_by_path(ranks)}
  return [layer for layer in tracing.layers(
      apply_fn or tracing.eval_apply(model), variables, input_shape)
          if layer.path in ranked]


def candidate_ranks(rank: int, kernel_shape, multiples=MULTIPLES) -> list:
  """None (dense), then each factorized rank ≥ ``rank`` worth trying."""
  full = min(projection.matrix_shape(kernel_shape))
  out = [None]
  for r in [rank] + [ranks_lib.round_up(rank, m) for m in multiples]:
    if r <= full and r not in out and factorized.is_factorized(r, kernel_shape):
      out.append(r)
  return out


def _layer_alone(site: tracing.Layer, rank):
  """The layer at ``rank`` with a bias (BatchNorm folded), on its own."""
  layer = site.module.clone(parent=None, use_bias=True)
  return layer if rank is None else factorized.Factorized(layer,
                                                          {"kernel": rank})


def time_layer(site: tracing.Layer, rank, batch: int, repeats: int = 9
               ) -> float:
  """Median seconds of the layer alone at ``rank`` (None: dense) on a batch."""
  layer = _layer_alone(site, rank)
  dtype = getattr(site.module, "dtype", None) or jnp.float32
  x = jnp.asarray(np.random.default_rng(0).normal(
      size=(batch,) + site.input_shape), dtype)
  variables = layer.init(jax.random.key(0), x[:1])
  return median_seconds(jax.jit(layer.apply), variables, x, repeats=repeats)


def tune(model, dense_variables: Any, ranks: Any, pairs, *,
         input_shape=(32, 32, 3), batch: int = 256, multiples=MULTIPLES,
         repeats: int = 9, min_speedup: float = 1.03,
         log=lambda message: None, **model_kwargs) -> tuple[Any, dict]:
  """The fastest exact form of every projected layer, measured here.

  Args:
    model: the dense model, computing in the dtype to tune for (e.g. built
      with ``dtype=jnp.bfloat16``).
    dense_variables: its projected variables (every ranked kernel of rank ≤
      its rank: LRPET's final projection).
    ranks: the rank tree of the projection.
    pairs: {kernel path: BatchNorm path} (``tracing.bn_pairs``): the models
      are timed BatchNorm-folded, as deployed.
    input_shape: (H, W, C) of one example.
    batch: the batch size to tune for.
    multiples: rank multiples to try beyond the rank itself.
    repeats: timed calls per measurement (median).
    min_speedup: the whole tuned model is kept only if it is at least this
      much faster than the dense one (measured, interleaved); otherwise every
      layer stays dense. Above 1 so that noise cannot make it slower.
    log: called with a line per layer shape measured.
    **model_kwargs: the model's evaluation flags (default ``train=False``).

  Returns:
    (tuned ranks: a rank tree for ``factorized.Factorized`` with None where
    a layer stays dense, report: per-layer rows with every measured form, the
    whole dense and tuned models' times, and whether the guard kept all
    dense).
  """
  flags = model_kwargs or {"train": False}
  sites = layer_sites(model, dense_variables, input_shape, ranks,
                      apply_fn=tracing.eval_apply(model, **flags))
  rows, chosen = _fastest_forms(sites, dense_variables, ranks, batch,
                                multiples, repeats, log)
  tuned = jax.tree_util.tree_map_with_path(
      lambda p, r: None if r is None else chosen[
          tuple(_trees.key_name(k) for k in p)],
      ranks, is_leaf=lambda r: r is None)
  dtype = _dtype(sites)
  x = jnp.asarray(np.random.default_rng(1).normal(
      size=(batch,) + tuple(input_shape)), dtype)
  calls = {}
  for label, r in (("dense", None), ("tuned", tuned)):
    m = model if r is None else factorized.Factorized(model, r)
    v = dense_variables if r is None else compact.factorize(dense_variables, r)
    folded = jax.device_put(folding.fold(v, pairs))
    fn = jax.jit(lambda f, x, m=m: folding.folded_apply(m, f, x, **flags))
    calls[label] = (fn, (folded, x))
  whole = interleaved_seconds(calls, repeats)
  all_dense = whole["dense"] / whole["tuned"] < min_speedup
  if all_dense:
    tuned = jax.tree.map(lambda r: None, ranks, is_leaf=lambda r: r is None)
  report = {"backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "batch": batch,
            "dtype": jnp.dtype(dtype).name, "layers": rows,
            "dense_ms": whole["dense"] * 1e3, "tuned_ms": whole["tuned"] * 1e3,
            "speedup": whole["dense"] / whole["tuned"],
            "kept_all_dense": bool(all_dense)}
  return tuned, report


def _dtype(sites):
  """The computation dtype of the layers (float32 unless they set one)."""
  dtypes = {getattr(s.module, "dtype", None) for s in sites} - {None}
  return jnp.dtype(dtypes.pop()) if len(dtypes) == 1 else jnp.float32


def _fastest_forms(sites, dense_variables, ranks, batch, multiples,
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
      config = (repr(site.module.clone(parent=None, name=None)),
                site.input_shape, r)
      if config not in measured:
        measured[config] = time_layer(site, r, batch, repeats)
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
