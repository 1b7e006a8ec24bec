"""Training methods: what is trained, by which optimizer, how training ends.

``config.method`` is looked up once (``method_for``); everything that differs
between methods is asked of the object:

- ``model``: the network trained, in the computation dtype;
- ``tx`` (its ``init`` makes the optimizer state) and ``update`` (one update
  inside the compiled step, with the params before the truncation on
  projecting steps);
- ``projects(step)`` and ``next_projection(step)``: the projection schedule
  (None for methods that never project);
- ``replan(step, state)``: a ``Replan`` (the method with the ranks a rank
  policy decided from the state now, and the decision's record) at the step
  a policy decides, else None; the driver swaps in the new method;
- ``energy_kept(opt_state)``: what the last projection kept, per kernel;
- ``initial_variables()``: a starting point other than a random init;
- ``FINAL_PHASES``: the parts of the end of training, in order (``ending``);
- ``FIELDS``: the config fields only this method reads.

A new method is one class and an entry in ``REGISTRY``.

  lrpet    the dense model under the paper's optimizer (``transform.lrpet``):
           PyTorch-style SGD, then the low-rank projection once every
           ``project_every`` steps
  dense    the dense model, the same SGD, no projection (the baseline)
  compact  the compact model at the run's ranks, the same SGD; a random init
           or, with ``init_from``, a dense variables checkpoint (such as
           WORKDIR/dense_final) truncated by SVD to those ranks:
           decompose-and-retrain
"""

from collections.abc import Callable, Mapping
import dataclasses
import pathlib
from typing import Any, ClassVar

import flax.linen as nn
import jax
import numpy as np
import optax

from lrpet_jax.analysis import tracing
from lrpet_jax.core import bn
from lrpet_jax.core import projection
from lrpet_jax.core import transform
from lrpet_jax.deploy import compact
from lrpet_jax.deploy import variables_file
from lrpet_jax.pipeline import ending
from lrpet_jax.ranking import selection


@dataclasses.dataclass(frozen=True)
class Setting:
  """What a method is built from: one run's models, ranks and optimizer.

  Attributes:
    build_model: ``build_model(ranks=None, dtype=None)``: the dense model, or
      the compact one at ``ranks``, computing in ``dtype`` (None: float32).
    dtype: the computation dtype training uses.
    dense_abstract: the dense model's variables as ``ShapeDtypeStruct``s.
    ranks: the run's rank tree of the dense params.
    pairing: which BatchNorm follows which layer (``tracing.Pairing``).
    learning_rate: the schedule.
    momentum, weight_decay, nesterov: ``transform.pytorch_sgd``'s
      (``optimizer="sgd"``); with ``optimizer="adamw"``, ``optax.adamw``
      (PyTorch's AdamW: betas 0.9, 0.999, eps 1e-8, ``weight_decay`` on
      every parameter) and ``momentum``/``nesterov`` unused.
    label_smoothing: s in [0, 1): the loss is the cross-entropy with targets
      (1 − s)·one-hot + s/classes (timm's LabelSmoothingCrossEntropy).
    project_every: steps between projections.
    energy_transfer, residual_scale, bn_rectification: the projection's.
    init_from: a dense variables checkpoint to start the compact model from.
    deferred: a rank policy still to apply (``selection.Deferred``):
      ``ranks`` are full until its step, and nothing projects before it.
    table: the dense model's layer table (``layer_table``).
    unranked: {kernel: why} of the layers left unranked that the rule's
      kinds would otherwise select.
  """

  build_model: Callable[..., nn.Module]
  dtype: Any
  dense_abstract: Any
  ranks: Any
  pairing: tracing.Pairing
  learning_rate: optax.Schedule
  momentum: float
  weight_decay: float
  nesterov: bool
  project_every: int
  energy_transfer: bool
  residual_scale: float
  bn_rectification: bool
  init_from: str | None = None
  optimizer: str = "sgd"
  label_smoothing: float = 0.0
  deferred: selection.Deferred | None = None
  table: Any = None
  unranked: dict = dataclasses.field(default_factory=dict)

  def projection_kwargs(self) -> dict:
    return dict(energy_transfer=self.energy_transfer,
                residual_scale=self.residual_scale)


@dataclasses.dataclass(frozen=True)
class Replan:
  """A rank policy's decision: the method at the decided ranks, and the
  record of the decision (``selection.decide``'s, for rank_decision.json)."""

  method: "Method"
  record: dict


class Method:
  """The interface, and what every method shares: plain SGD (or AdamW),
  random init."""

  NAME: ClassVar[str]
  FIELDS: ClassVar[tuple[str, ...]] = ()
  TRAINS_COMPACT: ClassVar[bool] = False
  # Trains dense and projects, so a rank policy can decide from its spectra.
  DECIDES_RANKS_IN_TRAINING: ClassVar[bool] = False
  FINAL_PHASES: ClassVar[tuple[ending.Phase, ...]]

  def __init__(self, setting: Setting):
    self.setting = setting
    self.model = setting.build_model(
        ranks=setting.ranks if self.TRAINS_COMPACT else None,
        dtype=setting.dtype)
    self.tx = self._optimizer()

  def _base_optimizer(self) -> optax.GradientTransformation:
    """SGD as PyTorch's, or AdamW (``Setting.optimizer``)."""
    s = self.setting
    if s.optimizer == "adamw":
      return optax.adamw(s.learning_rate, b1=0.9, b2=0.999, eps=1e-8,
                         weight_decay=s.weight_decay)
    return transform.pytorch_sgd(s.learning_rate, momentum=s.momentum,
                                 weight_decay=s.weight_decay,
                                 nesterov=s.nesterov)

  def _optimizer(self) -> optax.GradientTransformation:
    return self._base_optimizer()

  def update(self, grads, opt_state, params, batch_stats, project):
    """(updates, new opt_state, params before the truncation or None)."""
    del batch_stats, project
    updates, opt_state = self.tx.update(grads, opt_state, params)
    return updates, opt_state, None

  def projects(self, step: int) -> bool | None:
    """Whether update ``step`` projects; None: the method never projects."""
    del step
    return None

  def next_projection(self, step: int) -> int | None:
    """The first projecting update at or after ``step``, or None."""
    del step
    return None

  def replan(self, step: int, state) -> Replan | None:
    """The ranks a rank policy decides before update ``step`` from
    ``state`` (a ``TrainState``), or None: nothing to decide now."""
    del step, state
    return None

  def energy_kept(self, opt_state) -> np.ndarray | None:
    """(L,) fraction of Σs² each ranked kernel's last truncation kept."""
    del opt_state
    return None

  def initial_variables(self) -> Any:
    """Variables to start from, or None for a random init."""
    return None

  def at_ranks(self, ranks) -> "Method":
    """This method at ``ranks``, decided (no rank policy left to apply)."""
    return type(self)(dataclasses.replace(self.setting, ranks=ranks,
                                          deferred=None))


class Lrpet(Method):
  NAME = "lrpet"
  FIELDS = ("log_spectra",)
  DECIDES_RANKS_IN_TRAINING = True
  FINAL_PHASES = (ending.FINAL_PROJECTION, ending.PRECISE_BN,
                  ending.DENSE_MODEL, ending.COMPACT_EXPORT,
                  ending.COMPACT_EVALUATION)

  def _optimizer(self):
    """``transform.lrpet``'s chain, its two members kept for ``update``."""
    s = self.setting
    self.schedule = transform.ProjectionSchedule(s.project_every)
    self._members = (self._base_optimizer(), transform.low_rank_projection(
        s.ranks, every=s.project_every, **s.projection_kwargs()))
    return optax.chain(*self._members)

  def update(self, grads, opt_state, params, batch_stats, project):
    """``optax.chain``'s update written out, so that the projection's input,
    params + the SGD update, is the model before the truncation."""
    (sgd, low_rank), (sgd_state, projection_state) = self._members, opt_state
    updates, sgd_state = sgd.update(grads, sgd_state, params)
    extra = {}
    if project is not False and self.setting.bn_rectification:
      extra["out_scales"] = bn.bn_out_scales(params, batch_stats,
                                             self.setting.pairing.pairs)
    if project is not None:  # else the projection's counter decides
      extra["project"] = project
    projected, projection_state = low_rank.update(
        updates, projection_state, params, **extra)
    pre_projection = optax.apply_updates(params, updates) if project else None
    return projected, (sgd_state, projection_state), pre_projection

  def projects(self, step):
    deferred = self.setting.deferred
    if deferred is not None and step < deferred.step:
      return False  # dense until the ranks are decided
    return bool(self.schedule.projects(step))

  def next_projection(self, step):
    deferred = self.setting.deferred
    if deferred is not None and step < deferred.step:
      return deferred.step
    return self.schedule.next_projection(step)

  def replan(self, step, state):
    """At the deferred policy's step: its ranks from the params now,
    BN-rectified as the projection sees them."""
    s = self.setting
    if s.deferred is None or step != s.deferred.step:
      return None
    out_scales = (bn.bn_out_scales(state.params, state.batch_stats,
                                   s.pairing.pairs)
                  if s.bn_rectification else None)
    ranks, record = selection.decide(s.deferred, state.params, s.ranks,
                                     out_scales)
    return Replan(method=self.at_ranks(ranks), record=record)

  def energy_kept(self, opt_state):
    return np.asarray(optax.tree_utils.tree_get(opt_state, "energy_kept"))


class Dense(Method):
  NAME = "dense"
  FINAL_PHASES = (ending.PRECISE_BN, ending.DENSE_MODEL)


class Compact(Method):
  NAME = "compact"
  FIELDS = ("init_from",)
  TRAINS_COMPACT = True
  FINAL_PHASES = (ending.PRECISE_BN, ending.COMPACT_EXPORT,
                  ending.COMPACT_EVALUATION)

  def initial_variables(self):
    s = self.setting
    if not s.init_from:
      return None
    return decomposed_variables(s.init_from, s.dense_abstract, s.ranks)


REGISTRY: dict[str, type[Method]] = {
    m.NAME: m for m in (Lrpet, Dense, Compact)}


def check(name: str, config: Mapping[str, Any]) -> None:
  """``name`` is a method, no field that only other methods read is set, and
  a rank policy is set only for a method that can decide in training.

  Raises:
    ValueError: one line naming the field.
  """
  if name not in REGISTRY:
    raise ValueError(f"method: unknown {name!r}; valid:"
                     f" {', '.join(REGISTRY)}")
  for other in REGISTRY.values():
    for field in other.FIELDS:
      if field not in REGISTRY[name].FIELDS and config.get(field):
        raise ValueError(f"{field}: only for method {other.NAME!r}, not"
                         f" {name!r}")
  policy = config.get("rank_policy", "uniform")
  in_training = getattr(selection.REGISTRY.get(policy), "DECIDED_IN_TRAINING",
                        False)
  if in_training and not REGISTRY[name].DECIDES_RANKS_IN_TRAINING:
    able = ", ".join(repr(m.NAME) for m in REGISTRY.values()
                     if m.DECIDES_RANKS_IN_TRAINING)
    raise ValueError(f"rank_policy: {policy!r} decides the ranks during"
                     f" training, which method {name!r} cannot (only {able})")


def method_for(name: str, setting: Setting) -> Method:
  return REGISTRY[name](setting)


def decomposed_variables(path, dense_abstract, ranks):
  """Dense ``variables`` saved at ``path`` (``WORKDIR/dense_final``), each
  ranked kernel truncated by SVD to its rank (no energy transfer), factorized
  into the compact model's variables.

  Raises:
    ValueError: naming ``init_from``, for a checkpoint that cannot be read or
      holds another model's variables.
  """
  path = pathlib.Path(path).absolute()
  try:
    dense = variables_file.restore(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"init_from: cannot read a checkpoint at {path}"
                     f" ({type(e).__name__})") from None
  want = jax.tree.map(lambda x: x.shape, dense_abstract)
  got = jax.tree.map(lambda x: x.shape, dense) if isinstance(dense, dict) else None
  if got != want:
    raise ValueError(f"init_from: {path} does not hold variables of this"
                     " config's dense model")
  params = jax.jit(lambda p: projection.project_params(
      p, ranks, energy_transfer=False))(dense["params"])
  return compact.factorize(
      {"params": params, "batch_stats": dense.get("batch_stats", {})}, ranks)
