"""LRPET training loop: small pure functions ending in ``train_and_evaluate``.

``config.method`` picks what is trained, with the same data, schedule and
bookkeeping: ``lrpet`` (the dense model under ``transform.lrpet``), ``dense``
(the dense model, plain SGD, no projection) or ``compact`` (the factorized
model at the run's ranks, plain SGD; random init, or ``init_from`` a dense
``variables`` checkpoint truncated by SVD to those ranks: decompose-and-retrain).

The loop runs ``config.steps_per_call`` steps per compiled call
(``steps.Stepper``) and decides on the host which step projects, so the
steady state has no host round-trip: metrics stay on the device until a log,
evaluation or checkpoint boundary, where the loop also checks that loss and
params are finite. Calls end at projection steps, evaluation/checkpoint
boundaries and epoch ends; batches and augmentation are functions of
(seed, step), so results do not depend on ``steps_per_call``.

State saved in ``WORKDIR/checkpoints/<step>/`` (``checkpointing``) is
everything needed to go on: params, batch_stats, the optimizer state
(projection counter included) and the step. Rerunning the same command
resumes from the newest readable checkpoint.
"""

import json
import numbers
import pathlib
import signal
import time

from absl import logging
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lrpet_jax import accounting
from lrpet_jax import bn
from lrpet_jax import checkpointing
from lrpet_jax import compact
from lrpet_jax import data as data_lib
from lrpet_jax import inputs
from lrpet_jax import models
from lrpet_jax import plots
from lrpet_jax import projection
from lrpet_jax import ranks as ranks_lib
from lrpet_jax import run_log
from lrpet_jax import steps as steps_lib
from lrpet_jax import transform
from lrpet_jax.errors import ConfigError, NonFiniteLoss
from lrpet_jax.steps import TrainState

METHODS = ("lrpet", "dense", "compact")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _reals(n=None, low=None):
  def ok(v):
    return (isinstance(v, (tuple, list)) and (n is None or len(v) == n)
            and all(_is_real(x) and (low is None or x > low) for x in v))
  return ok


# field: (test, what it must be). Checked wherever the field is present.
_FIELDS = {
    "num_classes": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "ratio": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "macs_reduction": (lambda v: _is_real(v) and 0 <= v < 1,
                       "a number in [0, 1) (0: use ratio)"),
    "project_every_steps": (lambda v: _is_int(v) and v >= 0,
                            "an int >= 0 (0: once per epoch)"),
    "residual_scale": (lambda v: _is_real(v) and 0 <= v <= 1,
                       "a number in [0, 1]"),
    "bn_recompute_batches": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "train_subset": (lambda v: _is_int(v) and v >= 0, "an int >= 0 (0: all)"),
    "test_subset": (lambda v: _is_int(v) and v >= 0, "an int >= 0 (0: all)"),
    "val_examples": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "rank_floor": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "first_rank_floor": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "mean": (_reals(3), "three numbers"),
    "std": (_reals(3, low=0), "three numbers > 0"),
    "num_epochs": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "num_steps": (lambda v: _is_int(v) and v >= 0,
                  "an int >= 0 (0: num_epochs)"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "learning_rate": (lambda v: _is_real(v) and v > 0, "a number > 0"),
    "lr_boundaries_epochs": (lambda v: _reals()(v) and all(e >= 0 for e in v),
                             "a tuple of epochs >= 0"),
    "lr_decay": (lambda v: _is_real(v) and v > 0, "a number > 0"),
    "momentum": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: _is_real(v) and v >= 0, "a number >= 0"),
    "steps_per_call": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "eval_batch_size": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "log_every_steps": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "checkpoint_every_steps": (lambda v: _is_int(v) and v >= 0,
                               "an int >= 0 (0: once per epoch)"),
    "keep_checkpoints": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    **{name: (lambda v: isinstance(v, bool), "True or False") for name in (
        "energy_transfer", "bn_rectification", "log_spectra", "nesterov",
        "project_dense", "distributed")},
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Static checks, before anything is loaded or written: every field of
  ``_FIELDS`` at its type and range, then the rules between fields."""
  for field, (ok, what) in _FIELDS.items():
    if field in config and not ok(config[field]):
      raise ConfigError(f"{field}: must be {what}, got {config[field]!r}")
  if config.model not in models.NAMES:
    raise ConfigError(f"model: unknown {config.model!r}; valid:"
                      f" {', '.join(models.NAMES)}")
  try:
    data_lib.check_dataset_name(config.dataset)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  method = config.get("method", "lrpet")
  if method not in METHODS:
    raise ConfigError(f"method: unknown {method!r}; valid: {', '.join(METHODS)}")
  init_from = config.get("init_from")
  if init_from and method != "compact":
    raise ConfigError(f"init_from: only for method 'compact', not {method!r}")
  if init_from and not pathlib.Path(init_from).is_dir():
    raise ConfigError(f"init_from: no checkpoint directory at {init_from}")
  if config.get("val_examples") and config.dataset in data_lib.STREAMED:
    raise ConfigError(f"val_examples: only for in-memory data sets, not"
                      f" {config.dataset!r}")
  if config.get("log_spectra") and method != "lrpet":
    raise ConfigError(f"log_spectra: only for method 'lrpet', not {method!r}")
  n = jax.device_count()
  if config.batch_size % n:
    raise ConfigError(f"batch_size: {config.batch_size} is not divisible by"
                      f" the {n} devices")
  if not config.get("num_steps") and config.num_epochs < 1:
    raise ConfigError(f"num_epochs: must be >= 1 (or set num_steps), got"
                      f" {config.num_epochs}")
  if config.get("compute_dtype", "float32") not in COMPUTE_DTYPES:
    raise ConfigError(f"compute_dtype: {config.compute_dtype!r}; valid:"
                      f" {', '.join(COMPUTE_DTYPES)}")


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """lr ×decay at each epoch in ``lr_boundaries_epochs``."""
  return optax.piecewise_constant_schedule(
      config.learning_rate,
      {int(e * steps_per_epoch): config.lr_decay
       for e in config.lr_boundaries_epochs})


def select_ranks(config, model, abstract_variables, input_shape):
  """The run's rank pytree: convolutions only unless ``project_dense``, from
  ``ratio`` or ``macs_reduction``, then the floors (``ranks.floor_ranks``)."""
  params = abstract_variables["params"]
  include = (ranks_lib.is_kernel if config.get("project_dense")
             else ranks_lib.is_conv_kernel)
  if config.get("macs_reduction"):
    ranks = accounting.ranks_for_budget(
        model, abstract_variables, input_shape,
        macs_reduction=config.macs_reduction, include=include)
  else:
    ranks = ranks_lib.uniform_ranks(params, config.ratio, include=include)
  if config.get("rank_floor") or config.get("first_rank_floor"):
    first = {}
    if config.get("first_rank_floor"):
      stem = accounting.layer_costs(model, abstract_variables, input_shape)[0]
      first = dict(first=stem.path + ("kernel",),
                   first_floor=config.first_rank_floor)
    ranks = ranks_lib.floor_ranks(ranks, params, config.rank_floor, **first)
  return ranks


def make_optimizer(config, ranks, steps_per_epoch):
  """``transform.lrpet`` for method lrpet, else the same SGD without projection."""
  if config.get("method", "lrpet") != "lrpet":
    return transform.pytorch_sgd(
        learning_rate_schedule(config, steps_per_epoch),
        momentum=config.momentum, weight_decay=config.weight_decay,
        nesterov=config.nesterov)
  return transform.lrpet(
      learning_rate_schedule(config, steps_per_epoch), ranks,
      every=config.project_every_steps or steps_per_epoch,
      momentum=config.momentum, weight_decay=config.weight_decay,
      nesterov=config.nesterov, energy_transfer=config.energy_transfer,
      residual_scale=config.residual_scale)


def initial_state(model, tx, seed, input_shape, variables=None) -> TrainState:
  """Step 0: ``variables`` (e.g. ``decomposed_variables``) or a random init."""
  if variables is None:
    variables = model.init(jax.random.key(seed),
                           jnp.zeros((1,) + input_shape), train=False)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=tx.init(variables["params"]))


def decomposed_variables(path, dense_abstract, ranks):
  """Dense ``variables`` saved at ``path`` (``WORKDIR/dense_final``), each
  ranked kernel truncated by SVD to its rank (no energy transfer), factorized
  into the compact model's variables."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path).absolute()
  try:
    dense = ocp.StandardCheckpointer().restore(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"init_from: cannot read a checkpoint at {path}"
                      f" ({type(e).__name__})") from None
  want = jax.tree.map(lambda x: x.shape, dense_abstract)
  got = jax.tree.map(lambda x: x.shape, dense) if isinstance(dense, dict) else None
  if got != want:
    raise ConfigError(f"init_from: {path} does not hold variables of this"
                      " config's dense model")
  params = projection.project_params(dense["params"], ranks,
                                     energy_transfer=False)
  return compact.factorize(
      {"params": params, "batch_stats": dense["batch_stats"]}, ranks)


class StopRequested:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.signal = None
    for s in (signal.SIGTERM, signal.SIGINT):
      signal.signal(s, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal = signum


def final_projection(state, config, ranks, pairs):
  out_scales = (bn.bn_out_scales(state.params, state.batch_stats, pairs)
                if config.bn_rectification else None)
  return projection.project_params(
      state.params, ranks, out_scales=out_scales,
      energy_transfer=config.energy_transfer,
      residual_scale=config.residual_scale)


def finished_summary(config, workdir: pathlib.Path) -> dict | None:
  """The summary of a run that finished in ``workdir`` with this very config
  (``config.json``), or None: rerunning such a workdir changes nothing."""
  summary, saved = workdir / "summary.json", workdir / "config.json"
  if not (summary.is_file() and saved.is_file()):
    return None
  if json.loads(saved.read_text()) != json.loads(config.to_json()):
    return None  # another config: resume, extend or refuse as usual
  return json.loads(summary.read_text())


_RUN_FIELDS = {"model": None, "num_classes": None, "method": "lrpet"}


def check_same_run(config, workdir: pathlib.Path) -> None:
  """Before any data is loaded: a workdir holding checkpoints of another
  model, method or number of classes (by its ``config.json``) is refused.
  The ranks are compared later, against the checkpoint itself."""
  saved = workdir / "config.json"
  steps = workdir / "checkpoints"
  if not saved.is_file() or not (steps.is_dir() and any(steps.iterdir())):
    return
  before = json.loads(saved.read_text())
  for field, default in _RUN_FIELDS.items():
    if before.get(field, default) != config.get(field, default):
      raise ConfigError(
          f"workdir: holds checkpoints of {field} {before.get(field, default)!r}"
          f" (its config.json) but this config has {config.get(field, default)!r};"
          " use a new workdir")


def log_workdir(workdir: pathlib.Path) -> None:
  """The last line of a run: where everything is."""
  entries = sorted(p.name + ("/" if p.is_dir() else "")
                   for p in workdir.iterdir())
  logging.info("everything is in %s: %s (view the curves with: tensorboard"
               " --logdir %s)", workdir, " ".join(entries),
               workdir / "tensorboard")


def evaluations_left(step, total_steps, every) -> int:
  """Evaluation boundaries in (step, total_steps]: multiples of ``every``
  and the last step."""
  multiples = total_steps // every - step // every
  return multiples + (total_steps % every != 0 and step < total_steps)


def record_run(config, workdir: pathlib.Path, command) -> None:
  """``config.json`` (the resolved config of the latest start) and, appended,
  the command line of every start in ``commands.txt``."""
  (workdir / "config.json").write_text(config.to_json(indent=1) + "\n")
  if command:
    with open(workdir / "commands.txt", "a", encoding="utf-8") as f:
      f.write(" ".join(command) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       command: list[str] | None = None) -> dict:
  """Trains, projects, recomputes BN, exports the compact model; returns the summary.

  A workdir whose run finished with the same config is left as it is: its
  summary is printed and returned. ``command``: the command line to record.
  """
  start = time.time()
  check_config(config)
  # Absolute: Orbax refuses relative checkpoint paths.
  workdir = pathlib.Path(workdir).absolute()
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"workdir: {workdir} exists and is not a directory")
  done = finished_summary(config, workdir)
  if done is not None:
    logging.info("%s: finished already (summary.json); nothing to do",
                 workdir)
    print(json.dumps(done, indent=1), flush=True)
    log_workdir(workdir)
    return done
  check_same_run(config, workdir)
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  try:
    source = inputs.make_input(config, replicated, batch_sharding)
  except ValueError as e:  # data sets that cannot be found or prepared
    raise ConfigError(str(e)) from None
  if source.num_classes != config.num_classes:
    raise ConfigError(f"num_classes: {config.num_classes} but the data set has"
                      f" {source.num_classes}")
  input_shape = tuple(source.input_shape)
  method = config.get("method", "lrpet")
  dtype = COMPUTE_DTYPES[config.get("compute_dtype", "float32")]
  dense_model = models.create(config.model, config.num_classes)
  abstract = jax.eval_shape(lambda: dense_model.init(
      jax.random.key(0), jnp.zeros((1,) + input_shape), train=False))
  try:
    ranks = select_ranks(config, dense_model, abstract, input_shape)
  except ValueError as e:  # e.g. an unreachable macs_reduction
    raise ConfigError(str(e)) from None
  if method == "compact":
    model = models.create(config.model, config.num_classes, ranks, dtype=dtype)
    pairs = None
  else:
    model = models.create(config.model, config.num_classes, dtype=dtype)
    pairs = models.bn_pairs(abstract["params"])
  if method == "dense":
    pairs = None
  steps_per_epoch = source.steps_per_epoch
  if steps_per_epoch < 1:
    raise ConfigError(f"batch_size: {config.batch_size} exceeds the"
                      f" {source.num_train} training examples")
  total_steps = config.num_steps or config.num_epochs * steps_per_epoch
  tx = make_optimizer(config, ranks, steps_per_epoch)
  identity = checkpointing.run_identity(config, ranks)

  workdir.mkdir(parents=True, exist_ok=True)
  checkpoints = checkpointing.manager(workdir, config)
  abstract_state = jax.eval_shape(
      lambda: initial_state(model, tx, config.seed, input_shape))
  state = checkpointing.restore_latest(checkpoints, abstract_state, identity)
  if state is None:
    variables = (decomposed_variables(config.init_from, abstract, ranks)
                 if config.get("init_from") else None)
    state = initial_state(model, tx, config.seed, input_shape, variables)
  state = jax.device_put(state, replicated)
  first_step = int(state.step)
  record_run(config, workdir, command)  # only once the workdir is accepted
  logging.info("%s %s: %d steps (%d per epoch), starting at step %d on %d %s"
               " device(s)", method, config.model, total_steps, steps_per_epoch,
               first_step, jax.device_count(), jax.devices()[0].platform)

  stepper = steps_lib.Stepper(model, tx, config, pairs, source)
  evaluate = steps_lib.make_eval_fn(model, config)
  writer = run_log.MetricWriter(workdir, resume_step=first_step)
  progress = run_log.Progress(
      first_step, total_steps, config.batch_size,
      final_steps=config.bn_recompute_batches,
      final_evaluations=1 if method == "dense" else 2)
  stop = StopRequested()
  schedule = learning_rate_schedule(config, steps_per_epoch)
  project_every = config.project_every_steps or steps_per_epoch
  checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
  spectra = (run_log.SpectraLog(workdir, ranks) if config.get("log_spectra")
             else None)

  def next_multiple(step, every):
    return (step // every + 1) * every

  window = jax.device_put(steps_lib.empty_window(), replicated)
  step, next_log = first_step, next_multiple(first_step, config.log_every_steps)
  while step < total_steps:
    projecting = method == "lrpet" and (step + 1) % project_every == 0
    length = 1
    if not projecting:
      end = min(total_steps, source.epoch_end(step),
                next_multiple(step, checkpoint_every))
      if method == "lrpet":  # stop before the next projecting step
        end = min(end, next_multiple(step, project_every) - 1)
      length = steps_lib.next_call_length(
          end - step, config.get("steps_per_call", 1))
    state, window, aux = stepper(state, window, step, length,
                                 projecting if method == "lrpet" else None)
    step += length
    if projecting:
      energy = np.asarray(optax.tree.get(state.opt_state, "energy_kept"))
      unprojected = int(np.isnan(energy).sum())
      if unprojected:
        logging.warning("step %d: %d kernel(s) with non-finite entries were"
                        " left unprojected", step, unprojected)
      if unprojected < energy.size:
        logging.info("step %d: projected; energy kept by the truncation: mean"
                     " %.4f, min %.4f", step, np.nanmean(energy),
                     np.nanmin(energy))
        writer.write(step, {
            "projection_energy_kept_mean": float(np.nanmean(energy)),
            "projection_energy_kept_min": float(np.nanmin(energy)),
            "projection_unprojected_kernels": unprojected})
      if spectra is not None:
        spectra.log(step, aux["pre_projection_params"], state.params)
    at_checkpoint = step % checkpoint_every == 0 or step == total_steps
    if step >= next_log or at_checkpoint or stop.signal is not None:
      window = read_window(
          window, step, checkpoints, writer, progress, schedule, total_steps,
          log=step >= next_log or step == total_steps,
          evaluations_left=evaluations_left(step, total_steps,
                                            checkpoint_every))
      next_log = next_multiple(step, config.log_every_steps)
      ensure_finite_params(state, step, checkpoints)
    if at_checkpoint:
      began = time.time()
      scalars = evaluation_scalars(evaluate, source, state, aux)
      progress.evaluated(time.time() - began)
      writer.write(step, scalars)
      logging.info("step %d: %s", step, "  ".join(
          f"{k} {v:.4f}" for k, v in scalars.items()))
      checkpointing.save(
          checkpoints, state, identity,
          {k.replace("_top1", "_accuracy"): v for k, v in scalars.items()
           if k in ("test_top1", "val_top1")})
    if stop.signal is not None:
      if not at_checkpoint:
        checkpointing.save(checkpoints, state, identity)
      checkpoints.wait_until_finished()
      logging.warning("signal %d: saved step %d and stopped", stop.signal,
                      step)
      writer.close()
      return {"stopped_at_step": step}
  checkpoints.wait_until_finished()

  summary = finish(config, workdir, state, ranks, pairs, source,
                   input_shape, abstract,
                   evaluate=evaluate if dtype == jnp.float32 else None)
  summary["steps_per_epoch"] = steps_per_epoch
  summary["wall_time_s"] = time.time() - start
  writer.write(total_steps, {k: v for k, v in summary.items()
                             if isinstance(v, float)})
  writer.close()
  (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
  plots.write(workdir)
  logging.info("done in %s: top-1 %.4f, %.1f%% fewer MACs",
               run_log.duration(summary["wall_time_s"]),
               summary["final_accuracy"], 100 * summary["macs_reduction"])
  print(json.dumps(summary, indent=1), flush=True)
  log_workdir(workdir)
  return summary


def read_window(window, step, checkpoints, writer, progress, schedule,
                total_steps, log, evaluations_left=0):
  """Reads the metric window (a device→host copy), stops the run if a loss
  was not finite, logs the window's means if ``log``; returns the window to
  go on with (emptied after a log)."""
  host = jax.device_get(window)
  if host["bad_step"] >= 0:
    checkpoints.wait_until_finished()
    raise NonFiniteLoss(
        f"loss is {float(host['bad_loss'])} at step {int(host['bad_step'])};"
        f" stopped, last good checkpoint: {checkpoints.latest_step()}")
  if not log:
    return window
  n = max(int(host["steps"]), 1)
  rate, eta = progress.report(step, evaluations_left)
  m = {"loss": float(host["loss"]) / n, "accuracy": float(host["accuracy"]) / n,
       "lr": float(schedule(step - 1)), "images_per_second": rate}
  writer.write(step, {f"train_{k}": v for k, v in m.items()})
  logging.info("step %d/%d  loss %.4f  acc %.3f  lr %.4g  %.0f img/s"
               "  ETA %s", step, total_steps, m["loss"], m["accuracy"],
               m["lr"], rate, "--" if eta is None else run_log.duration(eta))
  return jax.device_put(steps_lib.empty_window(), window["loss"].sharding)


def ensure_finite_params(state, step, checkpoints):
  """No checkpoint is ever written from non-finite params."""
  if not bool(steps_lib.all_finite(state.params)):
    checkpoints.wait_until_finished()
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


def finish(config, workdir, state, ranks, pairs, source, input_shape,
           dense_abstract, evaluate=None) -> dict:
  """Final projection (lrpet), precise BN, export and evaluation.

  Writes ``dense_final/`` (methods lrpet and dense) as an Orbax ``variables``
  checkpoint and, for lrpet and compact, the compact model with its report
  (``compact.export``: ``compact/``, ``ranks.json``, ``compact_report.*``,
  and ``serving/``, the folded compact model as a ``jax.export`` artifact).
  The report's per-layer energy is what LRPET's last projection during
  training kept. ``final_accuracy`` is the model the method deploys: the
  compact one, or the dense one for method dense. ``evaluate``: the loop's
  evaluation function, reused (not compiled again) for the model it trained
  when that one is float32. Each part is logged as it ends.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  method = config.get("method", "lrpet")
  phase = run_log.PhaseLog(
      "final", {"lrpet": 5, "dense": 2, "compact": 3}[method])
  params = state.params
  if method == "lrpet":
    params = final_projection(state, config, ranks, pairs)
    phase.done(f"projected {len(ranks_lib.ranks_to_dict(ranks))} kernels to"
               " their ranks")
  params = jax.device_get(params)
  dense_model = models.create(config.model, config.num_classes)
  compact_model = models.create(config.model, config.num_classes, ranks=ranks)
  # Precise BN and every final evaluation in float32, whatever trained.
  model = compact_model if method == "compact" else dense_model
  evaluators = {}

  def evaluator(m):
    """One compiled evaluation per model; the loop's for the model it trained."""
    if id(m) not in evaluators:
      evaluators[id(m)] = (evaluate if m is model and evaluate is not None
                           else steps_lib.make_eval_fn(m, config))
    return evaluators[id(m)]

  apply_fn = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  batch_stats = bn.recompute_batch_stats(
      apply_fn, {"params": params, "batch_stats": state.batch_stats},
      source.bn_batches(config.bn_recompute_batches))
  trained = jax.device_get({"params": params, "batch_stats": batch_stats})
  phase.done("BatchNorm statistics recomputed from"
             f" {config.bn_recompute_batches} training batches")
  dense_vars = compact_vars = dense_acc = compact_acc = None
  if method == "compact":
    compact_vars = trained
  else:
    dense_vars = trained
    dense_acc = evaluator(dense_model)(dense_vars, source.eval_batches())
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((workdir / "dense_final").absolute(), dense_vars,
                      force=True)
    checkpointer.wait_until_finished()
    phase.done(f"dense model: test top-1 {dense_acc['top1']:.4f}; saved to"
               f" {workdir / 'dense_final'}")
  dense_cost = accounting.cost(dense_model, dense_vars or dense_abstract,
                               input_shape)
  summary = {
      "model": config.model, "method": method, "dataset": config.dataset,
      "steps": int(state.step),
      "dense_macs": dense_cost["macs"], "dense_params": dense_cost["params"],
  }
  if method == "dense":
    final_acc, final_cost = dense_acc, dense_cost
  else:
    energy = None
    if method == "lrpet":
      kept = np.asarray(optax.tree.get(state.opt_state, "energy_kept"))
      energy = dict(zip(ranks_lib.ranks_to_dict(ranks), kept.tolist()))
    report, compact_vars = compact.export(
        workdir, config.model, ranks, num_classes=config.num_classes,
        input_shape=input_shape, dense_variables=dense_vars,
        compact_variables=compact_vars, energy_kept=energy, overwrite=True,
        normalization=(tuple(config.mean), tuple(config.std)))
    phase.done(f"compact model exported to {workdir / 'compact'}, and BatchNorm"
               f" folded as a jax.export artifact to {workdir / 'serving'}")
    compact_acc = evaluator(compact_model)(compact_vars, source.eval_batches())
    phase.done(f"compact model: test top-1 {compact_acc['top1']:.4f}")
    final_acc, final_cost = compact_acc, report["compact"]
    summary.update(compact_macs=final_cost["macs"],
                   compact_params=final_cost["params"])
  summary.update(
      dense_accuracy=dense_acc and dense_acc["top1"],
      compact_accuracy=compact_acc and compact_acc["top1"],
      dense_top5=dense_acc and dense_acc["top5"],
      compact_top5=compact_acc and compact_acc["top5"])
  final_model, final_vars = ((dense_model, dense_vars) if compact_vars is None
                              else (compact_model, compact_vars))
  val_batches = source.val_batches()
  summary.update(
      project_dense=bool(config.get("project_dense")),
      val_examples=config.get("val_examples", 0),
      final_val_accuracy=None if val_batches is None else evaluator(
          final_model)(final_vars, val_batches)["top1"],
      final_accuracy=final_acc["top1"], final_top5=final_acc["top5"],
      final_macs=final_cost["macs"], final_params=final_cost["params"],
      macs_reduction=1 - final_cost["macs"] / dense_cost["macs"],
      params_reduction=1 - final_cost["params"] / dense_cost["params"],
      device=f"{jax.device_count()}x {jax.devices()[0].device_kind}")
  return summary
