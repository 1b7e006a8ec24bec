"""The one rank selection of training and of the export command.

A ``RankRule`` names how a run's ranks are chosen: from a ranks file, a MACs
or params budget (``accounting.ranks_for_budget``), or else the uniform
ratio (``ranks.uniform_ranks``); then raised to the floors
(``ranks.floor_ranks``). ``select`` applies it to a model's variables.

Which kernels can have a rank is the model's layer table's answer
(``layer_table``): by default its convolutions (and transposed ones) that
have an exact two-layer factorization, with ``project_dense`` its dense
layers too; grouped convolutions, ``nn.scan``-stacked kernels and the like
stay unranked (``unranked`` names them), and a ranks file that names one
is refused.
"""

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np

from lrpet_jax.analysis import accounting
from lrpet_jax.analysis import tracing
from lrpet_jax.core import projection
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.ranking import policies

POLICIES = ("uniform", "energy", "budget")


@dataclasses.dataclass(frozen=True)
class RankRule:
  """How ranks are chosen (the config fields of the same names).

  Attributes:
    ratio: r = max(1, int(n − n·ratio)) for every selected kernel, unless
      one of the three below is given.
    macs_reduction: > 0: the uniform ratio whose compact model best meets
      this MACs cut.
    params_reduction: > 0: the same for a params cut.
    ranks_file: a JSON file {"layer/kernel": rank} (``ranks.json`` of a run).
    project_dense: select Dense kernels (the classifier) too, not only
      convolutions (ratio and budgets).
    rank_floor: > 0: every rank at least this (at most the full rank).
    first_rank_floor: > 0: the first layer's rank at least this.
    rank_policy: "uniform" (all of the above; the paper), or a choice from
      the spectrum during training (``policies``): "energy" (each
      layer's smallest rank keeping ``rank_energy`` of its energy) or
      "budget" (the most energy within ``macs_reduction``).
    rank_energy: the energy policy's threshold, in (0, 1].
  """

  ratio: float
  macs_reduction: float = 0.0
  params_reduction: float = 0.0
  ranks_file: str | None = None
  project_dense: bool = False
  rank_floor: int = 0
  first_rank_floor: int = 0
  rank_policy: str = "uniform"
  rank_energy: float = 0.9

  def __post_init__(self):
    if self.rank_policy not in POLICIES:
      raise ValueError(f"rank_policy: unknown {self.rank_policy!r}; valid:"
                       f" {', '.join(POLICIES)}")
    given = [name for name in ("macs_reduction", "params_reduction",
                               "ranks_file") if getattr(self, name)]
    if self.rank_policy != "uniform" and set(given) - {"macs_reduction"}:
      raise ValueError(f"{given[0]}: not with rank_policy"
                       f" {self.rank_policy!r}")
    if self.rank_policy == "budget" and not self.macs_reduction:
      raise ValueError("macs_reduction: rank_policy 'budget' needs a MACs cut"
                       " in (0, 1)")
    if len(given) > 1:
      raise ValueError(f"{given[1]}: give at most one of macs_reduction,"
                       f" params_reduction and ranks_file (also {given[0]})")

  @property
  def decided_in_training(self) -> bool:
    return self.rank_policy != "uniform"


  @property
  def kinds(self) -> tuple[str, ...]:
    """The layer kinds ranked (``layer_table.KINDS``)."""
    return ("conv", "transposed_conv") + (
        ("dense",) if self.project_dense else ())


def unranked(rule: RankRule, table) -> dict[str, str]:
  """{kernel: why} of the layers of ``rule``'s kinds (and of kinds with no
  factorized form) that stay unranked."""
  return {l.name: l.reason for l in table.skipped(rule.kinds)}


def _from_file(params: Any, path: str, table) -> Any:
  try:
    mapping = json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"ranks_file: cannot read {path} ({type(e).__name__})"
                     ) from None
  if not isinstance(mapping, dict):
    raise ValueError(f"ranks_file: {path} is not a JSON object of ranks")
  for name in mapping:
    layer = table.get(name)
    if layer is not None and not layer.rankable:
      raise ValueError(f"ranks_file: {name} cannot have a rank: {layer.reason}")
  try:
    return ranks_lib.ranks_from_dict(params, mapping)
  except ValueError as e:
    raise ValueError(f"ranks_file: {e}") from None


def select(rule: RankRule, model, variables: Any, input_shape, *,
           table=None) -> Any:
  """The rank pytree of ``model``'s params under ``rule``; for a policy
  decided in training, the full rank at every selected kernel until then
  (``Deferred``).

  Args:
    rule: the ``RankRule``.
    model: the dense model (its layers are traced for budgets and floors).
    variables: its variables (arrays or ``jax.ShapeDtypeStruct``s).
    input_shape: (H, W, C) of one example.
    table: the model's layer table, if already built.

  Raises:
    ValueError: one line naming the field, e.g. an unreachable budget.
  """
  params = variables["params"]
  table = table or tracing.table(tracing.eval_apply(model), variables,
                                 input_shape)
  chosen = table.selected(rule.kinds)
  include = ranks_lib.by_name(l.kernel for l in chosen)
  if rule.decided_in_training:
    return ranks_lib.uniform_ranks(params, 0.0, include=include)
  if rule.ranks_file:
    ranks = _from_file(params, rule.ranks_file, table)
  elif rule.macs_reduction or rule.params_reduction:
    ranks = accounting.ranks_for_budget(
        model, variables, input_shape,
        macs_reduction=rule.macs_reduction or None,
        params_reduction=rule.params_reduction or None, include=include)
  else:
    ranks = ranks_lib.uniform_ranks(params, rule.ratio, include=include)
  if rule.rank_floor or rule.first_rank_floor:
    first = {}
    if rule.first_rank_floor and chosen:
      first = dict(first=chosen[0].kernel, first_floor=rule.first_rank_floor)
    ranks = ranks_lib.floor_ranks(ranks, params, rule.rank_floor, **first)
  return ranks


@dataclasses.dataclass(frozen=True)
class Deferred:
  """A rank policy to apply in training: at update ``step`` (a projecting
  one), from the params as they are then.

  Attributes:
    rule: the ``RankRule`` (its policy, threshold or MACs cut).
    step: the update at whose start the ranks are decided.
    shapes: {"layer/kernel": its ``policies.LayerShape``}.
    dense_macs: the dense model's MACs per example.
    uniform: {"layer/kernel": rank} at the config's ratio, to compare.
  """

  rule: RankRule
  step: int
  shapes: dict
  dense_macs: int
  uniform: dict


def deferred(rule: RankRule, model, variables: Any, input_shape,
             step: int, *, table=None) -> Deferred:
  """What deciding at ``step`` needs; a budget that cannot be met raises
  (naming ``macs_reduction``) now, before any training."""
  table = table or tracing.table(tracing.eval_apply(model), variables,
                                 input_shape)
  full = select(rule, model, variables, input_shape, table=table)
  ranked = set(ranks_lib.ranks_to_dict(full))
  shapes = {}
  for c in table.layers:
    if c.name in ranked:
      m, n = projection.matrix_shape(c.kernel_shape)
      shapes[c.name] = policies.LayerShape(m, n, c.positions,
                                                c.out_positions)
  dense_macs = table.dense_macs
  if rule.rank_policy == "budget":  # rank 1 everywhere must fit
    policies.budget_ranks(
        {k: np.ones(min(s.m, s.n)) for k, s in shapes.items()}, shapes,
        policies.macs_budget(shapes, dense_macs, rule.macs_reduction))
  uniform = ranks_lib.ranks_to_dict(ranks_lib.uniform_ranks(
      variables["params"], rule.ratio,
      include=ranks_lib.by_name(l.kernel for l in table.selected(rule.kinds))))
  return Deferred(rule, step, shapes, dense_macs, uniform)


def decide(plan: Deferred, params: Any, ranks: Any, out_scales: Any = None
           ) -> tuple[Any, dict]:
  """(the rank tree ``plan``'s policy chooses for ``params``, the record of
  the decision: each layer's rank, full rank, energy kept and MACs share).

  ``ranks``: the placeholder tree (which kernels are ranked); ``out_scales``:
  the BatchNorm factors, so the spectra are those the projection sees.
  """
  spectra = policies.layer_spectra(params, ranks, out_scales)
  rule = plan.rule
  if rule.rank_policy == "energy":
    chosen = policies.energy_ranks(spectra, rule.rank_energy)
  else:
    chosen = policies.budget_ranks(
        spectra, plan.shapes, policies.macs_budget(
            plan.shapes, plan.dense_macs, rule.macs_reduction))
  macs = {k: plan.shapes[k].macs(r) for k, r in chosen.items()}
  compact = plan.dense_macs - sum(s.macs(None) for s in plan.shapes.values())
  compact += sum(macs.values())
  record = {
      "policy": rule.rank_policy, "step": plan.step,
      **({"rank_energy": rule.rank_energy} if rule.rank_policy == "energy"
         else {"macs_reduction_target": rule.macs_reduction}),
      "macs_reduction": 1 - compact / plan.dense_macs,
      "layers": {k: {"rank": r, "full_rank": len(spectra[k]),
                     "uniform_rank": plan.uniform.get(k),
                     "energy_kept": float(policies.kept_energy(
                         spectra[k])[r]),
                     "macs_share": macs[k] / compact}
                 for k, r in chosen.items()},
  }
  tree = ranks_lib.ranks_from_dict(params, chosen)
  return tree, record
