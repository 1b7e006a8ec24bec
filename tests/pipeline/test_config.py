"""Every config field is checked up front, in process: one bad value each."""

import pathlib
import sys

import jax
import ml_collections
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "configs"))
import cifar  # pylint: disable=g-import-not-at-top,wrong-import-position

from lrpet_jax.pipeline import config_check  # pylint: disable=g-import-not-at-top,wrong-import-position

BAD = {
    "num_classes": 0, "ratio": 1.0, "macs_reduction": -0.1, "budget_macs_reduction": 1.0,
    "project_every_steps": -1, "residual_scale": 1.5,
    "bn_recompute_batches": 0, "train_subset": -5, "test_subset": 2.5,
    "val_examples": -1, "rank_floor": -2, "first_rank_floor": 1.5,
    "mean": (0.5, 0.5), "std": (0.2, 0.0, 0.2), "num_epochs": -1,
    "num_steps": -3, "batch_size": 0, "learning_rate": -1.0,
    "lr_boundaries_epochs": ("a", "b"), "lr_decay": 0.0, "momentum": 1.0,
    "weight_decay": -1e-4, "steps_per_call": 0, "seed": -1,
    "eval_batch_size": 0, "log_every_steps": 0, "checkpoint_every_steps": -1,
    "keep_checkpoints": 0, "energy_transfer": "yes", "bn_rectification": 1,
    "log_spectra": "no", "nesterov": None, "project_dense": "False",
    "project_layers": 3, "optimizer": "adam", "lr_schedule": "linear",
    "warmup_epochs": -1, "label_smoothing": 1.0,
    "auto_augment": "imagenet", "random_erasing": 1.5, "mix_prob": -0.5,
    "mixup_alpha": 0.0, "cutmix_beta": -1.0, "repeated_augmentation": 0,
    "distributed": 0, "extend": "yes", "num_processes": -1, "process_id": -2,
    "coordinator_address": "localhost", "rank_energy": 0.0,
    "rank_decision_epoch": 0, "rank_policy": "spectral", "compute_dtype": "float16", "image_size": 0,
    "params_reduction": 1.0, "ranks_file": "/nonexistent.json",
    "init_from": "/nonexistent",
    # Fields checked by the rules between fields.
    "model": "resnet57", "dataset": "mnist", "method": "prune",
}


def config_with(field, value):
  values = cifar.get_config().to_dict()
  values[field] = value
  return ml_collections.ConfigDict(values)  # no type-safety at creation


def test_every_checked_field_has_a_case():
  assert set(config_check.FIELDS) <= set(BAD)


@pytest.mark.parametrize("field", sorted(BAD))
def test_bad_value_is_one_line_naming_the_field(field):
  with pytest.raises(config_check.ConfigError) as e:
    config_check.check(config_with(field, BAD[field]))
  message = str(e.value)
  assert message.startswith(f"{field}:") and "\n" not in message


def test_good_configs_pass():
  config_check.check(cifar.get_config())
  import vit  # pylint: disable=g-import-not-at-top
  config_check.check(vit.get_config())
  import claims  # pylint: disable=g-import-not-at-top
  for scale in ("vit_cpu", "vit_gpu"):  # the ViT experiment and GPU arm
    for arm in ("dense", "lrpet"):
      config = claims.get_config(f"{scale},{arm}")
      if not pathlib.Path(config.dataset.split(":", 1)[1]).is_dir():
        config.dataset = "cifar10"  # no shared copy: the fields still checked
      config_check.check(config)
  assert claims.get_config("vit_gpu,lrpet").repeated_augmentation == 3
  assert claims.get_config("vit_cpu,lrpet").auto_augment == ""
  config = cifar.get_config()
  config.num_epochs, config.num_steps = 0, 10  # num_steps overrides epochs
  config_check.check(config)


@pytest.mark.parametrize("overrides, message", [
    (dict(method="dense", log_spectra=True),
     "log_spectra: only for method 'lrpet', not 'dense'"),
    (dict(init_from="/"), "init_from: only for method 'compact', not 'lrpet'"),
    # Before this rule a compact run trained silently at full rank.
    (dict(method="compact", rank_policy="energy"),
     "rank_policy: 'energy' decides the ranks during training, which method"
     " 'compact' cannot (only 'lrpet')"),
    (dict(macs_reduction=0.5, params_reduction=0.5),
     "params_reduction: give at most one of macs_reduction, params_reduction"
     " and ranks_file (also macs_reduction)"),
    (dict(lr_schedule="cosine"),
     "lr_boundaries_epochs: only for lr_schedule 'step'; with 'cosine' set"
     " --config.lr_boundaries_epochs='()'"),
    (dict(warmup_epochs=5), "warmup_epochs: only for lr_schedule 'cosine'"),
    # ImageNet is augmented on the host: the device's steps would not run.
    (dict(dataset="imagenet2012", auto_augment="cifar10"),
     "auto_augment: only for in-memory data sets, not 'imagenet2012'"),
    (dict(dataset="imagenet2012", repeated_augmentation=3),
     "repeated_augmentation: only for in-memory data sets, not"
     " 'imagenet2012'"),
    (dict(project_layers="mlp,ffn"),
     "project_layers: unknown role 'ffn'; give roles from conv, attention,"
     " classifier, embedding, mlp (comma-separated) or re:REGEX on kernel"
     " paths"),
    (dict(project_layers="mlp", project_dense=True),
     "project_layers: give it or project_dense, not both"
     " (project_layers=conv,classifier is project_dense on a CNN)"),
])
def test_rules_between_fields(overrides, message):
  values = cifar.get_config().to_dict()
  values.update(overrides)
  with pytest.raises(config_check.ConfigError, match="^" + message.replace(
      "(", r"\(").replace(")", r"\)") + "$"):
    config_check.check(ml_collections.ConfigDict(values))


def test_missing_field_is_named():
  values = cifar.get_config().to_dict()
  del values["steps_per_call"]
  with pytest.raises(config_check.ConfigError,
                     match="^steps_per_call: missing from the config"):
    config_check.check(ml_collections.ConfigDict(values))


def test_float64_needs_64_bit_jax():
  config = config_with("compute_dtype", "float64")
  assert not jax.config.jax_enable_x64
  with pytest.raises(config_check.ConfigError,
                     match=r"^compute_dtype: float64 needs 64-bit JAX"):
    config_check.check(config)
  with jax.enable_x64(True):
    config_check.check(config)


@pytest.mark.parametrize("overrides, message", [
    ({"model": "no_such_package.models:make"},
     "model: cannot import 'no_such_package.models'"),
    ({"model_flag": "training"},
     "model_flag: 'training' is not an argument of CifarResNet.__call__"),
    # Even rank 1 everywhere costs more: known before any training.
    ({"rank_policy": "budget", "budget_macs_reduction": 0.99},
     "budget_macs_reduction: out of reach: even rank 1 in every projected"
     " layer"),
    ({"dataset": "image_folder:/nonexistent/cifar"}, "dataset"),
    ({"method": "compact", "init_from": "/nonexistent"}, "init_from"),
    ({"init_from": "/tmp"}, "init_from"),
    ({"method": "dense", "log_spectra": True}, "log_spectra"),
    ({"val_examples": 120}, "val_examples"),  # more than the 24 training
    ({"num_epochs": 0, "num_steps": 0}, "num_epochs"),
])
def test_the_pipeline_refuses_in_one_line_before_writing(tiny_config,
                                                         tmp_path, overrides,
                                                         message):
  """What the fields' own checks cannot see (the model, the data, the
  method's fields): refused by ``train_and_evaluate`` before the workdir is
  made (the command line exits 2 on it: tests/pipeline/test_train.py)."""
  from lrpet_jax.pipeline import errors, train  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError) as e:
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "w"))
  assert message in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "w").exists()
