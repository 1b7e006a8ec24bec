"""The pipeline with the ViT recipe (AdamW, warm-up + cosine, label
smoothing, stochastic depth, AutoAugment, random erasing, CutMix/Mixup,
repeated augmentation, LRPET on the MLP layers, no BatchNorm): trains,
resumes bit for bit after SIGKILL, and ships a compact model that passes the
export check."""

import json

import pytest

from test_train import assert_resumes_bit_for_bit, command, image_folder, run  # pylint: disable=unused-import

pytestmark = pytest.mark.slow  # subprocesses that train
VIT = ("--config.model=vit_tiny", "--config.optimizer=adamw",
       "--config.learning_rate=0.001", "--config.weight_decay=0.05",
       "--config.lr_schedule=cosine", "--config.lr_boundaries_epochs=()",
       "--config.warmup_epochs=1", "--config.label_smoothing=0.1",
       "--config.project_layers=mlp", "--config.ratio=0.5",
       "--config.checkpoint_every_steps=4", "--config.auto_augment=cifar10",
       "--config.random_erasing=0.25", "--config.mix_prob=0.5",
       "--config.repeated_augmentation=2")


def test_vit_recipe_trains_resumes_exactly_and_exports(image_folder,
                                                       tmp_path):
  straight = tmp_path / "straight"
  result = run(command(image_folder, straight, *VIT))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "the model has no BatchNorm: BN rectification does not apply" in (
      result.stderr)
  summary = json.loads((straight / "summary.json").read_text())
  assert summary["steps"] == 12 and summary["project_layers"] == "mlp"
  assert summary["steps_per_epoch"] == 15  # 120 images × 2 passes // 16
  assert summary["compact_accuracy"] == summary["dense_accuracy"]
  check = summary["export_check"]
  assert max(check["compact"], check["folded"], check["serving"]) < (
      check["tolerance"])
  ranks = json.loads((straight / "ranks.json").read_text())
  assert sorted(ranks) == [f"block{b}/feed_forward/{fc}/kernel"
                           for b in (0, 1) for fc in ("fc1", "fc2")]
  assert set(ranks.values()) == {16}  # ratio 0.5 of min(32, 64)

  assert_resumes_bit_for_bit(image_folder, straight, tmp_path / "killed",
                             *VIT)
