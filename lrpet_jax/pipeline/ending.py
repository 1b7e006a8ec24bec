"""The end of training: phases, each a small function with one job.

A method lists its phases in order (``methods.Method.FINAL_PHASES``);
``finish`` runs them on one ``Ending`` record, logging each as it ends
(``final 2/5: …``), and returns the summary. How many test-set evaluations
a method's phases run is data too (``Phase.evaluations``), which the
progress estimate reads.

  FINAL_PROJECTION    the last projection (LRPET): every ranked kernel to
                      its rank, as during training
  PRECISE_BN          BatchNorm statistics recomputed from training batches
                      (``bn.recompute_batch_stats``), in float32
  DENSE_MODEL         the dense model evaluated and saved to
                      ``WORKDIR/dense_final`` (an Orbax variables checkpoint)
  COMPACT_EXPORT      the compact model, its report and the serving artifact
                      (``compact.write``)
  COMPACT_EVALUATION  the compact model evaluated

``final_accuracy`` in the summary is the model the method deploys: the
compact one when there is one, else the dense one.
"""

from collections.abc import Callable
import dataclasses
import pathlib
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from lrpet_jax.analysis import accounting
from lrpet_jax.core import bn
from lrpet_jax.core import projection
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.deploy import compact
from lrpet_jax.deploy import variables_file
from lrpet_jax.pipeline import records
from lrpet_jax.pipeline import steps as steps_lib


@dataclasses.dataclass
class Ending:
  """What the end of training works on; each phase fills in its part.

  ``method`` is the ``methods.Method`` that trained ``state``; ``evaluate``
  the loop's compiled evaluation, reused for the model it trained when that
  one computed in float32 (every final evaluation is in float32).
  """

  method: Any
  state: steps_lib.TrainState
  workdir: pathlib.Path
  source: Any  # inputs.TrainInput
  bn_recompute_batches: int
  normalization: Any
  input_shape: tuple[int, ...]
  description: dict  # model, dataset, ...: copied into the summary
  evaluate: Callable | None = None
  params: Any = None
  batch_stats: Any = None
  dense_variables: Any = None
  compact_variables: Any = None
  dense_accuracy: dict | None = None
  compact_accuracy: dict | None = None
  report: dict | None = None
  _evaluators: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.params, self.batch_stats = self.state.params, self.state.batch_stats

  def model(self, compact_model: bool):
    """The float32 dense or compact model."""
    s = self.method.setting
    return s.build_model(ranks=s.ranks if compact_model else None)

  def evaluator(self, compact_model: bool):
    """One compiled float32 evaluation per model."""
    if compact_model not in self._evaluators:
      reuse = (compact_model == self.method.TRAINS_COMPACT
               and self.evaluate is not None)
      self._evaluators[compact_model] = (
          self.evaluate if reuse else steps_lib.make_eval_fn(
              self.model(compact_model), self.normalization))
    return self._evaluators[compact_model]


@dataclasses.dataclass(frozen=True)
class Phase:
  run: Callable[[Ending], str]  # does its part; returns what it did
  evaluations: int = 0  # test-set evaluations it runs (for the ETA)


def _final_projection(e: Ending) -> str:
  s = e.method.setting
  out_scales = (bn.bn_out_scales(e.params, e.batch_stats, s.pairing.pairs)
                if s.bn_rectification else None)
  # One compiled call: op by op, the SVDs of a ResNet-20 took 3x as long.
  project = jax.jit(lambda params, scales: projection.project_params(
      params, s.ranks, out_scales=scales, **s.projection_kwargs()))
  e.params = project(e.params, out_scales)
  return (f"projected {len(ranks_lib.Ranks.of_tree(s.ranks))} kernels to"
          " their ranks")


def _precise_bn(e: Ending) -> str:
  params = jax.device_get(e.params)
  if not jax.tree.leaves(e.batch_stats):
    trained = {"params": params, "batch_stats": {}}
    if e.method.TRAINS_COMPACT:
      e.compact_variables = trained
    else:
      e.dense_variables = trained
    return "no BatchNorm statistics to recompute (the model has none)"
  model = e.model(e.method.TRAINS_COMPACT)
  # Training mode, as training saw the statistics; a model with dropout
  # draws its masks from one fixed key, so the result is reproducible.
  apply_fn = lambda v, x: steps_lib.train_apply(
      model, v, x, jax.random.key(0), steps_lib.axis_names(e.method))
  batch_stats = bn.recompute_batch_stats(
      apply_fn, {"params": params, "batch_stats": e.batch_stats},
      e.source.bn_batches(e.bn_recompute_batches))
  trained = jax.device_get({"params": params, "batch_stats": batch_stats})
  if e.method.TRAINS_COMPACT:
    e.compact_variables = trained
  else:
    e.dense_variables = trained
  return ("BatchNorm statistics recomputed from"
          f" {e.bn_recompute_batches} training batches")


def _dense_model(e: Ending) -> str:
  e.dense_accuracy = e.evaluator(False)(e.dense_variables,
                                        e.source.eval_batches())
  target = e.workdir / "dense_final"
  variables_file.save(target, e.dense_variables)
  return (f"dense model: test top-1 {e.dense_accuracy['top1']:.4f}; saved to"
          f" {target}")


def _compact_export(e: Ending) -> str:
  s = e.method.setting
  kept = e.method.energy_kept(e.state.opt_state)
  energy = (None if kept is None else
            dict(zip(ranks_lib.Ranks.of_tree(s.ranks), kept.tolist())))
  e.report, e.compact_variables = compact.write(
      e.workdir, e.model(False), s.ranks, s.pairing,
      input_shape=e.input_shape,
      description={k: e.description[k] for k in ("model", "num_classes")},
      dense_variables=e.dense_variables, compact_variables=e.compact_variables,
      energy_kept=energy, overwrite=True, normalization=e.normalization,
      check_images=_check_images(e.source))
  folded = "BatchNorm folded, " if s.pairing.folds else ""
  said = (f"compact model exported to {e.workdir / 'compact'}, and"
          f" {folded}as a jax.export artifact to {e.workdir / 'serving'}")
  check = e.report.get("export_check")  # the writing process checks
  if check is None:
    return said
  worst = max(check.get(k, 0.0) for k in ("compact", "folded", "serving"))
  return (f"{said}; checked on {check['images']} test images against the"
          f" trained model: largest difference {worst:.1e}")


def _check_images(source, count: int = 32):
  """The first ``count`` test images (raw pixels), for the export check."""
  images, _ = next(iter(source.eval_batches()))
  return np.asarray(multihost_utils.process_allgather(images, tiled=True)
                    )[:count]


def _compact_evaluation(e: Ending) -> str:
  e.compact_accuracy = e.evaluator(True)(e.compact_variables,
                                         e.source.eval_batches())
  return f"compact model: test top-1 {e.compact_accuracy['top1']:.4f}"


FINAL_PROJECTION = Phase(_final_projection)
PRECISE_BN = Phase(_precise_bn)
DENSE_MODEL = Phase(_dense_model, evaluations=1)
COMPACT_EXPORT = Phase(_compact_export)
COMPACT_EVALUATION = Phase(_compact_evaluation, evaluations=1)


def evaluations(phases) -> int:
  return sum(p.evaluations for p in phases)


def finish(e: Ending, log, stopped=lambda: False) -> dict | None:
  """Runs the method's phases in order (``log(line)`` after each part: a
  ``metrics.PhaseLog``'s ``done``); returns the summary, or None when
  ``stopped()`` says so after a phase (a signal: the rerun does the final
  phases again from the saved last step)."""
  for phase in e.method.FINAL_PHASES:
    log(phase.run(e))
    if stopped():
      return None
  return summary(e)


def _top(accuracy, k):
  return None if accuracy is None else accuracy[k]


def summary(e: Ending) -> dict:
  """``summary.json``'s fields but ``steps_per_epoch`` and ``wall_time_s``."""
  dense_cost = accounting.cost(
      e.model(False),
      e.dense_variables or e.method.setting.dense_abstract, e.input_shape)
  out = {"model": e.description["model"], "method": e.method.NAME,
         "dataset": e.description["dataset"],
         "input_shape": list(e.input_shape), "steps": int(e.state.step),
         "dense_macs": dense_cost["macs"], "dense_params": dense_cost["params"]}
  final_cost, final_accuracy = dense_cost, e.dense_accuracy
  final = (False, e.dense_variables)
  if e.report is not None:
    final_cost, final_accuracy = e.report["compact"], e.compact_accuracy
    final = (True, e.compact_variables)
    out.update(compact_macs=final_cost["macs"],
               compact_params=final_cost["params"])
  out.update(
      dense_accuracy=_top(e.dense_accuracy, "top1"),
      compact_accuracy=_top(e.compact_accuracy, "top1"),
      dense_top5=_top(e.dense_accuracy, "top5"),
      compact_top5=_top(e.compact_accuracy, "top5"))
  val_batches = e.source.val_batches()
  out.update(
      project_dense=e.description["project_dense"],
      project_layers=e.description["project_layers"],
      rank_policy=e.description["rank_policy"],
      val_examples=e.description["val_examples"],
      final_val_accuracy=None if val_batches is None else e.evaluator(
          final[0])(final[1], val_batches)["top1"],
      final_accuracy=final_accuracy["top1"], final_top5=final_accuracy["top5"],
      final_macs=final_cost["macs"], final_params=final_cost["params"],
      macs_reduction=1 - final_cost["macs"] / dense_cost["macs"],
      params_reduction=1 - final_cost["params"] / dense_cost["params"],
      device=f"{jax.device_count()}x {jax.devices()[0].device_kind}",
      input=records.input_record(e.source))
  if e.report is not None and "export_check" in e.report:
    out["export_check"] = e.report["export_check"]
  return out

