r"""Low-rank projection with energy transfer (LRPET, Guo et al., TNNLS 2024).

A kernel of shape ``(..., c_out)`` (conv ``(kh, kw, c_in, c_out)``, dense
``(d_in, d_out)``) is the matrix ``W`` of shape ``(m, n) = (prod(...), c_out)``.
With ``W = U diag(s) Vᵀ`` (``s`` descending), rank ``r`` and residual scale
``ρ``, the projection is

    P_r(W) = U diag(s') Vᵀ,   s'_i = sqrt(α)·s_i for i < r,   s'_i = ρ·s_i for i ≥ r,
    α = (Σ_i s_i² − Σ_{i≥r} (ρ s_i)²) / Σ_{i<r} s_i²,

so that ‖P_r(W)‖_F = ‖W‖_F (energy transfer). Without energy transfer α = 1.

BN rectification: when the kernel feeds a BatchNorm with per-channel factor
``a = γ / sqrt(running_var + eps_bn)`` (see ``bn.bn_out_scales``), the projection
acts on the network's effective kernel and is mapped back:

    W ← P_r(W diag(a)) · diag(a / (a² + eps)).

How it is computed: ``W_r = W V_r V_rᵀ`` (or ``U_r U_rᵀ W`` when m < n) is the
rank-r truncated SVD, with the top-r singular vectors taken from the symmetric
eigendecomposition of the smaller Gram matrix (``WᵀW`` or ``WWᵀ``). Since
``W_r ⟂ W − W_r`` in the Frobenius inner product and ``‖W_r‖² = Σ_{i<r} s_i²``,

    P_r(W) = sqrt(α)·W_r + ρ·(W − W_r),   α = 1 + (1 − ρ²)·‖W − W_r‖² / ‖W_r‖²,

which is the formula above. The Gram route needs an n×n ``eigh`` instead of an
m×n SVD (n = c_out is the small side of every conv kernel); all matmuls run at
``Precision.HIGHEST`` so TPU/GPU reduced-precision defaults do not leak in.
Accuracy against a float64 NumPy SVD is tested (relative error ≲ 2e-5 in
float32 even for spectra spanning four decades).
"""

from collections.abc import Sequence
import functools
import math
import numbers
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from lrpet_jax.core import _trees

_HIGHEST = lax.Precision.HIGHEST


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
  """(m, n) of the matrix view of a kernel of ``shape`` (..., c_out)."""
  if len(shape) < 2:
    raise ValueError(f"kernel must have ndim >= 2, got shape {tuple(shape)}")
  return math.prod(shape[:-1]), shape[-1]


def check_rank(rank: Any, shape: Sequence[int], name: str = "rank") -> int:
  """Returns ``rank`` as an int if 1 ≤ rank ≤ min(m, n), else ValueError."""
  m, n = matrix_shape(shape)
  if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
    raise ValueError(f"{name} must be an int, got {rank!r}")
  if not 1 <= rank <= min(m, n):
    raise ValueError(
        f"{name}={rank} is outside [1, {min(m, n)}] for a kernel of shape"
        f" {tuple(shape)} (matrix {m}x{n})"
    )
  return int(rank)


def known(x) -> bool:
  """``x`` has a value now: not traced (e.g. a hyperparameter that
  ``optax.inject_hyperparams`` passes inside ``jit``), so it can be checked
  or branched on."""
  return not isinstance(x, jax.core.Tracer)


def check_hyperparameters(residual_scale: float, eps: float,
                          min_sigma: float) -> None:
  """One-line ValueErrors for values out of range; traced values (checked
  when they were given, e.g. by ``inject_hyperparams``' init) pass."""
  if known(residual_scale) and not 0.0 <= residual_scale <= 1.0:
    raise ValueError(f"residual_scale must be in [0, 1], got {residual_scale}")
  if known(eps) and not eps > 0:
    raise ValueError(f"eps must be > 0, got {eps}")
  if known(min_sigma) and not min_sigma >= 0:
    raise ValueError(f"min_sigma must be >= 0, got {min_sigma}")


def _truncate(w: jax.Array, rank: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Rank-``rank`` truncated SVD W_r of the 2-D ``w`` and its largest singular value."""
  m, n = w.shape
  mm = functools.partial(jnp.matmul, precision=_HIGHEST)
  if m >= n:
    eigvals, v = jnp.linalg.eigh(mm(w.T, w))  # ascending eigenvalues
    v = v * (jnp.arange(n) >= n - rank)
    w_r = mm(mm(w, v), v.T)
  else:
    eigvals, u = jnp.linalg.eigh(mm(w, w.T))
    u = u * (jnp.arange(m) >= m - rank)
    w_r = mm(u, mm(u.T, w))
  return w_r, jnp.sqrt(jnp.maximum(eigvals[-1], 0.0))


def _project_matrix(w, rank, out_scale, *, energy_transfer, residual_scale,
                    eps, min_sigma):
  """``project_kernel`` on a 2-D float matrix with a (possibly traced) rank."""
  if out_scale is not None:
    w_eff = w * out_scale
  else:
    w_eff = w
  # A kernel with a NaN or inf is left as it is (its energy reads NaN): the
  # eigendecomposition only ever sees finite numbers.
  finite = jnp.all(jnp.isfinite(w_eff))
  w_eff = jnp.where(finite, w_eff, 0.0)
  w_r, sigma_max = _truncate(w_eff, rank)
  residual = w_eff - w_r
  kept = jnp.sum(w_r * w_r)
  lost = jnp.sum(residual * residual)
  dead = sigma_max < min_sigma
  energy = jnp.where(dead, 1.0, kept / jnp.maximum(kept + lost,
                                                    jnp.finfo(w.dtype).tiny))
  if energy_transfer:
    alpha = 1.0 + (1.0 - residual_scale**2) * lost / jnp.maximum(
        kept, jnp.finfo(w.dtype).tiny)
    projected = jnp.sqrt(alpha) * w_r
  else:
    projected = w_r
  if not known(residual_scale) or residual_scale:
    projected = projected + residual_scale * residual
  if out_scale is not None:
    projected = projected * (out_scale / (out_scale * out_scale + eps))
  return (jnp.where(dead, w, projected),
          jnp.where(finite, energy, jnp.nan))


def project_batch(kernels: jax.Array, ranks: jax.Array,
                  out_scales: jax.Array | None = None, *,
                  energy_transfer: bool = True, residual_scale: float = 0.0,
                  eps: float = 1e-5, min_sigma: float = 1e-4) -> jax.Array:
  """``project_kernel`` over a leading batch axis, in one batched eigh.

  Args:
    kernels: (B, ..., c_out) stack of equal-shape kernels.
    ranks: (B,) int ranks, assumed already validated.
    out_scales: (B, c_out) BN factors or None.

  Returns:
    (B, ..., c_out) projected kernels in the input dtype, and (B,) the fraction
    of each (BN-scaled) kernel's energy the rank-r truncation kept, before
    energy transfer (1 for a dead layer; NaN for a kernel with a non-finite
    entry, which is returned unchanged).
  """
  shape = kernels.shape
  dtype = kernels.dtype
  cdtype = jnp.promote_types(dtype, jnp.float32)
  m, n = matrix_shape(shape[1:])
  w = kernels.reshape(shape[0], m, n).astype(cdtype)
  fn = functools.partial(
      _project_matrix, energy_transfer=energy_transfer,
      residual_scale=residual_scale, eps=eps, min_sigma=min_sigma)
  if out_scales is None:
    out, energy = jax.vmap(lambda x, r: fn(x, r, None))(w, ranks)
  else:
    out, energy = jax.vmap(fn)(w, ranks, out_scales.astype(cdtype))
  return out.reshape(shape).astype(dtype), energy


def project_kernel(kernel: jax.Array, rank: int, *,
                   energy_transfer: bool = True, residual_scale: float = 0.0,
                   out_scale: jax.Array | None = None, eps: float = 1e-5,
                   min_sigma: float = 1e-4) -> jax.Array:
  """Projects one kernel onto rank ``rank`` (see the module docstring for the math).

  Args:
    kernel: array of shape (..., c_out), viewed as (prod(...), c_out).
    rank: static int in [1, min(m, n)].
    energy_transfer: scale the kept singular values so ‖W‖_F is preserved.
    residual_scale: ρ, the factor on the discarded singular values, in [0, 1].
    out_scale: optional (c_out,) BatchNorm factor a = γ/sqrt(var + eps_bn) for
      BN rectification.
    eps: the rectification constant in a / (a² + eps).
    min_sigma: if the largest singular value is below this, the kernel is
      returned unchanged (a dead layer has no direction to keep). A kernel
      with a NaN or inf entry is also returned unchanged.

  Returns:
    Array of the same shape and dtype. Jittable (``rank`` must be static).

  Example (energy transfer keeps the Frobenius norm):

  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from lrpet_jax.core.projection import project_kernel
  >>> w = jax.random.normal(jax.random.key(0), (3, 3, 16, 32))
  >>> p = project_kernel(w, 8)
  >>> int(np.linalg.matrix_rank(np.asarray(p).reshape(-1, 32), tol=1e-4))
  8
  >>> bool(jnp.allclose(jnp.linalg.norm(p), jnp.linalg.norm(w), rtol=1e-5))
  True
  """
  shape = jnp.shape(kernel)
  rank = check_rank(rank, shape)
  check_hyperparameters(residual_scale, eps, min_sigma)
  if out_scale is not None and jnp.shape(out_scale) != (shape[-1],):
    raise ValueError(
        f"out_scale must have shape ({shape[-1]},), got {jnp.shape(out_scale)}")
  kernel = jnp.asarray(kernel)
  out = project_batch(
      kernel[None], jnp.asarray([rank], jnp.int32),
      None if out_scale is None else jnp.asarray(out_scale)[None],
      energy_transfer=energy_transfer, residual_scale=residual_scale, eps=eps,
      min_sigma=min_sigma)[0]
  return out[0]


def energy_kept(kernel: jax.Array, rank: int) -> float:
  """Σ_{i<r} s_i² / Σ_i s_i²: the Frobenius energy a rank-r truncation keeps
  (before energy transfer). Float64 NumPy, for reports; NaN for a kernel
  with a non-finite entry.

  >>> import numpy as np
  >>> from lrpet_jax.core.projection import energy_kept
  >>> energy_kept(np.diag([3.0, 1.0]), 1)  # 9 / (9 + 1)
  0.9
  """
  w = np.asarray(kernel, np.float64).reshape(matrix_shape(np.shape(kernel)))
  if not np.all(np.isfinite(w)):
    return float("nan")
  s = np.linalg.svd(w, compute_uv=False)
  total = float(np.sum(s * s))
  return float(np.sum(s[:rank] ** 2) / total) if total > 0 else 1.0


def check_rank_tree(ranks: Any, params: Any, name: str = "ranks") -> list[Any]:
  """Validates a rank pytree against ``params``; returns ranks aligned with
  ``jax.tree.leaves(params)`` (int or None)."""
  aligned = _trees.align_to(ranks, params, name)
  paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  for path, leaf, rank in zip(paths, jax.tree.leaves(params), aligned):
    if rank is not None:
      check_rank(rank, jnp.shape(leaf), f"{name}[{_trees.path_str(path)}]")
  return aligned


def _groups(params, rank_leaves, scale_leaves, batched
            ) -> dict[tuple, list[int]]:
  """Indices of the ranked leaves, grouped by (shape, dtype, scaled, ·) for
  one ``project_batch`` call each (one leaf per group unless ``batched``)."""
  groups = {}
  for i, ((path, leaf), rank, scale) in enumerate(zip(
      jax.tree_util.tree_leaves_with_path(params), rank_leaves, scale_leaves)):
    if rank is None:
      continue
    if scale is not None and jnp.shape(scale) != (jnp.shape(leaf)[-1],):
      raise ValueError(
          f"out_scales[{_trees.path_str(path)}] has shape"
          f" {jnp.shape(scale)}, expected ({jnp.shape(leaf)[-1]},)")
    key = (jnp.shape(leaf), jnp.result_type(leaf), scale is not None,
           None if batched else i)
    groups.setdefault(key, []).append(i)
  return groups


def project_params(params: Any, ranks: Any, *, out_scales: Any = None,
                   energy_transfer: bool = True, residual_scale: float = 0.0,
                   eps: float = 1e-5, min_sigma: float = 1e-4,
                   batched: bool | None = None,
                   return_energy: bool = False) -> Any:
  """Projects every leaf of ``params`` that has a rank; other leaves pass through.

  With ``batched``, leaves of equal shape and dtype are stacked and projected
  in one batched (vmapped) eigendecomposition.

  Args:
    params: pytree of arrays.
    ranks: pytree like ``params`` with an int rank at projected leaves and
      ``None`` elsewhere (as from ``uniform_ranks``), or a ``ranks.Ranks``.
    out_scales: optional pytree like ``params`` with a (c_out,) BN factor at
      kernels that feed a BatchNorm and ``None`` elsewhere (``bn_out_scales``).
    energy_transfer, residual_scale, eps, min_sigma: as in ``project_kernel``.
    batched: group equal shapes into one call; default: on every backend but
      CPU (see the comment in the body).
    return_energy: also return, for each ranked leaf in ``jax.tree.leaves``
      order, the fraction of its energy the truncation kept (a (L,) array).

  Returns:
    A pytree like ``params`` (and the energy array with ``return_energy``).
  """
  check_hyperparameters(residual_scale, eps, min_sigma)
  leaves, treedef = jax.tree.flatten(params)
  ranks = _trees.rank_tree(ranks, params)
  rank_leaves = check_rank_tree(ranks, params)
  if out_scales is None:
    scale_leaves = [None] * len(leaves)
  else:
    scale_leaves = _trees.align_to(out_scales, params, "out_scales")
  # jaxlib's CPU LAPACK kernels (0.10.x) fan a batch out over XLA's intra-op
  # pool and block a pool thread until it is done; two batched calls in flight
  # at once can deadlock a small pool (seen here on 2 cores). On CPU every
  # kernel therefore gets its own unbatched eigh, which measured as fast.
  if batched is None:
    batched = jax.default_backend() != "cpu"
  groups = _groups(params, rank_leaves, scale_leaves, batched)
  out = list(leaves)
  energy = [None] * len(leaves)
  for (_, _, has_scale, _), idx in groups.items():
    projected, kept = project_batch(
        jnp.stack([leaves[i] for i in idx]),
        jnp.asarray([rank_leaves[i] for i in idx], jnp.int32),
        jnp.stack([scale_leaves[i] for i in idx]) if has_scale else None,
        energy_transfer=energy_transfer, residual_scale=residual_scale,
        eps=eps, min_sigma=min_sigma)
    for j, i in enumerate(idx):
      out[i], energy[i] = projected[j], kept[j]
  projected_tree = jax.tree.unflatten(treedef, out)
  if not return_energy:
    return projected_tree
  kept_list = [e for e in energy if e is not None]
  return projected_tree, (jnp.stack(kept_list) if kept_list
                          else jnp.zeros((0,), jnp.float32))
