"""Every config field is checked up front, in process: one bad value each."""

import pathlib
import sys

import ml_collections
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "configs"))
import cifar  # pylint: disable=g-import-not-at-top,wrong-import-position

from lrpet_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position

BAD = {
    "num_classes": 0, "ratio": 1.0, "macs_reduction": -0.1,
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
    "distributed": 0,
    # Fields checked by the rules between fields.
    "model": "resnet57", "dataset": "mnist", "method": "prune",
    "compute_dtype": "float16",
}


def config_with(field, value):
  values = cifar.get_config().to_dict()
  values[field] = value
  return ml_collections.ConfigDict(values)  # no type-safety at creation


def test_every_checked_field_has_a_case():
  assert set(train._FIELDS) <= set(BAD)  # pylint: disable=protected-access


@pytest.mark.parametrize("field", sorted(BAD))
def test_bad_value_is_one_line_naming_the_field(field):
  with pytest.raises(train.ConfigError) as e:
    train.check_config(config_with(field, BAD[field]))
  message = str(e.value)
  assert message.startswith(f"{field}:") and "\n" not in message


def test_good_configs_pass():
  train.check_config(cifar.get_config())
  config = cifar.get_config()
  config.num_epochs, config.num_steps = 0, 10  # num_steps overrides epochs
  train.check_config(config)
