"""Compact export: factorize a (projected) dense model's kernels.

A kernel W of shape (..., c_out), viewed as the (m, n) matrix, with rank r and
truncated SVD W ≈ U_r S_r V_rᵀ becomes two kernels

    first_kernel  = U_r √S_r  reshaped to (..., r)     (k×k conv with r filters)
    second_kernel = √S_r V_rᵀ reshaped to (1, 1, r, c_out) for a 2-D conv
                    ((1,)·(ndim − 2) + (r, c_out) in general; (r, n) dense)

so first·second = W_r (exactly W after LRPET's final projection): the
variables of ``factorized.Factorized``, the compact model of any model. The
bias and all other variables (BatchNorm statistics included) carry over.
Layers that ``factorized.is_factorized`` rejects (break-even guard) keep
their dense kernel.
"""

import json
import pathlib
import shutil
from typing import Any

import jax
import numpy as np

from lrpet_jax.analysis import accounting
from lrpet_jax.analysis import factorized
from lrpet_jax.analysis import folding
from lrpet_jax.analysis import tracing
from lrpet_jax.core import _trees
from lrpet_jax.core import projection
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.data import hosts
from lrpet_jax.deploy import export_check
from lrpet_jax.deploy import serving
from lrpet_jax.deploy import variables_file


def _split(kernel: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
  shape = kernel.shape
  m, n = projection.matrix_shape(shape)
  w = np.asarray(kernel, np.float64).reshape(m, n)
  u, s, vt = np.linalg.svd(w, full_matrices=False)
  root = np.sqrt(s[:rank])
  first = (u[:, :rank] * root).reshape(shape[:-1] + (rank,))
  second = (root[:, None] * vt[:rank]).reshape((1,) * (len(shape) - 2)
                                               + (rank, n))
  return first.astype(kernel.dtype), second.astype(kernel.dtype)


def _factorize_tree(tree: Any, ranks: dict, path: tuple[str, ...]) -> Any:
  """``tree`` with each ranked ``kernel`` (``ranks``: {path tuple: rank})
  split into ``first_kernel`` and ``second_kernel``."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    here = path + (str(key),)
    rank = ranks.get(here)
    if key == "kernel" and rank is not None and factorized.is_factorized(
        rank, np.shape(value)):
      projection.check_rank(rank, np.shape(value),
                            f"ranks[{_trees.path_str(here)}]")
      out["first_kernel"], out["second_kernel"] = _split(np.asarray(value),
                                                         rank)
    else:
      out[key] = _factorize_tree(value, ranks, here)
  return out


def _plain(tree: Any) -> Any:
  """Nested plain dicts (FrozenDicts unfrozen), keeping ``None`` leaves."""
  if hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def factorize(variables: Any, ranks: Any) -> dict[str, Any]:
  """Variables of ``factorized.Factorized(dense_model, ranks)`` from the dense ones.

  Args:
    variables: the dense model's variables ({"params": ..., "batch_stats": ...}).
    ranks: the rank pytree of the dense params (as used in training).

  Returns:
    The compact model's variables (NumPy arrays; pass through ``jax.device_put``
    as needed).
  """
  variables = _plain(jax.device_get(variables))
  params = variables["params"]
  aligned = projection.check_rank_tree(_trees.rank_tree(ranks, params), params)
  by_path = {_trees.path_tuple(p): r for (p, _), r in zip(
      jax.tree_util.tree_leaves_with_path(params), aligned) if r is not None}
  return {**variables, "params": _factorize_tree(params, by_path, ())}


def layer_report(variables: Any, ranks: Any, costs: list[Any],
                 energy_kept: dict[str, float] | None = None) -> list[dict]:
  """Per projected layer: shape, rank, energy kept, MACs/params dense vs compact.

  Args:
    variables: dense variables (after the final projection).
    ranks: their rank pytree.
    costs: ``accounting.layer_costs`` of the dense model.
    energy_kept: {"layer/kernel": fraction} to report (e.g. what LRPET's last
      projection during training kept); default: Σ_{i<r} s_i² / Σ s_i² of the
      kernel in ``variables`` (1 for an already projected kernel).
  """
  params = _trees.leaves_by_path(jax.device_get(variables["params"]))
  flat_ranks = _trees.leaves_by_path(ranks)
  rows = []
  for c in costs:
    key = c.kernel
    rank = flat_ranks.get(key)
    if rank is None:
      continue
    shape = tuple(params[key].shape)
    m, n = projection.matrix_shape(shape)
    split = factorized.is_factorized(rank, shape)
    rows.append({
        "layer": "/".join(c.path),
        "shape": list(shape),
        "rank": rank,
        "full_rank": min(m, n),
        "factorized": split,
        "energy_kept": (float(energy_kept["/".join(key)]) if energy_kept
                        else projection.energy_kept(params[key], rank)),
        "macs_dense": c.macs,
        "macs_compact": factorized.layer_macs(rank, shape, c.positions,
                                              c.out_positions),
        "params_dense": m * n,
        "params_compact": factorized.layer_weights(rank, shape),
    })
  return rows


def format_report(rows: list[dict]) -> str:
  """The per-layer report as a fixed-width text table with a total line."""
  header = (f"{'layer':<34} {'shape':<18} {'rank':>9} {'split':>5}"
            f" {'energy':>7} {'MACs dense':>11} {'compact':>11}"
            f" {'params':>9} {'compact':>9}")
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(
        f"{r['layer']:<34} {'x'.join(map(str, r['shape'])):<18}"
        f" {r['rank']:>4}/{r['full_rank']:<4} {'yes' if r['factorized'] else 'no':>5}"
        f" {r['energy_kept']:>7.4f} {r['macs_dense']:>11,} {r['macs_compact']:>11,}"
        f" {r['params_dense']:>9,} {r['params_compact']:>9,}")
  tot = {k: sum(r[k] for r in rows) for k in
         ("macs_dense", "macs_compact", "params_dense", "params_compact")}
  lines.append("-" * len(header))
  lines.append(
      f"{'projected layers total':<34} {'':<18} {'':>9} {'':>5} {'':>7}"
      f" {tot['macs_dense']:>11,} {tot['macs_compact']:>11,}"
      f" {tot['params_dense']:>9,} {tot['params_compact']:>9,}")
  return "\n".join(lines)


def folded_costs(dense_model, compact_model, dense_variables,
                 compact_variables, pairs, input_shape) -> dict[str, Any]:
  """MACs, params and FLOPs per example of the dense and compact models, each
  BatchNorm-folded as deployed (``accounting.cost`` of ``folded_apply``).

  Returns:
    {"dense": cost, "compact": cost, "folded": the compact model's folded
    variables}. ``dense_variables`` may be ``ShapeDtypeStruct``s.
  """
  folded = folding.fold(compact_variables, pairs)
  dense_folded = folding.fold(jax.tree.map(
      lambda a: a if isinstance(a, (np.ndarray, jax.Array))
      else np.ones(a.shape, a.dtype), dense_variables), pairs)
  return {
      "dense": accounting.cost(
          dense_model, dense_variables, input_shape, apply_fn=lambda v, x: (
              folding.folded_apply(dense_model, dense_folded, x))),
      "compact": accounting.cost(
          compact_model, compact_variables, input_shape,
          apply_fn=lambda v, x: folding.folded_apply(compact_model, folded,
                                                     x)),
      "folded": folded,
  }


def _summary_line(model_name, report) -> str:
  dense, small = report["dense"], report["compact"]
  return (f"{model_name}: MACs {dense['macs']:,} → {small['macs']:,}"
          f" ({report['macs_reduction']:.1%} fewer), params"
          f" {dense['params']:,} → {small['params']:,}"
          f" ({report['params_reduction']:.1%} fewer)\n")


def build_report(dense_model, compact_model, ranks: Any, pairs, *,
                 input_shape: tuple[int, ...], dense_variables: Any,
                 compact_variables: Any, energy_kept=None,
                 description: dict) -> tuple[dict, Any]:
  """(the report ``write`` saves, the compact model's folded variables).

  ``compact_model``: ``factorized.Factorized(dense_model, ranks)``.
  ``dense_variables`` None: costs from the dense model's shapes, no rows.
  ``description`` (model name, classes) heads the report.
  """
  dense_abstract = tracing.abstract_variables(dense_model, input_shape)
  costs = folded_costs(dense_model, compact_model,
                       dense_variables or dense_abstract, compact_variables,
                       pairs, input_shape)
  rows = [] if dense_variables is None else layer_report(
      dense_variables, ranks,
      accounting.layer_costs(dense_model, dense_variables, input_shape),
      energy_kept)
  dense, small = costs["dense"], costs["compact"]
  return {
      **description, "input_shape": list(input_shape), "dense": dense,
      "compact": small, "macs_reduction": 1 - small["macs"] / dense["macs"],
      "params_reduction": 1 - small["params"] / dense["params"],
      "layers": rows,
  }, costs["folded"]


def write(out_dir: str | pathlib.Path, dense_model, ranks: Any, pairs, *,
          input_shape: tuple[int, ...], description: dict,
          dense_variables: Any = None, compact_variables: Any = None,
          energy_kept: dict[str, float] | None = None,
          overwrite: bool = False, normalization=None,
          check_images=None) -> tuple[dict, Any]:
  """Writes the compact model and its report; returns (report, compact variables).

  Writes to ``out_dir`` (created): ``compact/`` (Orbax checkpoint of the
  compact model's variables), ``ranks.json`` ({"layer/kernel": rank}, to
  rebuild the compact model), ``compact_report.json`` (the description,
  input shape, per-example MACs, params and BatchNorm-folded FLOPs dense vs
  compact, reductions, per-layer rows: ``build_report``),
  ``compact_report.txt`` (the rows as a table and a totals line) and, with
  ``normalization``, ``serving/``: the compact model, BatchNorm folded, as a
  standalone ``jax.export`` artifact (``serving.write``), checked against
  the trained model (``export_check``: the report's ``export_check``; a
  mismatch raises ``ExportCheckError`` and leaves ``serving.rejected/``).

  Args:
    out_dir: output directory.
    dense_model: the dense model, ``__call__(x, train)``.
    ranks: rank pytree of the dense params.
    pairs: the dense model's ``tracing.Pairing`` (``tracing.bn_pairs``),
      for folding.
    input_shape: (H, W, C) of one example.
    description: {"model": name, "num_classes": n, ...} for the report and
      the serving spec.
    dense_variables: the dense model's variables (projected: the
      factorization is then exact); factorized unless ``compact_variables``.
    compact_variables: the compact model's variables, when trained directly
      (no per-layer rows then).
    energy_kept: per-layer energy for the rows (see ``layer_report``).
    overwrite: replace an existing ``out_dir/compact``.
    normalization: (mean, std) of the input pixels in [0, 1], per channel:
      the serving artifact takes raw pixels and normalizes them.
    check_images: (b, H, W, C) uint8 pixels for the export check
      (e.g. test images); default: random pixels.
  """
  out = pathlib.Path(out_dir).absolute()
  if compact_variables is None:
    compact_variables = factorize(dense_variables, ranks)
  compact_model = factorized.Factorized(dense_model, ranks)
  report, folded = build_report(
      dense_model, compact_model, ranks, pairs, input_shape=input_shape,
      dense_variables=dense_variables, compact_variables=compact_variables,
      energy_kept=energy_kept, description=description)
  out.mkdir(parents=True, exist_ok=True)
  variables_file.save(out / "compact", compact_variables, force=overwrite)
  if not hosts.is_writer():
    return report, compact_variables
  ranks_lib.Ranks.of_tree(ranks).write(out / "ranks.json")
  if normalization is not None:
    report["export_check"] = _write_serving(
        out / "serving", dense_model, compact_model, ranks, folded, input_shape=input_shape,
        normalization=normalization, description=description,
        dense_variables=dense_variables, compact_variables=compact_variables,
        check_images=check_images)
  _write_report(out, report, description.get("model", "model"))
  return report, compact_variables


def _write_report(out: pathlib.Path, report: dict, model: str) -> None:
  """``compact_report.json``, and ``compact_report.txt``: its rows as a
  table and a totals line."""
  (out / "compact_report.json").write_text(json.dumps(report, indent=1))
  (out / "compact_report.txt").write_text(
      (format_report(report["layers"]) + "\n\n" if report["layers"] else "")
      + _summary_line(model, report))


def _write_serving(path, dense_model, compact_model, ranks, folded, *,
                   input_shape, normalization, description, dense_variables,
                   compact_variables, check_images) -> dict:
  """The serving artifact at ``path`` (``compact_model``, BatchNorm
  ``folded``), checked against the trained model; returns the check."""
  artifact = serving.write(
      path, compact_model, folded, input_shape=input_shape,
      mean=normalization[0], std=normalization[1],
      description={**description,
                   "ranks": ranks_lib.as_json(ranks),
                   "form": "compact (LRPET factorization)" + (
                       ", BatchNorm folded" if folded.get(folding.BIAS)
                       else "")})
  trained_dense = dense_variables is not None
  return checked(
      path, check_images, normalization, input_shape,
      reference=((dense_model, truncated(dense_variables, ranks))
                 if trained_dense else (compact_model, compact_variables)),
      compact=(compact_model, compact_variables) if trained_dense else None,
      folded=(compact_model, folded), serving_file=artifact)


def truncated(variables: Any, ranks: Any) -> dict[str, Any]:
  """The dense model at ``ranks``: each kernel that ``factorize`` splits
  replaced by its rank-r truncated SVD W_r (float64 NumPy), the rest as it
  is; what the compact model computes, for the export check. (After LRPET's
  final projection W_r = W up to round-off.)"""
  variables = _plain(jax.device_get(variables))
  flat = _trees.leaves_by_path(ranks)

  def cut(path, kernel):
    rank = flat.get(_trees.path_tuple(path))
    if rank is None or not factorized.is_factorized(rank, np.shape(kernel)):
      return kernel
    w = np.asarray(kernel, np.float64).reshape(
        projection.matrix_shape(np.shape(kernel)))
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    w_r = (u[:, :rank] * s[:rank]) @ vt[:rank]
    return w_r.reshape(np.shape(kernel)).astype(np.asarray(kernel).dtype)

  return {**variables, "params": jax.tree_util.tree_map_with_path(
      cut, variables["params"])}


def checked(serving_dir: pathlib.Path, images, normalization, input_shape,
            **stages) -> dict:
  """``export_check.check`` of the artifact in ``serving_dir`` (random pixels
  without ``images``); on a mismatch the folder becomes
  ``serving.rejected`` and the error is raised."""
  if images is None:
    images = export_check.sample_images(input_shape)
  try:
    return export_check.check(images, normalization, **stages)
  except export_check.ExportCheckError:
    rejected = serving_dir.with_name(serving_dir.name + ".rejected")
    shutil.rmtree(rejected, ignore_errors=True)
    serving_dir.rename(rejected)
    raise
