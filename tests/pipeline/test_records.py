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
