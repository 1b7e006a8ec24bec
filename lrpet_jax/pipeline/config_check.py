"""The run's config: checked once, up front, then handed out in typed parts.

``check`` runs before anything is loaded or written: every field at its type
and range, then the rules between fields; each failure is a ``ConfigError``
of one line naming the field. ``part(cls, config)`` gives a module the
dataclass of just the fields it reads (e.g. ``inputs.InputConfig``). Every
field has its default in ``configs/cifar.py``, which the other configs
import; none is repeated here.
"""

import dataclasses
import numbers
import pathlib

import jax

from lrpet_jax import models
from lrpet_jax.data import augmentations
from lrpet_jax.data import datasets as data_lib
from lrpet_jax.pipeline import methods
from lrpet_jax.pipeline.errors import ConfigError
from lrpet_jax.ranking import selection

# The augmentation fields' "off" values (streamed data sets augment on the host).
_AUGMENTATION_OFF = (("auto_augment", ""), ("random_erasing", 0),
                     ("mix_prob", 0), ("repeated_augmentation", 1))


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _reals(n=None, low=None):
  def ok(v):
    return (isinstance(v, (tuple, list)) and (n is None or len(v) == n)
            and all(_is_real(x) and (low is None or x > low) for x in v))
  return ok


def _int_at_least(low):
  return lambda v: _is_int(v) and v >= low


def _in_unit(v):
  return _is_real(v) and 0 <= v < 1


# field: (test, what it must be).
FIELDS = {
    "num_classes": (_int_at_least(1), "an int >= 1"),
    "ratio": (_in_unit, "a number in [0, 1)"),
    "macs_reduction": (_in_unit, "a number in [0, 1) (0: use ratio)"),
    "budget_macs_reduction": (_in_unit, "a number in [0, 1)"),
    "params_reduction": (_in_unit, "a number in [0, 1) (0: use ratio)"),
    "ranks_file": (lambda v: v is None or pathlib.Path(v).is_file(),
                   "None or a JSON file of ranks"),
    "init_from": (lambda v: v is None or pathlib.Path(v).is_dir(),
                  "None or a checkpoint directory"),
    "project_every_steps": (_int_at_least(0), "an int >= 0 (0: once per epoch)"),
    "residual_scale": (lambda v: _is_real(v) and 0 <= v <= 1,
                       "a number in [0, 1]"),
    "bn_recompute_batches": (_int_at_least(1), "an int >= 1"),
    "train_subset": (_int_at_least(0), "an int >= 0 (0: all)"),
    "test_subset": (_int_at_least(0), "an int >= 0 (0: all)"),
    "val_examples": (_int_at_least(0), "an int >= 0"),
    "rank_floor": (_int_at_least(0), "an int >= 0"),
    "rank_energy": (lambda v: _is_real(v) and 0 < v <= 1,
                    "a number in (0, 1]"),
    "rank_decision_epoch": (_int_at_least(1), "an int >= 1"),
    "first_rank_floor": (_int_at_least(0), "an int >= 0"),
    "mean": (lambda v: v == () or _reals(3)(v),
             "three numbers, or () for the data set's own"),
    "std": (lambda v: v == () or _reals(3, low=0)(v),
            "three numbers > 0, or () for the data set's own"),
    "image_size": (_int_at_least(1), "an int >= 1"),
    "num_epochs": (_int_at_least(0), "an int >= 0"),
    "num_steps": (_int_at_least(0), "an int >= 0 (0: num_epochs)"),
    "batch_size": (_int_at_least(1), "an int >= 1"),
    "learning_rate": (lambda v: _is_real(v) and v > 0, "a number > 0"),
    "lr_boundaries_epochs": (lambda v: _reals()(v) and all(e >= 0 for e in v),
                             "a tuple of epochs >= 0"),
    "lr_decay": (lambda v: _is_real(v) and v > 0, "a number > 0"),
    "momentum": (_in_unit, "a number in [0, 1)"),
    "weight_decay": (lambda v: _is_real(v) and v >= 0, "a number >= 0"),
    "steps_per_call": (_int_at_least(1), "an int >= 1"),
    "seed": (_int_at_least(0), "an int >= 0"),
    "eval_batch_size": (_int_at_least(1), "an int >= 1"),
    "log_every_steps": (_int_at_least(1), "an int >= 1"),
    "checkpoint_every_steps": (_int_at_least(0),
                               "an int >= 0 (0: once per epoch)"),
    "keep_checkpoints": (_int_at_least(1), "an int >= 1"),
    "num_processes": (_int_at_least(0), "an int >= 0 (0: detected)"),
    "process_id": (_int_at_least(-1), "an int >= -1 (-1: detected)"),
    "coordinator_address": (
        lambda v: v is None or (isinstance(v, str) and v.rpartition(":")[2]
                                .isdigit()), "None or HOST:PORT"),
    "project_layers": (lambda v: isinstance(v, str), "a string"),
    "optimizer": (lambda v: v in ("sgd", "adamw"), "'sgd' or 'adamw'"),
    "lr_schedule": (lambda v: v in ("step", "cosine"), "'step' or 'cosine'"),
    "warmup_epochs": (_int_at_least(0), "an int >= 0"),
    "label_smoothing": (lambda v: _is_real(v) and 0 <= v < 1,
                        "a number in [0, 1)"),
    "auto_augment": (lambda v: v in ("", *augmentations.POLICIES),
                     "'' or one of "
                     + ", ".join(repr(k) for k in augmentations.POLICIES)),
    "random_erasing": (lambda v: _is_real(v) and 0 <= v <= 1,
                       "a number in [0, 1]"),
    "mix_prob": (lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "mixup_alpha": (lambda v: _is_real(v) and v > 0, "a number > 0"),
    "cutmix_beta": (lambda v: _is_real(v) and v > 0, "a number > 0"),
    "repeated_augmentation": (_int_at_least(1), "an int >= 1"),
    "compute_dtype": (lambda v: v in models.COMPUTE_DTYPES,
                      f"one of {', '.join(models.COMPUTE_DTYPES)}"),
    **{name: (lambda v: isinstance(v, bool), "True or False") for name in (
        "energy_transfer", "bn_rectification", "log_spectra", "nesterov",
        "project_dense", "distributed", "extend")},
}
# Read as they are (names and paths checked by the rules below).
OTHER_FIELDS = ("method", "model", "model_flag", "dataset", "data_dir",
                "rank_policy")


def check(config) -> None:
  """Static checks, before anything is loaded or written."""
  for field in (*FIELDS, *OTHER_FIELDS):
    if field not in config:
      raise ConfigError(f"{field}: missing from the config (configs/cifar.py"
                        " lists every field with its default)")
  for field, (ok, what) in FIELDS.items():
    if not ok(config[field]):
      raise ConfigError(f"{field}: must be {what}, got {config[field]!r}")
  try:
    models.check_flag(models.build(config.model, config.num_classes),
                      config.model_flag)
    data_lib.check_dataset_name(config.dataset)
    if config.dataset.startswith("image_folder:"):  # counted without loading
      counts = data_lib.index_image_folder(
          config.dataset.split(":", 1)[1]).counts
      data_lib.check_sizes(
          n_train=counts["train"], n_test=counts["test"],
          train_subset=config.train_subset, test_subset=config.test_subset,
          val_examples=config.val_examples, batch_size=config.batch_size,
          where=config.dataset)
    methods.check(config.method, config)
    part(selection.RankRule, config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if bool(config.mean) != bool(config.std):
    raise ConfigError(f"{'std' if config.mean else 'mean'}: give both mean"
                      " and std, or neither (the data set's own)")
  if config.dataset in data_lib.STREAMED:
    for field, off in (("val_examples", 0), *_AUGMENTATION_OFF):
      if config[field] != off:
        raise ConfigError(f"{field}: only for in-memory data sets, not"
                          f" {config.dataset!r}")
  if config.compute_dtype == "float64" and not jax.config.jax_enable_x64:
    raise ConfigError("compute_dtype: float64 needs 64-bit JAX (set"
                      " JAX_ENABLE_X64=1 in the environment)")
  n = jax.device_count()
  if config.batch_size % n:
    raise ConfigError(f"batch_size: {config.batch_size} is not divisible by"
                      f" the {n} devices")
  if not config.num_steps and config.num_epochs < 1:
    raise ConfigError(f"num_epochs: must be >= 1 (or set num_steps), got"
                      f" {config.num_epochs}")
  bounds = tuple(config.lr_boundaries_epochs)
  if config.lr_schedule == "cosine" and bounds:
    raise ConfigError("lr_boundaries_epochs: only for lr_schedule 'step'; with"
                      " 'cosine' set --config.lr_boundaries_epochs='()'")
  if config.lr_schedule == "step" and config.warmup_epochs:
    raise ConfigError("warmup_epochs: only for lr_schedule 'cosine'")
  if list(bounds) != sorted(set(bounds)):
    raise ConfigError(f"lr_boundaries_epochs: must be increasing epochs, got"
                      f" {bounds}")
  if not config.num_steps and bounds and bounds[-1] > config.num_epochs:
    raise ConfigError(f"lr_boundaries_epochs: {bounds[-1]} is after the end"
                      f" of the run ({config.num_epochs} epochs)")


def part(cls, config):
  """The dataclass ``cls`` filled from the config fields of the same names."""
  return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})
