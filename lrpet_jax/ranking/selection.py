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
import re
from typing import Any, ClassVar

import numpy as np

from lrpet_jax.analysis import accounting
from lrpet_jax.analysis import layer_table
from lrpet_jax.analysis import tracing
from lrpet_jax.core import projection
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.ranking import policies


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
    project_layers: "" (the default: convolutions, with ``project_dense``
      dense layers too), or the layers to rank by their role in the model
      (``layer_table.ROLES``, comma-separated: "conv", "mlp", "attention",
      "classifier", "embedding"), or "re:REGEX", the kernel paths
      ("block0/feed_forward/fc1/kernel") it matches in full.
    rank_floor: > 0: every rank at least this (at most the full rank).
    first_rank_floor: > 0: the first layer's rank at least this.
    rank_policy: "uniform" (all of the above; the paper), or a choice from
      the spectrum during training (``policies``): "energy" (each
      layer's smallest rank keeping ``rank_energy`` of its energy) or
      "budget" (the most energy within ``budget_macs_reduction``).
    rank_energy: the energy policy's threshold, in (0, 1].
    budget_macs_reduction: the budget policy's MACs cut, in (0, 1).
  """

  ratio: float
  macs_reduction: float = 0.0
  params_reduction: float = 0.0
  ranks_file: str | None = None
  project_dense: bool = False
  project_layers: str = ""
  rank_floor: int = 0
  first_rank_floor: int = 0
  rank_policy: str = "uniform"
  rank_energy: float = 0.9
  budget_macs_reduction: float = 0.0

  def __post_init__(self):
    policy_for(self)  # one line naming the field, if the fields disagree
    layer_filter(self.project_layers)
    if self.project_layers and self.project_dense:
      raise ValueError("project_layers: give it or project_dense, not both"
                       " (project_layers=conv,classifier is project_dense on"
                       " a CNN)")

  def chosen(self, table) -> list:
    """The table's rankable layers this rule ranks, in call order; a
    ``project_layers`` that selects none is a one-line ValueError."""
    if not self.project_layers:
      return table.selected(self.kinds)
    wanted = layer_filter(self.project_layers)
    out = [l for l in table.layers if l.rankable and wanted(l)]
    if not out:
      roles = sorted({l.role for l in table.layers if l.rankable})
      raise ValueError(
          f"project_layers: {self.project_layers!r} selects no layer that"
          f" can be ranked (this model's rankable layers are:"
          f" {', '.join(roles) or 'none'})")
    return out

  def unranked(self, table) -> dict[str, str]:
    """{kernel: why} of the layers this rule would rank (and of kinds with
    no factorized form) that stay unranked."""
    if not self.project_layers:
      return {l.name: l.reason for l in table.skipped(self.kinds)}
    wanted = layer_filter(self.project_layers)
    return {l.name: l.reason for l in table.layers
            if not l.rankable and (wanted(l) or l.kind in (
                "grouped_conv", "other"))}

  @property
  def policy(self) -> "RankPolicy":
    return policy_for(self)

  @property
  def decided_in_training(self) -> bool:
    return self.policy.DECIDED_IN_TRAINING

  @property
  def kinds(self) -> tuple[str, ...]:
    """The layer kinds ranked (``layer_table.KINDS``)."""
    return ("conv", "transposed_conv") + (
        ("dense",) if self.project_dense else ())


def none_rankable(table, kinds) -> str:
  """The one-line refusal of a model none of whose layers of ``kinds`` can
  be ranked, naming them and why."""
  skipped = [l for l in table.layers if l.kind in kinds or (
      l.reason and not l.rankable and l.kind in ("grouped_conv", "other"))]
  why = "; ".join(f"{l.name}: {l.reason}" for l in skipped[:3])
  more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
  return (f"model: none of its {'/'.join(kinds)} layers can be ranked"
          f"{' - ' + why + more if why else ' (it has none)'}")


def layer_filter(spec: str):
  """``project_layers`` as a test of a table row (``RankRule``); a one-line
  ValueError naming the field for an unknown role or a bad regex."""
  if not isinstance(spec, str):
    raise ValueError(f"project_layers: must be a string, got {spec!r}")
  if spec.startswith("re:"):
    try:
      pattern = re.compile(spec[3:])
    except re.error as e:
      raise ValueError(f"project_layers: {spec!r} is not a regular"
                       f" expression ({e})") from None
    return lambda layer: pattern.fullmatch(layer.name) is not None
  roles = {r.strip() for r in spec.split(",") if r.strip()}
  unknown = sorted(roles - set(layer_table.ROLES) - {""})
  if unknown or (spec and not roles):
    raise ValueError(
        f"project_layers: unknown role {(unknown or [spec])[0]!r}; give roles"
        f" from {', '.join(r for r in layer_table.ROLES if r != 'other')}"
        " (comma-separated) or re:REGEX on kernel paths")
  return lambda layer: layer.role in roles


def unranked(rule: RankRule, table) -> dict[str, str]:
  """{kernel: why} of the layers ``rule`` would rank (and of kinds with no
  factorized form) that stay unranked."""
  return rule.unranked(table)


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
    return ranks_lib.Ranks(mapping).tree(params)
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
  chosen = rule.chosen(table)
  include = ranks_lib.by_name(l.kernel for l in chosen)
  if rule.decided_in_training:
    return ranks_lib.uniform_ranks(params, 0.0, include=include)
  ranks = rule.policy.choose(model, variables, input_shape, table, include)
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
  ranked = set(ranks_lib.Ranks.of_tree(full))
  shapes = {}
  for c in table.layers:
    if c.name in ranked:
      m, n = projection.matrix_shape(c.kernel_shape)
      shapes[c.name] = policies.LayerShape(m, n, c.positions,
                                                c.out_positions)
  dense_macs = table.dense_macs
  rule.policy.check_plan(shapes, dense_macs)
  uniform = ranks_lib.as_json(ranks_lib.uniform_ranks(
      variables["params"], rule.ratio,
      include=ranks_lib.by_name(l.kernel for l in rule.chosen(table))))
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
  chosen = rule.policy.decide(spectra, plan.shapes, plan.dense_macs)
  macs = {k: plan.shapes[k].macs(r) for k, r in chosen.items()}
  compact = plan.dense_macs - sum(s.macs(None) for s in plan.shapes.values())
  compact += sum(macs.values())
  record = {
      "policy": rule.rank_policy, "step": plan.step,
      **{f: getattr(rule, f) for f in rule.policy.FIELDS},
      "macs_reduction": 1 - compact / plan.dense_macs,
      "layers": {k: {"rank": r, "full_rank": len(spectra[k]),
                     "uniform_rank": plan.uniform.get(k),
                     "energy_kept": float(policies.kept_energy(
                         spectra[k])[r]),
                     "macs_share": macs[k] / compact}
                 for k, r in chosen.items()},
  }
  tree = ranks_lib.Ranks(chosen).tree(params)
  return tree, record


class RankPolicy:
  """A way to choose ranks: ``NAME``; the ``RankRule`` fields it reads
  (``FIELDS``), of which ``OWN_FIELDS`` only it reads (0 or None when unset:
  set with another policy, one line names them); whether it decides during
  training, from the spectra then (``decide``), or up front (``choose``).
  A new policy is one class and an entry in ``REGISTRY``; ``policy_for``
  picks the one a rule names."""

  NAME: ClassVar[str]
  FIELDS: ClassVar[tuple[str, ...]] = ()
  OWN_FIELDS: ClassVar[tuple[str, ...]] = ()
  DECIDED_IN_TRAINING: ClassVar[bool] = False

  def __init__(self, rule: RankRule):
    self.rule = rule

  def check(self) -> None:
    """Raises a one-line ValueError naming a field out of range."""

  def choose(self, model, variables, input_shape, table, include) -> Any:
    """The rank tree of the selected kernels (``include``), up front."""
    raise NotImplementedError(self.NAME)

  def check_plan(self, shapes: dict, dense_macs: int) -> None:
    """Before training: whether deciding can succeed (in-training only)."""
    del shapes, dense_macs

  def decide(self, spectra: dict, shapes: dict, dense_macs: int) -> dict:
    """{kernel: rank} from each layer's singular values (in training)."""
    raise NotImplementedError(self.NAME)


class UniformRatio(RankPolicy):
  """r = max(1, int(n − n·ratio)) at every selected kernel (the paper)."""

  NAME = "uniform"
  FIELDS = ("ratio",)

  def choose(self, model, variables, input_shape, table, include):
    return ranks_lib.uniform_ranks(variables["params"], self.rule.ratio,
                                   include=include)


class RanksFile(RankPolicy):
  """The ranks of a JSON file {"layer/kernel": rank} (a run's ranks.json)."""

  NAME = "ranks_file"
  FIELDS = OWN_FIELDS = ("ranks_file",)

  def choose(self, model, variables, input_shape, table, include):
    return _from_file(variables["params"], self.rule.ranks_file, table)


class UniformBudget(RankPolicy):
  """The uniform ratio whose compact model best meets a MACs or a params
  cut (a bisection, ``accounting.ranks_for_budget``)."""

  NAME = "uniform_budget"
  FIELDS = OWN_FIELDS = ("macs_reduction", "params_reduction")

  def check(self):
    if self.rule.macs_reduction and self.rule.params_reduction:
      raise _more_than_one(["macs_reduction", "params_reduction"])

  def choose(self, model, variables, input_shape, table, include):
    return accounting.ranks_for_budget(
        model, variables, input_shape,
        macs_reduction=self.rule.macs_reduction or None,
        params_reduction=self.rule.params_reduction or None, include=include)


class Energy(RankPolicy):
  """In training: each layer's smallest rank keeping ``rank_energy`` of its
  (BN-rectified) energy."""

  NAME = "energy"
  FIELDS = ("rank_energy",)
  DECIDED_IN_TRAINING = True

  def decide(self, spectra, shapes, dense_macs):
    return policies.energy_ranks(spectra, self.rule.rank_energy)


class GreedyBudget(RankPolicy):
  """In training: the ranks keeping the most energy, summed over layers,
  within a MACs cut (``policies.budget_ranks``)."""

  NAME = "budget"
  FIELDS = OWN_FIELDS = ("budget_macs_reduction",)
  DECIDED_IN_TRAINING = True

  def check(self):
    if not 0 < self.rule.budget_macs_reduction < 1:
      raise ValueError("budget_macs_reduction: rank_policy 'budget' needs a"
                       " MACs cut in (0, 1), got"
                       f" {self.rule.budget_macs_reduction!r}")

  def _budget(self, shapes, dense_macs):
    return policies.macs_budget(shapes, dense_macs,
                                self.rule.budget_macs_reduction)

  def check_plan(self, shapes, dense_macs):
    # Rank 1 everywhere must fit (else one line naming the field, now).
    policies.budget_ranks({k: np.ones(min(s.m, s.n))
                           for k, s in shapes.items()},
                          shapes, self._budget(shapes, dense_macs))

  def decide(self, spectra, shapes, dense_macs):
    return policies.budget_ranks(spectra, shapes,
                                 self._budget(shapes, dense_macs))


REGISTRY: dict[str, type[RankPolicy]] = {
    p.NAME: p for p in (UniformRatio, UniformBudget, RanksFile, Energy,
                        GreedyBudget)}
# What ``rank_policy`` may name; "uniform" stands for the up-front policies,
# told apart by the field set (ranks_file, macs/params_reduction, or none).
UP_FRONT = ("uniform",)


def _more_than_one(given: list[str]) -> ValueError:
  """Two up-front policies' fields set at once: one line naming the second."""
  fields = [f for p in REGISTRY.values() if not p.DECIDED_IN_TRAINING
            for f in p.OWN_FIELDS]
  return ValueError(f"{given[1]}: give at most one of {', '.join(fields[:-1])}"
                    f" and {fields[-1]} (also {given[0]})")


def policy_for(rule: RankRule) -> RankPolicy:
  """The policy ``rule`` names: ``rank_policy`` an in-training policy, or
  "uniform" and the up-front policy whose field is set; a field that only
  another policy reads, when set, is a one-line ValueError naming it."""
  name = rule.rank_policy
  in_training = [n for n, p in REGISTRY.items() if p.DECIDED_IN_TRAINING]
  if name not in (*UP_FRONT, *in_training):
    raise ValueError(f"rank_policy: unknown {name!r}; valid:"
                     f" {', '.join((*UP_FRONT, *in_training))}")
  given = [f for p in REGISTRY.values() for f in p.OWN_FIELDS
           if getattr(rule, f)]
  if name in UP_FRONT:
    named = {p.NAME for p in REGISTRY.values() if not p.DECIDED_IN_TRAINING
             for f in given if f in p.OWN_FIELDS}
    if len(named) > 1:
      raise _more_than_one(given)
    cls = REGISTRY[named.pop()] if named else UniformRatio
  else:
    cls = REGISTRY[name]
  for field in given:
    if field not in cls.OWN_FIELDS:
      hint = (" (the budget policy's cut is budget_macs_reduction)"
              if field == "macs_reduction" and cls is GreedyBudget else "")
      raise ValueError(f"{field}: not with rank_policy {name!r}{hint}")
  policy = cls(rule)
  policy.check()
  return policy
