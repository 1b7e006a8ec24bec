"""Input adapters of the training loop: where each step's batch comes from.

An adapter hands the compiled training call everything its steps need for
``length`` steps from ``start`` (``chunk_data``, on the host) and picks one
step's batch out of it inside the compiled call (``select``, traced):

- ``InMemoryInput`` (CIFAR): the whole training set lives on the device as
  uint8; a call receives the epoch's example order, and step s reads batch
  ``s mod steps_per_epoch`` of it, so a chunk never crosses an epoch
  (``epoch_end``). Augmentation happens in the step, keyed by (seed, step).
- ``StreamInput`` (ImageNet): tf.data batches, augmented on the host, stacked
  ``length`` at a time.

Either way a step's batch is a function of (seed, step) alone, so results do
not depend on how many steps a call runs, and a resumed run sees the batches
an uninterrupted one would.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrpet_jax import data as data_lib


def array_batches(images, labels, batch_size):
  for i in range(0, len(labels), batch_size):
    yield images[i:i + batch_size], labels[i:i + batch_size]


class InMemoryInput:
  """Small data sets (CIFAR): uint8 arrays on the device, augmented in the step."""

  device_augment = True

  def __init__(self, config, replicated, batch_sharding):
    self.config = config
    self.data = data_lib.hold_out(
        data_lib.load(config.dataset, config.get("data_dir"),
                      config.train_subset, config.test_subset, config.seed),
        config.get("val_examples", 0), config.seed)
    self._setup(replicated, batch_sharding)

  @classmethod
  def from_arrays(cls, config, data: data_lib.InMemoryData, replicated,
                  batch_sharding):
    """An adapter over arrays already in memory (benchmarks, tests)."""
    self = cls.__new__(cls)
    self.config, self.data = config, data
    self._setup(replicated, batch_sharding)
    return self

  def _setup(self, replicated, batch_sharding):
    self.num_classes = self.data.num_classes
    self.num_train = len(self.data.train_labels)
    self.input_shape = self.data.train_images.shape[1:]
    self.steps_per_epoch = self.num_train // self.config.batch_size
    self._images = jax.device_put(self.data.train_images, replicated)
    self._labels = jax.device_put(self.data.train_labels, replicated)
    self._replicated = replicated
    self._sharding = batch_sharding
    self._order = (None, None)  # (epoch, its example order on the device)

  def epoch_end(self, step: int) -> int:
    """The first step of the epoch after the one ``step`` belongs to."""
    return (step // self.steps_per_epoch + 1) * self.steps_per_epoch

  def chunk_data(self, start: int, length: int) -> Any:
    del length  # the chunk stays inside ``start``'s epoch
    epoch = start // self.steps_per_epoch
    if self._order[0] != epoch:
      order = data_lib.epoch_permutation(self.config.seed, epoch,
                                         self.num_train).astype(np.int32)
      self._order = (epoch, jax.device_put(order, self._replicated))
    return self._images, self._labels, self._order[1]

  def select(self, chunk_data, step, index):
    """Traced: the batch of global ``step`` (``index``: its place in the chunk)."""
    del index
    images, labels, order = chunk_data
    b = self.config.batch_size
    idx = jax.lax.dynamic_slice(order, ((step % self.steps_per_epoch) * b,),
                                (b,))
    return (jax.lax.with_sharding_constraint(images[idx], self._sharding),
            jax.lax.with_sharding_constraint(labels[idx], self._sharding))

  def eval_batches(self):
    return array_batches(self.data.test_images, self.data.test_labels,
                         self.config.eval_batch_size)

  def val_batches(self):
    """The validation split's batches, or None without one."""
    if self.data.val_labels is None:
      return None
    return array_batches(self.data.val_images, self.data.val_labels,
                         self.config.eval_batch_size)

  def bn_batches(self, count):
    """Augmented training batches for the BN recomputation.

    Augmented as in training (as pycls' precise BN does): the network was
    trained under BatchNorm statistics of augmented batches, and statistics of
    clean images shift them (zero-padded crops move the stem's channel means);
    measured on a compact ResNet-20, clean-image statistics cost 4 points of
    test accuracy against the running ones, augmented ones none.
    """
    key = jax.random.split(jax.random.key(self.config.seed))[1]
    for i in range(count):
      idx = data_lib.batch_indices(self.config.seed, i, self.num_train,
                                   self.config.batch_size)
      images = data_lib.augment(jnp.asarray(self.data.train_images[idx]),
                                jax.random.fold_in(key, i))
      yield data_lib.normalize(images, tuple(self.config.mean),
                               tuple(self.config.std))


class StreamInput:
  """ImageNet through tf.data, augmented on the host."""

  device_augment = False

  def __init__(self, config, replicated, batch_sharding):
    del replicated
    from lrpet_jax import imagenet_input  # pylint: disable=g-import-not-at-top
    self._lib = imagenet_input
    self.config = config
    self.builder = imagenet_input.builder(config.dataset, config.get("data_dir"))
    self.num_classes = self.builder.info.features["label"].num_classes
    self.num_train = imagenet_input.process_split(
        self.builder, "train", drop_remainder=True)[1]
    self.input_shape = (config.image_size, config.image_size, 3)
    self.steps_per_epoch = self.num_train // config.batch_size
    self._sharding = batch_sharding
    # Chunks of several steps stack batches on a leading axis.
    self._stacked = jax.sharding.NamedSharding(
        batch_sharding.mesh, jax.sharding.PartitionSpec(None, "data"))
    self._batches = None

  def _local_batch(self):
    return self.config.batch_size // jax.process_count()

  def _host_batches(self, start_step):
    return self._lib.train_batches(
        self.builder, batch_size=self._local_batch(), seed=self.config.seed,
        start_step=start_step, image_size=self.config.image_size)

  def epoch_end(self, step: int) -> int:
    del step
    return 2**62  # the stream crosses epochs by itself

  def chunk_data(self, start: int, length: int) -> Any:
    if self._batches is None or self._batches[0] != start:
      self._batches = [start, self._host_batches(start)]
    got = [next(self._batches[1]) for _ in range(length)]
    self._batches[0] = start + length
    return tuple(jax.make_array_from_process_local_data(
        self._stacked, np.stack(parts)) for parts in zip(*got))

  def select(self, chunk_data, step, index):
    del step
    images, labels = chunk_data
    return images[index], labels[index]

  def eval_batches(self):
    return self._lib.eval_batches(self.builder,
                                  batch_size=self.config.eval_batch_size,
                                  image_size=self.config.image_size)

  def val_batches(self):
    return None  # check_config refuses val_examples for streamed data sets

  def bn_batches(self, count):
    mean, std = tuple(self.config.mean), tuple(self.config.std)
    for i, (images, _) in enumerate(self._host_batches(0)):
      if i == count:
        return
      yield data_lib.normalize(
          jax.make_array_from_process_local_data(self._sharding, images),
          mean, std)


def make_input(config, replicated, batch_sharding):
  """The adapter for ``config.dataset``."""
  kind = (StreamInput if config.dataset in data_lib.STREAMED
          else InMemoryInput)
  return kind(config, replicated, batch_sharding)
