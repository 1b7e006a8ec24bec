"""data/inputs on its own: the in-memory adapter's batches are the rows a
hand-drawn permutation names, evaluation batches cover the test set once,
and the normalization comes from where ``resolve_normalization`` says."""

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from lrpet_jax.data import datasets
from lrpet_jax.data import inputs

N, B = 50, 8  # 6 steps per epoch, 2 examples dropped each epoch


def _source(passes=1, eval_batch=16):
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (N, 4, 4, 3), dtype=np.uint8)
  labels = np.arange(N, dtype=np.int32)
  mesh = jax.make_mesh((1,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  source = inputs.InMemoryInput(
      datasets.InMemoryData(images, labels, images[:21], labels[:21], 10),
      batch_size=B, eval_batch_size=eval_batch, seed=5,
      normalization=datasets.NORMALIZATION["cifar10"],
      batch_sharding=NamedSharding(mesh, P("data")), passes=passes)
  return source, images, labels


def test_step_batches_are_the_rows_of_each_epochs_permutation():
  source, images, labels = _source()
  assert source.steps_per_epoch == 6
  for step in (0, 5, 6, 13):
    epoch, i = divmod(step, 6)
    order = np.random.default_rng([5, epoch]).permutation(N)  # by hand
    idx = order[i * B:(i + 1) * B]
    got_images, got_labels = source.chunk_data(step, 1)
    np.testing.assert_array_equal(got_labels[0], labels[idx])
    np.testing.assert_array_equal(got_images[0], images[idx])
  # A chunk across an epoch end: steps 4..7, each its own step's batch.
  _, got_labels = source.chunk_data(4, 4)
  for k, step in enumerate(range(4, 8)):
    epoch, i = divmod(step, 6)
    order = np.random.default_rng([5, epoch]).permutation(N)
    np.testing.assert_array_equal(got_labels[k], order[i * B:(i + 1) * B])


def test_repeated_augmentation_makes_an_epoch_of_several_passes():
  source, _, _ = _source(passes=3)
  assert source.steps_per_epoch == 3 * N // B
  # Step 7 is in the epoch's second pass: its own permutation.
  second = np.random.default_rng([5, 0, 1]).permutation(N)
  first = np.random.default_rng([5, 0]).permutation(N)
  order = np.concatenate([first, second])
  _, labels = source.chunk_data(7, 1)
  np.testing.assert_array_equal(labels[0], order[7 * B:8 * B])


def test_evaluation_batches_cover_the_test_set_once_in_order():
  source, _, _ = _source(eval_batch=16)
  batches = [(np.asarray(x), np.asarray(y)) for x, y in source.eval_batches()]
  assert [len(y) for _, y in batches] == [16, 5]  # 21 test examples
  labels = np.concatenate([y for _, y in batches])
  np.testing.assert_array_equal(labels, np.arange(21))


@pytest.mark.parametrize("given, dataset, want_from", [
    ((0.1, 0.2, 0.3), "image_folder:/x", "given"),
    ((), "cifar10", "cifar10's constants"),
    ((), "image_folder:/x", "computed from the 4 training images"),
])
def test_normalization_comes_from_the_config_the_constants_or_the_data(
    given, dataset, want_from):
  config = inputs.InputConfig(
      dataset=dataset, data_dir=None, train_subset=0, test_subset=0,
      val_examples=0, batch_size=2, eval_batch_size=2, seed=0,
      mean=given, std=given, image_size=4)
  images = np.random.default_rng(0).integers(0, 256, (4, 2, 2, 3), np.uint8)
  normalization, source = inputs.resolve_normalization(config, images)
  assert source == want_from
  if given:
    assert normalization == (given, given)
  elif dataset == "cifar10":
    assert normalization == datasets.NORMALIZATION["cifar10"]
  else:
    x = images.reshape(-1, 3) / 255.0  # by hand
    np.testing.assert_allclose(normalization.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(normalization.std, x.std(0), rtol=1e-10)
  # A resumed run's record wins over computing again, not over the config.
  cached = datasets.Normalization((0.5,) * 3, (0.25,) * 3)
  again, _ = inputs.resolve_normalization(config, images, cached)
  assert again == (normalization if given or dataset == "cifar10"
                   else cached)
