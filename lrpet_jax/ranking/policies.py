"""Ranks chosen from the spectrum: the ``energy`` and ``budget`` policies.

The paper gives every convolution the same ratio (``ranks.uniform_ranks``).
These policies look at each layer's singular values instead — of the kernel
as LRPET projects it (BN-rectified: columns scaled by the following
BatchNorm's a = γ/√(var+ε)) — and choose fixed ranks once:

- ``energy_ranks``: each layer's smallest rank r whose kept energy
  Σ_{i<r} s_i² / Σ s_i² reaches ``threshold``.
- ``budget_ranks``: the ranks that keep the most energy under a MACs budget,
  greedily: every layer starts at rank 1, then the increment with the most
  energy gained per MAC spent is taken while it fits, where a layer's MACs
  at rank r are positions·r·(m + n) while that is below the dense
  positions·m·n (the break-even rule: past it the layer stays dense, at full
  rank). The objective is the sum over layers of the kept energy fraction
  (each layer's spectrum normalized to 1), so layers weigh alike whatever
  their scale.

``layer_spectra`` computes the spectra (float64 NumPy SVD, on the host);
``LayerShape`` is what the budget needs of a layer. The training pipeline
decides with these at ``config.rank_decision_epoch`` (``config.rank_policy``).
"""

import dataclasses
import heapq
import math
from typing import Any

import jax
import numpy as np

from lrpet_jax.analysis import factorized
from lrpet_jax.core import _trees
from lrpet_jax.core import projection


@dataclasses.dataclass(frozen=True)
class LayerShape:
  """A layer's matrix view (m, n), MACs per weight of its op (``positions``:
  H_out·W_out for a conv) and output positions (``out_positions``, if
  other: a transposed conv), as ``factorized.layer_macs`` takes them."""

  m: int
  n: int
  positions: int
  out_positions: int | None = None

  def macs(self, rank: int | None) -> int:
    """MACs at ``rank`` (None: dense), with the break-even rule."""
    return factorized.layer_macs(rank, (self.m, self.n), self.positions,
                                 self.out_positions)


def layer_spectra(params: Any, ranks: Any, out_scales: Any = None
                  ) -> dict[str, np.ndarray]:
  """{"layer/kernel": descending singular values} of each ranked kernel as
  the projection sees it (times ``out_scales``, the BN factors, if given)."""
  flat = _trees.leaves_by_path(jax.device_get(params))
  scales = (_trees.leaves_by_path(jax.device_get(out_scales))
            if out_scales is not None else {})
  out = {}
  for path in _trees.leaves_by_path(ranks):
    w = np.asarray(flat[path], np.float64)
    w = w.reshape(projection.matrix_shape(w.shape))
    if scales.get(path) is not None:
      w = w * np.asarray(scales[path], np.float64)
    out["/".join(path)] = np.linalg.svd(w, compute_uv=False)
  return out


def kept_energy(spectrum: np.ndarray) -> np.ndarray:
  """kept[r] = Σ_{i<r} s_i² / Σ s_i² for r = 0 … len(s)."""
  energy = np.concatenate([[0.0], np.cumsum(np.square(spectrum))])
  return energy / energy[-1] if energy[-1] > 0 else np.ones_like(energy)


def energy_ranks(spectra: dict[str, np.ndarray], threshold: float
                 ) -> dict[str, int]:
  """Each layer's smallest rank keeping at least ``threshold`` of its energy."""
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"rank_energy must be in (0, 1], got {threshold!r}")
  return {name: max(1, int(np.argmax(kept_energy(s) >= threshold - 1e-12)))
          for name, s in spectra.items()}


def budget_ranks(spectra: dict[str, np.ndarray],
                 shapes: dict[str, LayerShape], macs_budget: int
                 ) -> dict[str, int]:
  """The most kept energy (summed over layers) at most ``macs_budget`` MACs
  spent by these layers (see the module docstring).

  Raises:
    ValueError: naming ``budget_macs_reduction`` if rank 1 everywhere is too much.
  """
  ranks = {name: 1 for name in spectra}
  spent = sum(shapes[name].macs(1) for name in spectra)
  if spent > macs_budget:
    raise ValueError(
        f"budget_macs_reduction: out of reach: even rank 1 in every projected layer"
        f" costs {spent:,} MACs, over the {macs_budget:,} allowed")
  kept = {name: kept_energy(s) for name, s in spectra.items()}
  full = {name: len(s) for name, s in spectra.items()}

  def step(name):
    """The next increment of ``name``: (−gain per MAC, cost, new rank)."""
    r, shape = ranks[name], shapes[name]
    if r >= full[name]:
      return None
    nxt = r + 1
    if not factorized.is_factorized(nxt, (shape.m, shape.n)):
      nxt = full[name]  # past break-even the layer is dense: full rank
    cost = shape.macs(nxt) - shape.macs(r)
    gain = kept[name][nxt] - kept[name][r]
    return (-gain / max(cost, 1), cost, nxt)

  heap = [(*step(n), n) for n in spectra if step(n) is not None]
  heapq.heapify(heap)
  while heap:
    _, cost, nxt, name = heapq.heappop(heap)
    if spent + cost > macs_budget:
      continue  # this layer cannot grow further within the budget
    ranks[name], spent = nxt, spent + cost
    following = step(name)
    if following is not None:
      heapq.heappush(heap, (*following, name))
  return ranks


def macs_budget(shapes: dict[str, LayerShape], dense_macs: int,
                macs_reduction: float) -> int:
  """The MACs the ranked layers may spend for the whole model to cut
  ``macs_reduction`` of ``dense_macs`` (the other layers' MACs unchanged)."""
  ranked_dense = sum(s.macs(None) for s in shapes.values())
  return math.floor(dense_macs * (1 - macs_reduction)) - (dense_macs
                                                          - ranked_dense)
