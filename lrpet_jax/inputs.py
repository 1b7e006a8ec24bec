"""Input adapters of the training loop: where each step's batch comes from.

An adapter (``TrainInput``) hands the compiled training call everything its
steps need for ``length`` steps from ``start`` (``chunk_data``, on the host)
and picks one step's batch out of it inside the compiled call (``select``,
traced):

- ``InMemoryInput`` (CIFAR): the whole training set lives on the device as
  uint8; a call receives the epoch's example order, and step s reads batch
  ``s mod steps_per_epoch`` of it, so a chunk must not cross an epoch (the
  loop ends every call at an epoch end). Augmentation happens in the step,
  keyed by (seed, step).
- ``StreamInput`` (ImageNet): tf.data batches, augmented on the host, stacked
  ``length`` at a time.

Either way a step's batch is a function of (seed, step) alone, so results do
not depend on how many steps a call runs, and a resumed run sees the batches
an uninterrupted one would. ``load`` builds the adapter a config names.
"""

from collections.abc import Iterable, Iterator
import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from lrpet_jax import data as data_lib

Batch = tuple[Any, Any]  # (images uint8 (B, H, W, 3), labels int32 (B,))


@dataclasses.dataclass(frozen=True)
class InputConfig:
  """The config fields an input adapter reads (see ``configs/cifar.py``)."""

  dataset: str
  data_dir: str | None
  train_subset: int
  test_subset: int
  val_examples: int
  batch_size: int
  eval_batch_size: int
  seed: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  image_size: int  # streamed data sets: the crop size

  @property
  def normalization(self) -> data_lib.Normalization:
    return data_lib.Normalization(tuple(self.mean), tuple(self.std))


class TrainInput(Protocol):
  """What the training loop and the end of training read from a data set."""

  num_classes: int
  num_train: int
  input_shape: tuple[int, ...]  # (H, W, C) of one example
  steps_per_epoch: int
  device_augment: bool  # the step augments (True) or the host did

  def chunk_data(self, start: int, length: int) -> Any:
    """Host side: what steps ``start .. start + length − 1`` need."""

  def select(self, chunk_data: Any, step: jax.Array, index: jax.Array
             ) -> Batch:
    """Traced: the batch of global ``step``, ``index``-th in the chunk."""

  def eval_batches(self) -> Iterable[Batch]:
    """The test set, unaugmented."""

  def val_batches(self) -> Iterable[Batch] | None:
    """The validation split, or None without one."""

  def bn_batches(self, count: int) -> Iterator[jax.Array]:
    """``count`` normalized training batches for the BatchNorm recomputation."""


def array_batches(images, labels, batch_size):
  for i in range(0, len(labels), batch_size):
    yield images[i:i + batch_size], labels[i:i + batch_size]


class InMemoryInput:
  """Small data sets (CIFAR): uint8 arrays on the device, augmented in the step."""

  device_augment = True

  def __init__(self, data: data_lib.InMemoryData, *, batch_size: int,
               eval_batch_size: int, seed: int,
               normalization: data_lib.Normalization, replicated,
               batch_sharding):
    self.data = data
    self.num_classes = data.num_classes
    self.num_train = len(data.train_labels)
    self.input_shape = tuple(data.train_images.shape[1:])
    self.steps_per_epoch = self.num_train // batch_size
    self._batch, self._eval_batch = batch_size, eval_batch_size
    self._seed, self._normalization = seed, normalization
    self._images = jax.device_put(data.train_images, replicated)
    self._labels = jax.device_put(data.train_labels, replicated)
    self._replicated = replicated
    self._sharding = batch_sharding
    self._order = (None, None)  # (epoch, its example order on the device)

  def chunk_data(self, start: int, length: int) -> Any:
    del length  # the loop ends every call at an epoch end
    epoch = start // self.steps_per_epoch
    if self._order[0] != epoch:
      order = data_lib.epoch_permutation(self._seed, epoch,
                                         self.num_train).astype(np.int32)
      self._order = (epoch, jax.device_put(order, self._replicated))
    return self._images, self._labels, self._order[1]

  def select(self, chunk_data, step, index):
    del index
    images, labels, order = chunk_data
    b = self._batch
    idx = jax.lax.dynamic_slice(order, ((step % self.steps_per_epoch) * b,),
                                (b,))
    return (jax.lax.with_sharding_constraint(images[idx], self._sharding),
            jax.lax.with_sharding_constraint(labels[idx], self._sharding))

  def eval_batches(self):
    return array_batches(self.data.test_images, self.data.test_labels,
                         self._eval_batch)

  def val_batches(self):
    if self.data.val_labels is None:
      return None
    return array_batches(self.data.val_images, self.data.val_labels,
                         self._eval_batch)

  def bn_batches(self, count):
    """Augmented training batches for the BN recomputation.

    Augmented as in training (as pycls' precise BN does): the network was
    trained under BatchNorm statistics of augmented batches, and statistics of
    clean images shift them (zero-padded crops move the stem's channel means);
    measured on a compact ResNet-20, clean-image statistics cost 4 points of
    test accuracy against the running ones, augmented ones none.
    """
    key = jax.random.split(jax.random.key(self._seed))[1]
    for i in range(count):
      idx = data_lib.batch_indices(self._seed, i, self.num_train, self._batch)
      images = data_lib.augment(jnp.asarray(self.data.train_images[idx]),
                                jax.random.fold_in(key, i))
      yield data_lib.normalize(images, self._normalization)


class StreamInput:
  """ImageNet through tf.data, augmented on the host."""

  device_augment = False

  def __init__(self, config: InputConfig, batch_sharding):
    from lrpet_jax import imagenet_input  # pylint: disable=g-import-not-at-top
    self._lib = imagenet_input
    self._config = config
    self.builder = imagenet_input.builder(config.dataset, config.data_dir)
    self.num_classes = self.builder.info.features["label"].num_classes
    self.num_train = imagenet_input.process_split(
        self.builder, "train", drop_remainder=True)[1]
    self.input_shape = (config.image_size, config.image_size, 3)
    self.steps_per_epoch = self.num_train // config.batch_size
    self._sharding = batch_sharding
    # Chunks of several steps stack batches on a leading axis.
    self._stacked = jax.sharding.NamedSharding(
        batch_sharding.mesh, jax.sharding.PartitionSpec(None, "data"))
    self._batches = None  # (next step, its iterator)

  def _host_batches(self, start_step):
    return self._lib.train_batches(
        self.builder, batch_size=self._config.batch_size // jax.process_count(),
        seed=self._config.seed, start_step=start_step,
        image_size=self._config.image_size)

  def chunk_data(self, start: int, length: int) -> Any:
    if self._batches is None or self._batches[0] != start:
      self._batches = (start, self._host_batches(start))
    got = [next(self._batches[1]) for _ in range(length)]
    self._batches = (start + length, self._batches[1])
    return tuple(jax.make_array_from_process_local_data(
        self._stacked, np.stack(parts)) for parts in zip(*got))

  def select(self, chunk_data, step, index):
    del step
    images, labels = chunk_data
    return images[index], labels[index]

  def eval_batches(self):
    return self._lib.eval_batches(self.builder,
                                  batch_size=self._config.eval_batch_size,
                                  image_size=self._config.image_size)

  def val_batches(self):
    return None  # the config check refuses val_examples for streamed data

  def bn_batches(self, count):
    for i, (images, _) in enumerate(self._host_batches(0)):
      if i == count:
        return
      yield data_lib.normalize(
          jax.make_array_from_process_local_data(self._sharding, images),
          self._config.normalization)


def load(config: InputConfig, replicated, batch_sharding) -> TrainInput:
  """The adapter for ``config.dataset``, its data loaded (in-memory sets)."""
  if config.dataset in data_lib.STREAMED:
    return StreamInput(config, batch_sharding)
  data = data_lib.load(config.dataset, config.data_dir, config.train_subset,
                       config.test_subset, config.seed)
  data_lib.check_sizes(
      n_train=len(data.train_labels), n_test=len(data.test_labels),
      train_subset=config.train_subset, test_subset=0,
      val_examples=config.val_examples, batch_size=config.batch_size,
      where=config.dataset)
  data = data_lib.hold_out(data, config.val_examples, config.seed)
  return InMemoryInput(
      data, batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed,
      normalization=config.normalization, replicated=replicated,
      batch_sharding=batch_sharding)
