"""Data loading (tfds path under mock_data, image folders) and augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpet_jax import data


def test_tfds_cifar10_path_with_mock_data():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=40):
    d = data.load("cifar10", train_subset=24)
  assert d.train_images.shape == (24, 32, 32, 3)
  assert d.train_images.dtype == np.uint8 and d.train_labels.dtype == np.int32
  assert d.test_images.shape == (40, 32, 32, 3) and d.num_classes == 10


def test_unloadable_dataset_names_the_fix(tmp_path):
  # No internet and an empty data_dir: one line pointing at a local copy.
  with pytest.raises(ValueError, match="image_folder:PATH"):
    data.load("cifar100", data_dir=str(tmp_path))


@pytest.mark.parametrize("name", ["mnist", "image_folder:/nonexistent"])
def test_bad_dataset_names(name):
  with pytest.raises(ValueError, match="dataset"):
    data.check_dataset_name(name)


def test_batches_are_a_function_of_seed_and_step():
  n, b = 100, 32  # 3 steps per epoch
  first_epoch = np.concatenate([data.batch_indices(0, s, n, b)
                                for s in range(3)])
  assert len(set(first_epoch)) == 96  # no repeats inside an epoch
  np.testing.assert_array_equal(data.batch_indices(0, 4, n, b),
                                data.batch_indices(0, 4, n, b))
  assert not np.array_equal(data.batch_indices(0, 1, n, b),
                            data.batch_indices(0, 4, n, b))  # epoch 1 reshuffled
  assert not np.array_equal(data.batch_indices(0, 1, n, b),
                            data.batch_indices(1, 1, n, b))


def test_augment_crops_and_flips():
  img = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
  out = np.asarray(data.augment(jnp.asarray(img), jax.random.key(0), pad=2))
  padded = np.pad(img, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(2):
    candidates = [padded[i, y:y + 8, x:x + 8] for y in range(5)
                  for x in range(5)]
    candidates += [c[:, ::-1] for c in candidates]
    assert any(np.array_equal(out[i], c) for c in candidates)


def test_normalize():
  x = data.normalize(jnp.full((1, 1, 1, 3), 255, jnp.uint8), (0.5, 0.5, 0.5),
                     (0.25, 0.5, 1.0))
  np.testing.assert_allclose(np.asarray(x).ravel(), [2.0, 1.0, 0.5])
