"""The workdir's own records (``pipeline.records``): which fields changed."""

import json

import cifar  # configs/, on the path from conftest

from lrpet_jax.pipeline import records


def test_changed_fields_name_old_and_new_and_skip_a_newer_field_left_off(
    tmp_path):
  config = cifar.get_config()
  saved = json.loads(config.to_json())
  saved["seed"] = 3
  saved["log_every_steps"] = 7  # not compared: cannot change the result
  del saved["budget_macs_reduction"]  # an older version's run: no field
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert records.changed_fields(config, tmp_path) == ["seed 3 → 0"]
  config.budget_macs_reduction = 0.5  # a newer field switched on: a change
  assert records.changed_fields(config, tmp_path) == [
      "budget_macs_reduction None → 0.5", "seed 3 → 0"]


def test_a_run_of_an_older_version_resumes_under_its_config(tmp_path):
  # Written before the optimizer, schedule, rank-policy and augmentation
  # fields existed: under the same config today, nothing changed.
  config = cifar.get_config()
  saved = json.loads(config.to_json())
  for field in ("optimizer", "lr_schedule", "rank_policy", "rank_energy",
                "rank_decision_epoch", "repeated_augmentation", "mixup_alpha",
                "cutmix_beta", "mix_prob", "auto_augment", "warmup_epochs"):
    del saved[field]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert records.changed_fields(config, tmp_path) == []
  # Turned to what the older version could not do: a change, named as such.
  config.optimizer, config.repeated_augmentation = "adamw", 3
  assert records.changed_fields(config, tmp_path) == [
      "optimizer 'sgd' → 'adamw'", "repeated_augmentation 1 → 3"]
