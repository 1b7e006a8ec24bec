"""LRPET training loop: small pure functions ending in ``train_and_evaluate``.

``config.method`` picks what is trained, with the same data, schedule and
bookkeeping: ``lrpet`` (the dense model under ``transform.lrpet``), ``dense``
(the dense model, plain SGD, no projection) or ``compact`` (the factorized
model at the run's ranks, plain SGD; random init, or ``init_from`` a dense
``variables`` checkpoint truncated by SVD to those ranks: decompose-and-retrain).

State saved in ``WORKDIR/checkpoints/<step>/`` is everything needed to go on:
params, batch_stats, the optimizer state (projection counter included) and the
step; batches and augmentation draws are functions of (seed, step). Rerunning
the same command resumes from the newest readable checkpoint.
"""

import json
import math
import pathlib
import signal
import time
from typing import Any

from absl import logging
import flax
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lrpet_jax import _trees
from lrpet_jax import accounting
from lrpet_jax import bn
from lrpet_jax import compact
from lrpet_jax import data as data_lib
from lrpet_jax import models
from lrpet_jax import projection
from lrpet_jax import ranks as ranks_lib
from lrpet_jax import transform


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


class ConfigError(ValueError):
  """Bad configuration or workdir: reported in one line, exit status 2."""


METHODS = ("lrpet", "dense", "compact")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Static checks, before anything is loaded or written."""
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
  if config.ratio is not None and not 0.0 <= config.ratio < 1.0:
    raise ConfigError(f"ratio: must be in [0, 1), got {config.ratio}")
  for field in ("rank_floor", "first_rank_floor", "val_examples"):
    value = config.get(field, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ConfigError(f"{field}: must be an int >= 0, got {value!r}")
  n = jax.device_count()
  if config.batch_size % n:
    raise ConfigError(f"batch_size: {config.batch_size} is not divisible by"
                      f" the {n} devices")
  if config.batch_size < 1 or config.num_epochs < 1:
    raise ConfigError("batch_size and num_epochs must be >= 1")


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


def make_train_step(model, tx, config, pairs, device_augment=True,
                    project=None):
  """(state, images uint8 (B, H, W, 3), labels (B,)) -> (state, metrics, aux).

  ``project`` is handed to ``tx.update`` (``low_rank_projection``): ``None``
  for optimizers without a projection, else a Python bool fixed at trace time.
  A projecting step's ``aux`` holds ``pre_projection_params``, the params
  after the step's SGD update and before its truncation (the model the
  authors evaluate at the end of each epoch); ``aux`` is empty otherwise.
  """
  mean, std = tuple(config.mean), tuple(config.std)
  schedule = {} if project is None else {"project": project}

  def train_step(state, images, labels):
    if device_augment:
      key = jax.random.fold_in(jax.random.key(config.seed), state.step)
      images = data_lib.augment(images, key)
    x, y = data_lib.normalize(images, mean, std), labels

    def loss_fn(params):
      logits, mutated = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, x, train=True,
          mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, (logits, mutated["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    extra = {}
    if pairs is not None and config.bn_rectification:
      extra["out_scales"] = bn.bn_out_scales(state.params, batch_stats, pairs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   **extra, **schedule)
    aux = {}
    if project:
      # The same update without the projection (XLA shares the SGD part).
      sgd_updates, _ = tx.update(grads, state.opt_state, state.params,
                                 **extra, project=False)
      aux["pre_projection_params"] = optax.apply_updates(state.params,
                                                         sgd_updates)
    new_state = TrainState(step=state.step + 1,
                           params=optax.apply_updates(state.params, updates),
                           batch_stats=batch_stats, opt_state=opt_state)
    metrics = {"loss": loss,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
    return new_state, metrics, aux

  return train_step


def make_eval_fn(model, config):
  """evaluate(variables, batches) -> {"top1", "top5"} over (images, labels) batches."""
  mean, std = tuple(config.mean), tuple(config.std)

  @jax.jit
  def counts(variables, images, labels):
    logits = model.apply(variables, data_lib.normalize(images, mean, std),
                         train=False)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return (jnp.sum(top5[:, 0] == labels),
            jnp.sum(jnp.any(top5 == labels[:, None], axis=-1)))

  def evaluate(variables, batches):
    top1 = top5 = n = 0
    for images, labels in batches:
      c1, c5 = counts(variables, images, labels)
      top1, top5, n = top1 + int(c1), top5 + int(c5), n + len(labels)
    return {"top1": top1 / n, "top5": top5 / n}

  return evaluate


def array_batches(images, labels, batch_size):
  for i in range(0, len(labels), batch_size):
    yield images[i:i + batch_size], labels[i:i + batch_size]


def checkpoint_manager(workdir: pathlib.Path, config):
  """Orbax manager of ``WORKDIR/checkpoints``."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint.checkpoint_managers import preservation_policy as pp  # pylint: disable=g-import-not-at-top

  # The latest checkpoints, and with a validation split the best one by
  # validation accuracy; never a selection on the test set.
  policies = [pp.LatestN(n=config.keep_checkpoints)]
  if config.get("val_examples"):
    policies.append(pp.BestN(get_metric_fn=lambda m: m["val_accuracy"], n=1,
                             keep_checkpoints_without_metrics=False))
  policy = pp.AnyPreservationPolicy(policies)
  return ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           enable_async_checkpointing=False),
  )


def run_identity(config, ranks) -> dict:
  return {"model": config.model, "num_classes": config.num_classes,
          "method": config.get("method", "lrpet"),
          "ranks": ranks_lib.ranks_to_dict(ranks)}


def save(manager, state, identity, metrics=None):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = int(state.step)
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(jax.device_get(state)),
      identity=ocp.args.JsonSave(identity)), metrics=metrics, force=True)
  manager.wait_until_finished()


def _set_aside(manager, step, error):
  """Moves an unreadable checkpoint to WORKDIR/checkpoints_unreadable/<step>."""
  source = pathlib.Path(manager.directory) / str(step)
  target = source.parent.parent / "checkpoints_unreadable" / str(step)
  logging.warning("checkpoint %d is unreadable (%s); moved to %s, trying an"
                  " older one", step, type(error).__name__, target)
  target.parent.mkdir(exist_ok=True)
  source.rename(target)
  manager.reload()


def restore_latest(manager, abstract_state, identity):
  """The newest readable checkpoint (falling back past corrupt ones), or None."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      saved_identity = manager.restore(step, args=ocp.args.Composite(
          identity=ocp.args.JsonRestore()))["identity"]
    except Exception as e:  # pylint: disable=broad-except
      _set_aside(manager, step, e)
      continue
    # Checkpoints written before ``method`` existed are LRPET runs.
    saved_identity.setdefault("method", "lrpet")
    if saved_identity != identity:
      raise ConfigError(
          f"workdir: holds a checkpoint of model {saved_identity.get('model')!r}"
          " with another method, ranks or classes than this config; use a new"
          " workdir")
    try:
      return manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:  # pylint: disable=broad-except
      if "Structure mismatch" in str(e):  # readable, but another state layout
        raise ConfigError(
            f"workdir: checkpoint {step} holds a training state of another"
            " layout (another optimizer setting such as momentum, or another"
            " lrpet_jax version); resume with the setting that wrote it or use"
            " a new workdir") from None
      _set_aside(manager, step, e)
  return None


class MetricWriter:
  """metrics.jsonl plus TensorBoard event files in the workdir."""

  def __init__(self, workdir: pathlib.Path):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
    self._tb = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)

  def close(self):
    self._jsonl.close()
    self._tb.close()


class SpectraLog:
  """Singular values of every ranked kernel (as the (m, n) matrix) at each
  projection step, in ``WORKDIR/spectra.json``: ``before`` the truncation
  (the projecting step's ``pre_projection_params``) and ``after`` it (the
  step's result). Float64 NumPy SVD on the host, once per projection."""

  def __init__(self, workdir: pathlib.Path, ranks):
    self._path = workdir / "spectra.json"
    self._ranks = _trees.leaves_by_path(ranks)  # ranked leaves only
    if self._path.exists():  # a resumed run appends
      self.record = json.loads(self._path.read_text())
    else:
      self.record = {"steps": [], "layers": {
          "/".join(k): {"rank": r, "before": [], "after": []}
          for k, r in self._ranks.items()}}

  def _spectra(self, params):
    flat = _trees.leaves_by_path(params)
    out = {}
    for k in self._ranks:
      w = np.asarray(jax.device_get(flat[k]), np.float64)
      out["/".join(k)] = np.linalg.svd(
          w.reshape(projection.matrix_shape(w.shape)), compute_uv=False)
    return out

  def log(self, step, before_params, after_params):
    before = self._spectra(before_params)
    after = self._spectra(after_params)
    self.record["steps"].append(step)
    for name, layer in self.record["layers"].items():
      layer["before"].append(before[name].tolist())
      layer["after"].append(after[name].tolist())
    tmp = self._path.with_suffix(".tmp")
    tmp.write_text(json.dumps(self.record))
    tmp.replace(self._path)


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


class InMemoryInput:
  """Small data sets (CIFAR): uint8 arrays on the device, augmented in the step."""

  device_augment = True

  def __init__(self, config, replicated, batch_sharding):
    self.config = config
    self.data = data_lib.hold_out(
        data_lib.load(config.dataset, config.get("data_dir"),
                      config.train_subset, config.test_subset, config.seed),
        config.get("val_examples", 0), config.seed)
    self.num_classes = self.data.num_classes
    self.num_train = len(self.data.train_labels)
    self.input_shape = self.data.train_images.shape[1:]
    self._images = jax.device_put(self.data.train_images, replicated)
    self._labels = jax.device_put(self.data.train_labels, replicated)
    self._sharding = batch_sharding
    self._gather = jax.jit(lambda im, lb, idx: (im[idx], lb[idx]))

  def train_batches(self, start_step):
    step = start_step
    while True:
      idx = data_lib.batch_indices(self.config.seed, step, self.num_train,
                                   self.config.batch_size)
      yield self._gather(self._images, self._labels,
                         jax.device_put(idx, self._sharding))
      step += 1

  def eval_batches(self):
    return array_batches(self.data.test_images, self.data.test_labels,
                         self.config.eval_batch_size)

  def val_batches(self):
    """The validation split's batches, or None without one."""
    if self.data.val_labels is None:
      return None
    return array_batches(self.data.val_images, self.data.val_labels,
                         self.config.eval_batch_size)

  def bn_batches(self, count):
    """Augmented training batches for the BN recomputation.

    Augmented as in training (as pycls' precise BN does): the network was
    trained under BatchNorm statistics of augmented batches, and statistics of
    clean images shift them (zero-padded crops move the stem's channel means);
    measured on a compact ResNet-20, clean-image statistics cost 4 points of
    test accuracy against the running ones, augmented ones none.
    """
    key = jax.random.split(jax.random.key(self.config.seed))[1]
    for i in range(count):
      idx = data_lib.batch_indices(self.config.seed, i, self.num_train,
                                   self.config.batch_size)
      images = data_lib.augment(jnp.asarray(self.data.train_images[idx]),
                                jax.random.fold_in(key, i))
      yield data_lib.normalize(images, tuple(self.config.mean),
                               tuple(self.config.std))


class StreamInput:
  """ImageNet through tf.data, augmented on the host."""

  device_augment = False

  def __init__(self, config, replicated, batch_sharding):
    del replicated
    from lrpet_jax import imagenet_input  # pylint: disable=g-import-not-at-top
    self._lib = imagenet_input
    self.config = config
    self.builder = imagenet_input.builder(config.dataset, config.get("data_dir"))
    self.num_classes = self.builder.info.features["label"].num_classes
    self.num_train = imagenet_input.process_split(
        self.builder, "train", drop_remainder=True)[1]
    self.input_shape = (config.image_size, config.image_size, 3)
    self._sharding = batch_sharding

  def _local_batch(self):
    return self.config.batch_size // jax.process_count()

  def train_batches(self, start_step):
    for images, labels in self._lib.train_batches(
        self.builder, batch_size=self._local_batch(), seed=self.config.seed,
        start_step=start_step, image_size=self.config.image_size):
      yield (jax.make_array_from_process_local_data(self._sharding, images),
             jax.make_array_from_process_local_data(self._sharding, labels))

  def eval_batches(self):
    return self._lib.eval_batches(self.builder,
                                  batch_size=self.config.eval_batch_size,
                                  image_size=self.config.image_size)

  def val_batches(self):
    return None  # check_config refuses val_examples for streamed data sets

  def bn_batches(self, count):
    mean, std = tuple(self.config.mean), tuple(self.config.std)
    for i, (images, _) in enumerate(self.train_batches(0)):
      if i == count:
        return
      yield data_lib.normalize(images, mean, std)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains, projects, recomputes BN, exports the compact model; returns the summary."""
  start = time.time()
  check_config(config)
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  try:
    source = (StreamInput if config.dataset in data_lib.STREAMED
              else InMemoryInput)(config, replicated, batch_sharding)
  except ValueError as e:  # data sets that cannot be found or prepared
    raise ConfigError(str(e)) from None
  if source.num_classes != config.num_classes:
    raise ConfigError(f"num_classes: {config.num_classes} but the data set has"
                      f" {source.num_classes}")
  workdir = pathlib.Path(workdir)
  input_shape = tuple(source.input_shape)
  method = config.get("method", "lrpet")
  dense_model = models.create(config.model, config.num_classes)
  abstract = jax.eval_shape(lambda: dense_model.init(
      jax.random.key(0), jnp.zeros((1,) + input_shape), train=False))
  try:
    ranks = select_ranks(config, dense_model, abstract, input_shape)
  except ValueError as e:  # e.g. an unreachable macs_reduction
    raise ConfigError(str(e)) from None
  if method == "compact":
    model, pairs = models.create(config.model, config.num_classes, ranks), None
  else:
    model, pairs = dense_model, models.bn_pairs(abstract["params"])
  if method == "dense":
    pairs = None
  steps_per_epoch = source.num_train // config.batch_size
  if steps_per_epoch < 1:
    raise ConfigError(f"batch_size: {config.batch_size} exceeds the"
                      f" {source.num_train} training examples")
  total_steps = config.num_steps or config.num_epochs * steps_per_epoch
  tx = make_optimizer(config, ranks, steps_per_epoch)
  identity = run_identity(config, ranks)

  workdir.mkdir(parents=True, exist_ok=True)
  manager = checkpoint_manager(workdir, config)
  abstract_state = jax.eval_shape(
      lambda: initial_state(model, tx, config.seed, input_shape))
  state = restore_latest(manager, abstract_state, identity)
  if state is None:
    variables = (decomposed_variables(config.init_from, abstract, ranks)
                 if config.get("init_from") else None)
    state = initial_state(model, tx, config.seed, input_shape, variables)
  state = jax.device_put(state, replicated)
  first_step = int(state.step)
  logging.info("%s %s: %d steps (%d per epoch), starting at step %d on %d %s"
               " device(s)", method, config.model, total_steps, steps_per_epoch,
               first_step, jax.device_count(), jax.devices()[0].platform)

  # One compiled step per projection mode: the loop decides, so no step
  # carries a conditional (lax.cond) whose predicate the host must read.
  modes = (False, True) if method == "lrpet" else (None,)
  train_steps = {
      mode: jax.jit(make_train_step(model, tx, config, pairs,
                                    source.device_augment, project=mode),
                    donate_argnums=(0,)) for mode in modes}
  evaluate = make_eval_fn(model, config)
  writer = MetricWriter(workdir)
  stop = StopRequested()
  schedule = learning_rate_schedule(config, steps_per_epoch)
  project_every = config.project_every_steps or steps_per_epoch
  checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
  batches = source.train_batches(first_step)

  t_log, last_logged = time.time(), first_step
  pending = None
  spectra = SpectraLog(workdir, ranks) if config.get("log_spectra") else None
  for step in range(first_step, total_steps):
    images, labels = next(batches)
    projecting = method == "lrpet" and (step + 1) % project_every == 0
    t_proj = time.time()
    state, metrics, aux = train_steps[projecting if method == "lrpet" else None](
        state, images, labels)
    if projecting and spectra is not None:
      spectra.log(step + 1, aux["pre_projection_params"], state.params)
    if projecting:
      energy = np.asarray(optax.tree.get(state.opt_state, "energy_kept"))
      logging.info("step %d: projection step took %.3fs; energy kept by the"
                   " truncation: mean %.4f, min %.4f", step + 1,
                   time.time() - t_proj, energy.mean(), energy.min())
      writer.write(step + 1, {"projection_energy_kept_mean": float(
          energy.mean()), "projection_energy_kept_min": float(energy.min()),
                              "projection_step_seconds": time.time() - t_proj})
    if pending is not None:
      _check_finite(*pending, manager)
    pending = (step + 1, metrics)
    done = step + 1
    if done % config.log_every_steps == 0 or done == total_steps:
      _check_finite(*pending, manager)
      m = {k: float(v) for k, v in metrics.items()}
      rate = (done - last_logged) * config.batch_size / (time.time() - t_log)
      eta = (total_steps - done) * config.batch_size / max(rate, 1e-9)
      m.update(lr=float(schedule(done - 1)), images_per_second=rate)
      writer.write(done, {f"train_{k}": v for k, v in m.items()})
      logging.info("step %d/%d  loss %.4f  acc %.3f  lr %.4g  %.0f img/s"
                   "  ETA %.0fs", done, total_steps, m["loss"], m["accuracy"],
                   m["lr"], rate, eta)
      t_log, last_logged = time.time(), done
    if done % checkpoint_every == 0 or done == total_steps:
      _check_finite(*pending, manager)
      scalars = evaluation_scalars(evaluate, source, state, aux)
      writer.write(done, scalars)
      logging.info("step %d: %s", done, "  ".join(
          f"{k} {v:.4f}" for k, v in scalars.items()))
      save(manager, state, identity,
           {k.replace("_top1", "_accuracy"): v for k, v in scalars.items()
            if k in ("test_top1", "val_top1")})
    if stop.signal is not None:
      save(manager, state, identity)
      logging.warning("signal %d: saved step %d and stopped", stop.signal,
                      done)
      writer.close()
      return {"stopped_at_step": done}

  summary = finish(config, workdir, model, state, ranks, pairs, source,
                   input_shape, abstract)
  summary["steps_per_epoch"] = steps_per_epoch
  summary["wall_time_s"] = time.time() - start
  writer.write(total_steps, {k: v for k, v in summary.items()
                             if isinstance(v, float)})
  writer.close()
  (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
  logging.info("summary: %s", json.dumps(summary))
  print(json.dumps(summary, indent=1))
  return summary


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


class NonFiniteLoss(RuntimeError):
  pass


def _check_finite(step, metrics, manager):
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise NonFiniteLoss(
        f"loss is {loss} at step {step}; stopped, last good checkpoint:"
        f" {manager.latest_step()}")


def _deployed_evaluation(config, model, variables, source):
  return make_eval_fn(model, config)(variables, source.eval_batches())


def finish(config, workdir, model, state, ranks, pairs, source, input_shape,
           dense_abstract) -> dict:
  """Final projection (lrpet), precise BN, export and evaluation.

  Writes ``dense_final/`` (methods lrpet and dense) and ``compact/`` (lrpet and
  compact) as Orbax ``variables`` checkpoints. ``final_accuracy`` is the model
  the method deploys: the compact one, or the dense one for method dense.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  method = config.get("method", "lrpet")
  params = (final_projection(state, config, ranks, pairs) if method == "lrpet"
            else state.params)
  params = jax.device_get(params)
  apply_fn = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  batch_stats = bn.recompute_batch_stats(
      apply_fn, {"params": params, "batch_stats": state.batch_stats},
      source.bn_batches(config.bn_recompute_batches))
  trained = jax.device_get({"params": params, "batch_stats": batch_stats})
  dense_model = models.create(config.model, config.num_classes)
  compact_model = models.create(config.model, config.num_classes, ranks=ranks)
  dense_vars = compact_vars = dense_acc = compact_acc = None
  if method == "compact":
    compact_vars = trained
  else:
    dense_vars = trained
    dense_acc = _deployed_evaluation(config, dense_model, dense_vars, source)
  if method == "lrpet":
    compact_vars = compact.factorize(dense_vars, ranks)
  if compact_vars is not None:
    compact_acc = _deployed_evaluation(config, compact_model, compact_vars,
                                       source)
  dense_cost = accounting.cost(dense_model, dense_vars or dense_abstract,
                               input_shape)
  outputs = {"dense_final": dense_vars, "compact": compact_vars}
  checkpointer = ocp.StandardCheckpointer()
  for name, tree in outputs.items():
    if tree is not None:
      checkpointer.save((workdir / name).absolute(), tree, force=True)
  checkpointer.wait_until_finished()
  summary = {
      "model": config.model, "method": method, "dataset": config.dataset,
      "steps": int(state.step),
      "dense_accuracy": dense_acc and dense_acc["top1"],
      "compact_accuracy": compact_acc and compact_acc["top1"],
      "dense_top5": dense_acc and dense_acc["top5"],
      "compact_top5": compact_acc and compact_acc["top5"],
      "dense_macs": dense_cost["macs"], "dense_params": dense_cost["params"],
  }
  if compact_vars is None:
    final_acc, final_cost = dense_acc, dense_cost
  else:
    final_acc = compact_acc
    final_cost = accounting.cost(compact_model, compact_vars, input_shape)
    (workdir / "ranks.json").write_text(
        json.dumps(ranks_lib.ranks_to_dict(ranks), indent=1))
    report = {"dense": dense_cost, "compact": final_cost}
    if dense_vars is not None:
      rows = compact.layer_report(dense_vars, ranks, accounting.layer_costs(
          dense_model, dense_vars, input_shape))
      report["layers"] = rows
      (workdir / "compact_report.txt").write_text(compact.format_report(rows))
    (workdir / "compact_report.json").write_text(json.dumps(report, indent=1))
    summary.update(compact_macs=final_cost["macs"],
                   compact_params=final_cost["params"])
  final_model, final_vars = ((dense_model, dense_vars) if compact_vars is None
                              else (compact_model, compact_vars))
  val_batches = source.val_batches()
  summary.update(
      project_dense=bool(config.get("project_dense")),
      val_examples=config.get("val_examples", 0),
      final_val_accuracy=None if val_batches is None else make_eval_fn(
          final_model, config)(final_vars, val_batches)["top1"],
      final_accuracy=final_acc["top1"], final_top5=final_acc["top5"],
      final_macs=final_cost["macs"], final_params=final_cost["params"],
      macs_reduction=1 - final_cost["macs"] / dense_cost["macs"],
      params_reduction=1 - final_cost["params"] / dense_cost["params"],
      device=f"{jax.device_count()}x {jax.devices()[0].device_kind}")
  return summary
