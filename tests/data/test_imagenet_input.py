"""The ImageNet tf.data path, end to end under tfds.testing.mock_data."""

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytestmark = pytest.mark.slow  # the whole training pipeline

from configs import imagenet
from lrpet_jax.data import imagenet as imagenet_input
from lrpet_jax.pipeline import train


def test_imagenet_pipeline_with_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = imagenet.get_config()
  config.model, config.image_size = "resnet8", 32  # the pipeline, not the model
  config.batch_size, config.eval_batch_size = 8, 8
  # Three steps in one call (stacked host batches), then the projecting step.
  config.num_steps, config.project_every_steps = 4, 4
  config.lr_boundaries_epochs = ()  # the run ends long before epoch 30
  config.steps_per_call = 3
  config.checkpoint_every_steps, config.log_every_steps = 4, 2
  config.bn_recompute_batches = 2
  with tfds.testing.mock_data(num_examples=24):
    b = imagenet_input.builder("imagenet2012", None)
    images, labels = next(imagenet_input.train_batches(
        b, batch_size=8, seed=0, image_size=32))
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (8,)
    # Resuming at step 2 gives exactly the third batch of the epoch.
    it = imagenet_input.train_batches(b, batch_size=8, seed=0, image_size=32)
    third = [next(it) for _ in range(3)][2]
    resumed = next(imagenet_input.train_batches(
        b, batch_size=8, seed=0, image_size=32, start_step=2))
    np.testing.assert_array_equal(resumed[0], third[0])
    np.testing.assert_array_equal(resumed[1], third[1])
    val = next(imagenet_input.eval_batches(b, batch_size=8, image_size=32))
    assert val[0].shape == (8, 32, 32, 3)
    summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["steps"] == 4
  assert summary["dense_accuracy"] == summary["compact_accuracy"]
  assert "dense_top5" in json.loads((tmp_path / "summary.json").read_text())
