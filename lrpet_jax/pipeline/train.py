"""LRPET training loop: small pure functions ending in ``train_and_evaluate``.

``config.method`` names what is trained (``methods``: ``lrpet``, ``dense``
or ``compact``), with the same data, schedule and bookkeeping. The loop runs
up to ``config.steps_per_call`` steps per compiled call (``steps.Stepper``)
and asks the method which step projects, so the steady state has no host
round-trip: metrics stay on the device until a log, evaluation or checkpoint
boundary, where the loop also checks that loss and params are finite. Calls
end at projection steps, evaluation/checkpoint boundaries and epoch ends;
batches and augmentation are functions of (seed, step), so results do not
depend on ``steps_per_call``. The end of training is the method's list of
phases (``ending``).

State saved in ``WORKDIR/checkpoints/<step>/`` (``checkpointing``) is
everything needed to go on: params, batch_stats, the optimizer state
(projection counter included) and the step. Rerunning the same command
resumes from the newest readable checkpoint.
"""

import collections
import dataclasses
import json
import pathlib
import signal
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.data import hosts
from lrpet_jax.data import inputs
from lrpet_jax.pipeline import checkpointing
from lrpet_jax.pipeline import config_check
from lrpet_jax.pipeline import ending
from lrpet_jax.pipeline import methods
from lrpet_jax.pipeline import metrics
from lrpet_jax.pipeline import plots
from lrpet_jax.pipeline import records
from lrpet_jax.pipeline import setup
from lrpet_jax.pipeline import steps as steps_lib
from lrpet_jax.pipeline.errors import ConfigError, NonFiniteLoss
from lrpet_jax.pipeline.steps import TrainState


def restore_or_init(run: setup.Run, checkpoints, seed: int
                    ) -> tuple[setup.Run, TrainState]:
  """The newest readable checkpoint, else the method's starting point; a
  checkpoint taken after a rank policy decided brings its ranks."""
  method, shape = run.method, run.source.input_shape
  abstract = jax.eval_shape(
      lambda: setup.initial_state(method.model, method.tx, seed, shape))
  state, saved = checkpointing.restore_latest(checkpoints, abstract,
                                              run.identity)
  if state is None:
    try:
      variables = method.initial_variables()
    except ValueError as e:  # an init_from that cannot be read
      raise ConfigError(str(e)) from None
    state = setup.initial_state(method.model, method.tx, seed, shape,
                                variables)
  elif run.identity["ranks"] is None and saved["ranks"] is not None:
    run = setup.with_method(run, method.at_ranks(ranks_lib.Ranks(
        saved["ranks"]).tree(method.setting.dense_abstract["params"])))
  return run, jax.device_put(state, run.replicated)


def replan(run: setup.Run, tools, plan: methods.Replan,
           writer_dir: pathlib.Path
           ) -> tuple[setup.Run, "Tools"]:
  """The run and tools under the method a rank policy's decision returned:
  logged in one line, recorded in ``rank_decision.json``; the stepper
  compiles for the new ranks."""
  run, record = setup.with_method(run, plan.method), plan.record
  chosen = [l["rank"] for l in record["layers"].values()]
  # record["step"] is the update's index; the log counts steps done, as
  # "step N: projected" after the same update does.
  logging.info("step %d: ranks decided by the %s policy before its"
               " projection: %d layers, ranks %d-%d, %.1f%% fewer MACs"
               " (rank_decision.json)",
               record["step"] + 1, record["policy"], len(chosen), min(chosen),
               max(chosen), 100 * record["macs_reduction"])
  if hosts.is_writer():
    (writer_dir / "rank_decision.json").write_text(
        json.dumps(record, indent=1) + "\n")
  spectra = tools.spectra and metrics.SpectraLog(writer_dir,
                                                 plan.method.setting.ranks)
  return run, dataclasses.replace(
      tools, stepper=make_stepper(run, tools.stepper), spectra=spectra)


class StopRequested:
  """While entered: SIGTERM/SIGINT become a flag the loop checks between
  calls; on exit the previous handlers are back (a notebook or test process
  that calls ``train_and_evaluate`` keeps its own)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.signal = signum

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


@dataclasses.dataclass(frozen=True)
class Every:
  """The loop's boundaries, in steps."""

  log: int
  checkpoint: int
  steps_per_call: int


@dataclasses.dataclass(frozen=True)
class Tools:
  """What the loop works with besides the state."""

  stepper: steps_lib.Stepper
  evaluate: Any  # steps.make_eval_fn's
  checkpoints: Any  # the Orbax manager
  writer: metrics.MetricWriter
  progress: metrics.Progress
  learning_rate: optax.Schedule
  stop: StopRequested
  spectra: metrics.SpectraLog | None
  segments: metrics.Segments


def _next_multiple(step, every):
  return (step // every + 1) * every


def evaluations_left(step, total_steps, every) -> int:
  """Evaluation boundaries in (step, total_steps]: multiples of ``every``
  and the last step."""
  multiples = total_steps // every - step // every
  return multiples + (total_steps % every != 0 and step < total_steps)


def next_call(run: setup.Run, step: int, every: Every
              ) -> tuple[int, bool | None]:
  """(length, project) of the call starting at ``step``: a projecting step
  alone, else up to ``steps_per_call`` steps, ending before the next
  projection and at the next epoch end, checkpoint or the last step."""
  project = run.method.projects(step)
  if project:
    return 1, True
  end = min(run.total_steps,
            _next_multiple(step, run.source.steps_per_epoch),
            _next_multiple(step, every.checkpoint))
  projection = run.method.next_projection(step)
  if projection is not None:
    end = min(end, projection)
  return steps_lib.next_call_length(end - step, every.steps_per_call), project


# Compiled calls the host may dispatch before the device has finished the
# earliest of them (the device stays busy; a signal is acted on after them).
QUEUED = 2


def train_loop(run: setup.Run, tools: Tools, state: TrainState, every: Every,
               workdir: pathlib.Path
               ) -> tuple[setup.Run, Tools, TrainState, bool]:
  """Trains to ``run.total_steps``; (the run and tools, with the ranks a
  policy decided, the state, whether a signal stopped it)."""
  window = jax.device_put(steps_lib.empty_window(), run.replicated)
  step = int(state.step)
  next_log = _next_multiple(step, every.log)
  queued = collections.deque()
  while step < run.total_steps:
    plan = run.method.replan(step, state)
    if plan is not None:
      run, tools = replan(run, tools, plan, workdir)
    length, project = next_call(run, step, every)
    state, window, aux = tools.stepper(state, window, step, length, project)
    step += length
    # At most QUEUED calls ahead of the device: a signal stops the run after
    # those, not after every call dispatched up to the next log.
    queued.append(jnp.copy(state.step))
    if len(queued) > QUEUED:
      queued.popleft().block_until_ready()
    if project:
      log_projection(run.method, tools, step, state, aux)
    at_checkpoint = step % every.checkpoint == 0 or step == run.total_steps
    stopping = tools.stop.signal is not None
    if step >= next_log or at_checkpoint or stopping:
      window = read_window(
          window, step, tools, run.total_steps,
          log=step >= next_log or step == run.total_steps,
          evaluations_left=evaluations_left(step, run.total_steps,
                                            every.checkpoint))
      next_log = _next_multiple(step, every.log)
      ensure_finite_params(state, step, tools.checkpoints)
      checkpointing.check_saves(tools.checkpoints)
      tools.segments.update(step)
    if at_checkpoint:
      evaluate_and_save(run, tools, step, state, aux)
    if stopping:
      if not at_checkpoint:
        checkpointing.save(tools.checkpoints, state, run.identity)
      checkpointing.wait(tools.checkpoints)
      logging.warning("signal %d: saved step %d and stopped",
                      tools.stop.signal, step)
      return run, tools, state, True
  checkpointing.wait(tools.checkpoints)
  return run, tools, state, False


def log_projection(method, tools: Tools, step, state, aux) -> None:
  """After a projecting call: what the truncation kept, and the spectra."""
  energy = method.energy_kept(state.opt_state)
  unprojected = int(np.isnan(energy).sum())
  if unprojected:
    logging.warning("step %d: %d kernel(s) with non-finite entries were"
                    " left unprojected", step, unprojected)
  if unprojected < energy.size:
    logging.info("step %d: projected; energy kept by the truncation: mean"
                 " %.4f, min %.4f", step, np.nanmean(energy),
                 np.nanmin(energy))
    tools.writer.write(step, {
        "projection_energy_kept_mean": float(np.nanmean(energy)),
        "projection_energy_kept_min": float(np.nanmin(energy)),
        "projection_unprojected_kernels": unprojected})
  if tools.spectra is not None:
    tools.spectra.log(step, aux["pre_projection_params"], state.params)


def read_window(window, step, tools: Tools, total_steps, log,
                evaluations_left=0):
  """Reads the metric window (a device→host copy), stops the run if a loss
  was not finite, logs the window's means if ``log``; returns the window to
  go on with (emptied after a log)."""
  host = jax.device_get(window)
  if host["bad_step"] >= 0:
    checkpointing.wait(tools.checkpoints)
    raise NonFiniteLoss(
        f"loss is {float(host['bad_loss'])} at step {int(host['bad_step'])};"
        f" stopped, last good checkpoint: {tools.checkpoints.latest_step()}")
  if not log:
    return window
  n = max(int(host["steps"]), 1)
  rate, eta = tools.progress.report(step, evaluations_left)
  m = {"loss": float(host["loss"]) / n, "accuracy": float(host["accuracy"]) / n,
       "lr": float(tools.learning_rate(step - 1)), "images_per_second": rate}
  tools.writer.write(step, {f"train_{k}": v for k, v in m.items()})
  logging.info("step %d/%d  loss %.4f  acc %.3f  lr %.4g  %.0f img/s"
               "  ETA %s", step, total_steps, m["loss"], m["accuracy"],
               m["lr"], rate, "--" if eta is None else metrics.duration(eta))
  return jax.device_put(steps_lib.empty_window(), window["loss"].sharding)


def ensure_finite_params(state, step, checkpoints):
  """No checkpoint is ever written from non-finite params."""
  if not bool(steps_lib.all_finite(state.params)):
    checkpointing.wait(checkpoints)
    raise NonFiniteLoss(
        f"params are not finite at step {step}; stopped, last good"
        f" checkpoint: {checkpoints.latest_step()}")


def evaluation_scalars(evaluate, source, state, aux) -> dict[str, float]:
  """What the loop logs at an evaluation boundary.

  ``test_top1/5``: the current model (after this step's projection, if it
  projected; running BatchNorm statistics). ``test_top1/5_pre_projection``
  (projecting steps only): the same step before its truncation, what the
  authors' logs report each epoch. ``val_top1/5`` with a validation split.
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  scalars = {}
  for name, batches in (("test", source.eval_batches()),
                        ("val", source.val_batches())):
    if batches is not None:
      acc = evaluate(variables, batches)
      scalars.update({f"{name}_top1": acc["top1"], f"{name}_top5": acc["top5"]})
  if "pre_projection_params" in aux:
    acc = evaluate({**variables, "params": aux["pre_projection_params"]},
                   source.eval_batches())
    scalars.update(test_top1_pre_projection=acc["top1"],
                   test_top5_pre_projection=acc["top5"])
  return scalars


def evaluate_and_save(run: setup.Run, tools: Tools, step, state, aux) -> None:
  """An evaluation boundary: evaluate, log, and start the checkpoint save
  (with the validation accuracy its preservation policy reads)."""
  began = time.time()
  scalars = evaluation_scalars(tools.evaluate, run.source, state, aux)
  tools.progress.evaluated(time.time() - began)
  tools.writer.write(step, scalars)
  logging.info("step %d: %s", step, "  ".join(
      f"{k} {v:.4f}" for k, v in scalars.items()))
  checkpointing.save(
      tools.checkpoints, state, run.identity,
      {k.replace("_top1", "_accuracy"): v for k, v in scalars.items()
       if k in ("test_top1", "val_top1")})


def make_stepper(run: setup.Run, like: steps_lib.Stepper
                 ) -> steps_lib.Stepper:
  """A ``Stepper`` for ``run``'s method, with ``like``'s seed and inputs."""
  return steps_lib.Stepper(run.method, run.source, like.seed,
                           like.normalization)


def make_tools(config, run: setup.Run, workdir: pathlib.Path, checkpoints,
               first_step: int, stop: StopRequested, started: float) -> Tools:
  normalization = run.source.normalization
  method, setting = run.method, run.method.setting
  return Tools(
      stepper=steps_lib.Stepper(method, run.source, config.seed,
                                normalization),
      evaluate=steps_lib.make_eval_fn(method.model, normalization),
      checkpoints=checkpoints,
      writer=metrics.MetricWriter(workdir, resume_step=first_step,
                                  enabled=hosts.is_writer()),
      progress=metrics.Progress(
          first_step, run.total_steps, config.batch_size,
          final_steps=config.bn_recompute_batches,
          final_evaluations=ending.evaluations(method.FINAL_PHASES)),
      learning_rate=setting.learning_rate,
      stop=stop,
      spectra=(metrics.SpectraLog(workdir, setting.ranks)
               if config.log_spectra and hosts.is_writer() else None),
      segments=metrics.Segments(workdir, first_step, started,
                                enabled=hosts.is_writer()))


def finish(config, run: setup.Run, tools: Tools, workdir, state,
           phase: list[str]) -> dict | None:
  """The method's final phases (``ending``); returns the summary, or None
  if a signal stopped them at a phase boundary."""
  method = run.method
  trained_in_float32 = method.setting.dtype == jnp.float32
  record = ending.Ending(
      method=method, state=state, workdir=workdir, source=run.source,
      bn_recompute_batches=config.bn_recompute_batches,
      normalization=run.source.normalization,
      input_shape=tuple(run.source.input_shape),
      description={"model": config.model, "num_classes": config.num_classes,
                   "dataset": config.dataset,
                   "project_dense": config.project_dense,
                   "project_layers": config.project_layers,
                   "rank_policy": config.rank_policy,
                   "val_examples": config.val_examples},
      evaluate=tools.evaluate if trained_in_float32 else None)
  total = len(method.FINAL_PHASES)
  phases, finished = metrics.PhaseLog("final", total), []

  def done(line):
    phases.done(line)
    finished.append(line)
    phase[0] = f"the final phase (after final {len(finished)}/{total})"

  summary = ending.finish(record, done, lambda: tools.stop.signal is not None)
  if summary is not None:
    summary["steps_per_epoch"] = run.source.steps_per_epoch
  return summary


# An unexpected error leaves train_and_evaluate with a note that starts so,
# naming what the run was doing (``phase_of``).
PHASE_NOTE = "lrpet_jax was in: "


def phase_of(error: BaseException) -> str:
  """What the run was doing when ``error`` left ``train_and_evaluate``."""
  notes = [n for n in getattr(error, "__notes__", ())
           if n.startswith(PHASE_NOTE)]
  return notes[-1][len(PHASE_NOTE):] if notes else "setting up"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       command: list[str] | None = None) -> dict:
  """Trains, projects, recomputes BN, exports the compact model; returns the summary.

  A workdir whose run finished with the same config is left as it is: its
  summary is printed and returned; one another run is using is refused. A
  run stopped by SIGTERM/SIGINT saves at the end of the compiled call under
  way (in the final phase: at the end of the phase under way) and returns
  ``{"stopped_at_step": step, "signal": signum}`` (and ``"phase"``).
  ``command``: the command line to record. An unexpected error leaves with
  a note naming the phase it happened in (``phase_of``).
  """
  phase = ["setting up"]
  try:
    return _train_and_evaluate(config, workdir, command, phase)
  except Exception as e:
    e.add_note(PHASE_NOTE + phase[0])
    raise


def _train_and_evaluate(config, workdir, command, phase: list[str]) -> dict:
  """``train_and_evaluate``; ``phase[0]``: what it is doing now."""
  start = time.time()
  config_check.check(config)
  workdir = records.prepare(workdir)
  done = records.finished_summary(config, workdir)
  if done is not None:
    logging.info("%s: finished already (summary.json); nothing to do", workdir)
    return report_summary(workdir, done)
  records.check_not_busy(workdir)
  records.check_same_run(config, workdir)
  records.check_not_finished_otherwise(config, workdir)
  run = setup.make_run(config, inputs.recorded_normalization(workdir))
  with records.exclusive(workdir):
    done = records.finished_summary(config, workdir)
    if done is not None:  # another run finished it while this one loaded
      return report_summary(workdir, done)
    records.check_not_finished_otherwise(config, workdir)
    return _train(config, run, workdir, command, start, phase)


def _train(config, run: setup.Run, workdir: pathlib.Path, command,
           start, phase: list[str]) -> dict:
  """``train_and_evaluate`` once the workdir is this run's."""
  checkpoints = checkpointing.manager(workdir, config.keep_checkpoints,
                                      best_by_validation=config.val_examples > 0)
  run, state = restore_or_init(run, checkpoints, config.seed)
  first_step = int(state.step)
  if hosts.is_writer():  # only once the workdir is accepted
    records.record(config, workdir, command)
    records.record_input(workdir, run.source)
    setting = run.method.setting
    records.record_pairs(workdir, setting.pairing, setting.ranks,
                            setting.table, setting.unranked)
  logging.info("%s %s: %d steps (%d per epoch), starting at step %d on %d %s"
               " device(s)", run.method.NAME, config.model, run.total_steps,
               run.source.steps_per_epoch, first_step, jax.device_count(),
               jax.devices()[0].platform)
  every = Every(log=config.log_every_steps,
                checkpoint=(config.checkpoint_every_steps
                            or run.source.steps_per_epoch),
                steps_per_call=config.steps_per_call)
  with StopRequested() as stop:
    tools = make_tools(config, run, workdir, checkpoints, first_step, stop,
                       start)
    phase[0] = "training"
    run, tools, state, stopped = train_loop(run, tools, state, every,
                                            workdir)
    phase[0] = "the final phase"
    summary = None if stopped else finish(config, run, tools, workdir, state,
                                          phase)
    if summary is None:
      tools.writer.close()
      return {"stopped_at_step": int(state.step), "signal": stop.signal,
              **({} if stopped else {"phase": phase[0]})}
  tools.segments.update(run.total_steps)
  summary["wall_time_s"] = tools.segments.total()
  summary["segments"] = tools.segments.entries
  tools.writer.write(run.total_steps, {k: v for k, v in summary.items()
                                       if isinstance(v, float)})
  tools.writer.close()
  if hosts.is_writer():
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    plots.write(workdir)
  logging.info("done in %s: top-1 %.4f, %.1f%% fewer MACs",
               metrics.duration(summary["wall_time_s"]),
               summary["final_accuracy"], 100 * summary["macs_reduction"])
  return report_summary(workdir, summary)


def report_summary(workdir: pathlib.Path, summary: dict) -> dict:
  """Prints the summary and where everything is (one process); returns the
  summary."""
  if hosts.is_writer():
    print(json.dumps(summary, indent=1), flush=True)
    records.log_contents(workdir)
  return summary
