"""The one rank selection of training and of the export command.

A ``RankRule`` names how a run's ranks are chosen: from a ranks file, a MACs
or params budget (``accounting.ranks_for_budget``), or else the uniform
ratio (``ranks.uniform_ranks``); then raised to the floors
(``ranks.floor_ranks``). ``select`` applies it to a model's variables.
"""

import dataclasses
import json
import pathlib
from typing import Any

from lrpet_jax import accounting
from lrpet_jax import ranks as ranks_lib


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
  """

  ratio: float
  macs_reduction: float = 0.0
  params_reduction: float = 0.0
  ranks_file: str | None = None
  project_dense: bool = False
  rank_floor: int = 0
  first_rank_floor: int = 0

  def __post_init__(self):
    given = [name for name in ("macs_reduction", "params_reduction",
                               "ranks_file") if getattr(self, name)]
    if len(given) > 1:
      raise ValueError(f"{given[1]}: give at most one of macs_reduction,"
                       f" params_reduction and ranks_file (also {given[0]})")


def _from_file(params: Any, path: str) -> Any:
  try:
    mapping = json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"ranks_file: cannot read {path} ({type(e).__name__})"
                     ) from None
  if not isinstance(mapping, dict):
    raise ValueError(f"ranks_file: {path} is not a JSON object of ranks")
  try:
    return ranks_lib.ranks_from_dict(params, mapping)
  except ValueError as e:
    raise ValueError(f"ranks_file: {e}") from None


def select(rule: RankRule, model, variables: Any, input_shape) -> Any:
  """The rank pytree of ``model``'s params under ``rule``.

  Args:
    rule: the ``RankRule``.
    model: the dense model (its layers are traced for budgets and floors).
    variables: its variables (arrays or ``jax.ShapeDtypeStruct``s).
    input_shape: (H, W, C) of one example.

  Raises:
    ValueError: one line naming the field, e.g. an unreachable budget.
  """
  params = variables["params"]
  include = (ranks_lib.is_kernel if rule.project_dense
             else ranks_lib.is_conv_kernel)
  if rule.ranks_file:
    ranks = _from_file(params, rule.ranks_file)
  elif rule.macs_reduction or rule.params_reduction:
    ranks = accounting.ranks_for_budget(
        model, variables, input_shape,
        macs_reduction=rule.macs_reduction or None,
        params_reduction=rule.params_reduction or None, include=include)
  else:
    ranks = ranks_lib.uniform_ranks(params, rule.ratio, include=include)
  if rule.rank_floor or rule.first_rank_floor:
    first = {}
    if rule.first_rank_floor:
      stem = accounting.layer_costs(model, variables, input_shape)[0]
      first = dict(first=stem.path + ("kernel",),
                   first_floor=rule.first_rank_floor)
    ranks = ranks_lib.floor_ranks(ranks, params, rule.rank_floor, **first)
  return ranks
