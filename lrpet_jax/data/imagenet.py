"""ImageNet input through tf.data (TensorFlow kept on the CPU).

Training: RandomResizedCrop to 224 (scale 0.08–1, aspect 3/4–4/3) and a random
horizontal flip; evaluation: resize the short side to 256, center-crop 224.
Images leave the pipeline as uint8; normalization runs in the jitted step.
Each process reads its own slice of the split (``tfds.split_for_jax_process``).

Resumable: the example order of an epoch and every augmentation draw are
functions of (seed, epoch, position), so ``train_batches(start_step)`` yields
exactly the batches an uninterrupted run would have seen from that step.
"""

from collections.abc import Iterator

import numpy as np

from lrpet_jax.data import datasets

def _tf():
  datasets.tfds_module()  # quietly, before TensorFlow itself
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerator
  return tf


def builder(dataset: str, data_dir: str | None):
  return datasets.prepared_builder(
      dataset, data_dir, "ImageNet needs a manual download: put the tars in"
      " <data_dir>/downloads/manual and pass --config.data_dir")


def process_split(b, split: str, drop_remainder: bool = False):
  """This process's part of ``split`` and its size."""
  tfds = datasets.tfds_module()
  if not b.info.splits:  # no metadata, e.g. under tfds.testing.mock_data
    count = sum(1 for _ in b.as_dataset(split=split))
    return split, count
  part = tfds.split_for_jax_process(split, drop_remainder=drop_remainder)
  return part, b.info.splits[part].num_examples


def random_resized_crop(tf, image, seed, size):
  """torchvision's RandomResizedCrop(size) with a stateless seed."""
  begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed,
      area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, extent)
  return tf.image.resize(crop, (size, size), method="bilinear", antialias=True)


def center_crop(tf, image, size, resize=256):
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = resize / tf.minimum(h, w)
  new = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
  image = tf.image.resize(image, new, method="bilinear", antialias=True)
  top, left = (new[0] - size) // 2, (new[1] - size) // 2
  return tf.slice(image, [top, left, 0], [size, size, 3])


def _to_uint8(tf, image):
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def train_batches(b, *, batch_size: int, seed: int, start_step: int = 0,
                  image_size: int = 224, split: str = "train"
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images uint8 (B, S, S, 3), labels int32 (B,)) from ``start_step`` on."""
  tfds = datasets.tfds_module()
  tf = _tf()
  part, n = process_split(b, split, drop_remainder=True)
  steps_per_epoch = n // batch_size
  epoch, offset = divmod(start_step, steps_per_epoch)
  while True:
    ds = b.as_dataset(split=part, shuffle_files=False)
    ds = ds.enumerate().shuffle(min(n, 50_000), seed=seed * 100_003 + epoch,
                                reshuffle_each_iteration=False)

    def prepare(i, ex, epoch=epoch):
      s = tf.stack([tf.cast(seed * 100_003 + epoch, tf.int64), i])
      image = random_resized_crop(tf, ex["image"], s, image_size)
      flip = tf.random.stateless_uniform([], seed=s + 1) < 0.5
      image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
      return _to_uint8(tf, image), tf.cast(ex["label"], tf.int32)

    ds = ds.skip(offset * batch_size).map(
        prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
    for images, labels in tfds.as_numpy(ds.take(steps_per_epoch - offset)):
      yield images, labels
    epoch, offset = epoch + 1, 0


def eval_batches(b, *, batch_size: int, image_size: int = 224,
                 split: str = "validation"
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Resize-256/center-crop batches of this process's part of ``split``."""
  tfds = datasets.tfds_module()
  tf = _tf()
  ds = b.as_dataset(split=process_split(b, split)[0], shuffle_files=False)
  ds = ds.map(lambda ex: (_to_uint8(tf, center_crop(tf, ex["image"],
                                                     image_size)),
                          tf.cast(ex["label"], tf.int32)),
              num_parallel_calls=tf.data.AUTOTUNE)
  yield from tfds.as_numpy(ds.batch(batch_size).prefetch(2))
