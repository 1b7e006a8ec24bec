"""A run's setup from its config, before any training: the model, its
ranks and BatchNorm pairs, the optimizer's settings (``make_setting``), the
data and the whole ``Run`` (``make_run``), step 0 (``initial_state``).

``train`` (the loop), ``experiment`` (the public experiment API) and
``saved_run`` (``load_run``) build on it.
"""

import dataclasses
import time

from absl import logging
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import optax

from lrpet_jax import models
from lrpet_jax.analysis import factorized
from lrpet_jax.analysis import tracing
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.core import transform
from lrpet_jax.data import inputs
from lrpet_jax.pipeline import checkpointing
from lrpet_jax.pipeline import config_check
from lrpet_jax.pipeline import methods
from lrpet_jax.pipeline.errors import ConfigError
from lrpet_jax.pipeline.steps import TrainState
from lrpet_jax.ranking import selection


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """``lr_schedule="step"``: lr ×decay at each epoch in
  ``lr_boundaries_epochs``. "cosine": linear warm-up from 0 over
  ``warmup_epochs``, then cosine decay to 0 at the run's last step."""
  if config.lr_schedule == "cosine":
    total = config.num_steps or config.num_epochs * steps_per_epoch
    warmup = min(config.warmup_epochs * steps_per_epoch, total)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, max(total, warmup + 1), 0.0)
  return optax.piecewise_constant_schedule(
      config.learning_rate,
      {int(e * steps_per_epoch): config.lr_decay
       for e in config.lr_boundaries_epochs})


def model_builder(config):
  """``build_model(ranks=None, dtype=None)``: the config's model (a zoo name
  or ``package.module:factory``) called as ``(x, train=...)``, and with
  ``ranks`` its compact model (``factorized.Factorized``)."""
  def build_model(ranks=None, dtype=None):
    dense = models.with_train_flag(
        models.build(config.model, config.num_classes, dtype),
        config.model_flag)
    return dense if ranks is None else factorized.Factorized(dense, ranks)
  return build_model


def decision_step(config, steps_per_epoch: int) -> int:
  """The update at whose start a rank policy decides: the first projecting
  one at or after the end of epoch ``rank_decision_epoch``."""
  every = config.project_every_steps or steps_per_epoch
  return transform.ProjectionSchedule(every).next_projection(
      config.rank_decision_epoch * steps_per_epoch - 1)


def make_setting(config, input_shape, steps_per_epoch) -> methods.Setting:
  """The method's models, ranks (``selection``; a policy decided in
  training: ``Deferred``), BatchNorm pairs (``tracing.bn_pairs``) and
  optimizer settings."""
  build_model = model_builder(config)
  dense = build_model()
  abstract = tracing.abstract_variables(dense, input_shape)
  rule = config_check.part(selection.RankRule, config)
  check_output(dense, abstract, input_shape, config.num_classes)
  table = tracing.table(tracing.eval_apply(dense), abstract, input_shape)
  ranks = selection.select(rule, dense, abstract, input_shape,
                                table=table)
  if config.method != "dense" and not jax.tree.leaves(ranks):
    raise ValueError(selection.none_rankable(table, rule.kinds))
  deferred = None
  if rule.decided_in_training:  # a method that can (``methods.check``)
    deferred = selection.deferred(
        rule, dense, abstract, input_shape,
        decision_step(config, steps_per_epoch), table=table)
  return methods.Setting(
      build_model=build_model, dtype=jnp.dtype(config.compute_dtype),
      dense_abstract=abstract, ranks=ranks,
      pairing=tracing.Pairing.of(table), table=table,
      unranked=selection.unranked(rule, table),
      learning_rate=learning_rate_schedule(config, steps_per_epoch),
      momentum=config.momentum, weight_decay=config.weight_decay,
      nesterov=config.nesterov,
      project_every=config.project_every_steps or steps_per_epoch,
      energy_transfer=config.energy_transfer,
      residual_scale=config.residual_scale,
      bn_rectification=config.bn_rectification, init_from=config.init_from,
      optimizer=config.optimizer, label_smoothing=config.label_smoothing,
      deferred=deferred)


def check_output(model, variables, input_shape, num_classes) -> None:
  """The model returns logits (batch, num_classes), or a one-line
  ValueError naming the shape it returns."""
  x = jax.ShapeDtypeStruct((2,) + tuple(input_shape), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variables, x)
  shape = getattr(out, "shape", None)
  if shape != (2, num_classes) or not jnp.issubdtype(out.dtype, jnp.floating):
    got = (f"shape {tuple(shape)}" if shape is not None
           else f"a {type(out).__name__}")
    raise ValueError(
        f"model: returns {got} for a batch of 2 images; it must return"
        f" logits of shape (batch, num_classes) = (2, {num_classes})")


def initial_state(model, tx, seed, input_shape, variables=None) -> TrainState:
  """Step 0: ``variables`` (e.g. ``methods.decomposed_variables``) or a
  random init."""
  if variables is None:
    variables = model.init(jax.random.key(seed),
                           jnp.zeros((1,) + tuple(input_shape)), train=False)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(variables["params"]))


@dataclasses.dataclass(frozen=True)
class Run:
  """One run's pieces, built before anything is written."""

  method: methods.Method
  source: inputs.TrainInput
  input_config: inputs.InputConfig
  identity: dict
  total_steps: int
  replicated: NamedSharding


def make_run(config, cached_normalization=None) -> Run:
  """Loads the data and builds the method; bad input is a ``ConfigError``.
  ``cached_normalization``: the mean and std a resumed run computed."""
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  input_config = config_check.part(inputs.InputConfig, config)
  started = time.time()
  logging.info("reading %s", config.dataset)
  try:
    source = inputs.load(input_config, NamedSharding(mesh, P("data")),
                         cached_normalization)
  except ValueError as e:  # data sets that cannot be found or prepared
    raise ConfigError(str(e)) from None
  logging.info("data ready in %.0fs: %s training examples; input mean %s,"
               " std %s (%s)", time.time() - started, f"{source.num_train:,}",
               _rounded(source.normalization.mean),
               _rounded(source.normalization.std), source.normalization_source)
  if source.num_classes != config.num_classes:
    raise ConfigError(f"num_classes: {config.num_classes} but the data set has"
                      f" {source.num_classes}")
  if source.steps_per_epoch < 1:
    raise ConfigError(f"batch_size: {config.batch_size} exceeds the"
                      f" {source.num_train} training examples")
  try:
    setting = make_setting(config, source.input_shape, source.steps_per_epoch)
    method = methods.method_for(config.method, setting)
  except ValueError as e:  # e.g. an unreachable macs_reduction
    raise ConfigError(str(e)) from None
  total_steps = config.num_steps or config.num_epochs * source.steps_per_epoch
  late = [e for e in config.lr_boundaries_epochs
          if e * source.steps_per_epoch > total_steps]
  if late:
    raise ConfigError(
        f"lr_boundaries_epochs: {late[0]} is after the end of the run"
        f" ({total_steps} steps = {total_steps / source.steps_per_epoch:g}"
        " epochs)")
  if setting.deferred is not None and setting.deferred.step >= total_steps:
    raise ConfigError(
        f"rank_decision_epoch: {config.rank_decision_epoch} decides at step"
        f" {setting.deferred.step + 1}, after the run's {total_steps} steps")
  return Run(
      method=method, source=source, input_config=input_config,
      identity=checkpointing.run_identity(
          config.model, config.num_classes, method.NAME,
          None if setting.deferred else setting.ranks),
      total_steps=total_steps, replicated=replicated)


def _rounded(values) -> str:
  return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def with_method(run: Run, method: methods.Method) -> Run:
  """``run`` once its rank policy has decided: ``method``'s ranks from now
  on."""
  return dataclasses.replace(run, method=method, identity={
      **run.identity,
      "ranks": ranks_lib.as_json(method.setting.ranks)})
