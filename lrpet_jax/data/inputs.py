"""Input adapters of the training loop: where each step's batch comes from.

An adapter (``TrainInput``) hands the compiled training call the batches of
``length`` steps from ``start``, stacked (``chunk_data``); the call takes
step k's batch as the k-th of the stack:

- ``InMemoryInput`` (CIFAR): the training set in host memory as uint8; a
  call receives its steps' global batches, stacked (each process filling its
  own devices' rows). Augmentation happens in the step, keyed by (seed,
  step).
- ``StreamInput`` (ImageNet): tf.data batches, augmented on the host, each
  process reading its own part of the files, stacked ``length`` at a time.

Evaluation batches are global arrays too, padded with label −1, so the
counts of a compiled evaluation are the global ones.

Either way a step's batch is a function of (seed, step) alone, so results do
not depend on how many steps a call runs, and a resumed run sees the batches
an uninterrupted one would. ``load`` builds the adapter a config names.
"""

from collections.abc import Iterable, Iterator
import dataclasses
import json
import pathlib
from typing import Any, Protocol

import jax
from jax.experimental import multihost_utils
import numpy as np

from lrpet_jax.data import augmentations
from lrpet_jax.data import datasets as data_lib
from lrpet_jax.data import hosts

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
  mean: tuple[float, ...]  # () for the data set's own (``load``)
  std: tuple[float, ...]
  image_size: int  # streamed data sets: the crop size
  # In-memory data sets: an epoch is this many passes over the training set.
  repeated_augmentation: int = 1
  # In-memory data sets: augmentations.Augmentation's fields.
  auto_augment: str = ""
  random_erasing: float = 0.0
  mix_prob: float = 0.0
  mixup_alpha: float = 1.0
  cutmix_beta: float = 1.0

  @property
  def normalization(self) -> data_lib.Normalization | None:
    """The given mean and std, or None (the data set's own)."""
    if not self.mean and not self.std:
      return None
    return data_lib.Normalization(tuple(self.mean), tuple(self.std))

  @property
  def augmentation(self) -> augmentations.Augmentation:
    return augmentations.Augmentation(
        auto_augment=self.auto_augment, random_erasing=self.random_erasing,
        mix_prob=self.mix_prob, mixup_alpha=self.mixup_alpha,
        cutmix_beta=self.cutmix_beta)


class TrainInput(Protocol):
  """What the training loop and the end of training read from a data set."""

  num_classes: int
  num_train: int
  input_shape: tuple[int, ...]  # (H, W, C) of one example
  steps_per_epoch: int
  # (mean, std) of the pixels in [0, 1], and where it comes from ("given",
  # "cifar10's constants", "computed from the 50,000 training images").
  normalization: data_lib.Normalization
  normalization_source: str
  decoder: str  # what decoded the images, with its version
  device_augment: bool  # the step augments (True) or the host did
  # What the step adds to crop + flip (device_augment only).
  augmentation: augmentations.Augmentation

  def chunk_data(self, start: int, length: int) -> Batch:
    """The global batches of steps ``start .. start + length − 1``, stacked:
    images (length, B, H, W, C), labels (length, B)."""

  def eval_batches(self) -> Iterable[Batch]:
    """The test set, unaugmented."""

  def val_batches(self) -> Iterable[Batch] | None:
    """The validation split, or None without one."""

  def bn_batches(self, count: int) -> Iterator[jax.Array]:
    """``count`` normalized training batches for the BatchNorm recomputation."""


def array_batches(images, labels, batch_size):
  for i in range(0, len(labels), batch_size):
    yield images[i:i + batch_size], labels[i:i + batch_size]


def _rows(array, padding):
  """``rows(index)`` of ``array``, with ``padding`` where the index is −1."""
  def rows(index):
    out = array[np.maximum(index, 0)]
    return np.where((index >= 0).reshape(index.shape + (1,) * (out.ndim
                                                              - index.ndim)),
                    out, padding)
  return rows


class InMemoryInput:
  """Small data sets (CIFAR): uint8 arrays in host memory, augmented in the step.

  Every process holds the data set and computes each step's global batch
  indices (a function of (seed, step)); each fills only its own devices'
  rows (``hosts.global_rows``), so the global batch is the same at any
  process and device count. Evaluation batches are padded to a multiple of
  the device count with label −1 (not counted).
  """

  device_augment = True

  def __init__(self, data: data_lib.InMemoryData, *, batch_size: int,
               eval_batch_size: int, seed: int,
               normalization: data_lib.Normalization, batch_sharding,
               passes: int = 1,
               augmentation: augmentations.Augmentation = (
                   augmentations.Augmentation()),
               normalization_source: str = "given", decoder: str = ""):
    self.data = data
    self.decoder = decoder
    self.normalization = normalization
    self.normalization_source = normalization_source
    self.num_classes = data.num_classes
    self.num_train = len(data.train_labels)
    self.input_shape = tuple(data.train_images.shape[1:])
    self.augmentation = augmentation
    self._passes = passes
    self.steps_per_epoch = self.num_train * passes // batch_size
    self._batch, self._eval_batch = batch_size, eval_batch_size
    self._seed = seed
    self._sharding = batch_sharding
    # Chunks of several steps stack batches on a leading axis.
    self._stacked = jax.sharding.NamedSharding(
        batch_sharding.mesh, jax.sharding.PartitionSpec(None, "data"))
    self._images = _rows(data.train_images, 0)
    self._labels = _rows(data.train_labels, -1)
    self._order = (None, None)  # (epoch, its example order)

  def _batch_index(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    if self._order[0] != epoch:
      self._order = (epoch, data_lib.epoch_order(self._seed, epoch,
                                                 self.num_train, self._passes))
    return self._order[1][i * self._batch:(i + 1) * self._batch]

  def chunk_data(self, start: int, length: int) -> Any:
    index = np.stack([self._batch_index(s)
                      for s in range(start, start + length)])
    return (hosts.global_rows(self._images, index, self._stacked),
            hosts.global_rows(self._labels, index, self._stacked))

  def _global_batches(self, images, labels):
    devices = self._sharding.mesh.size
    for i in range(0, len(labels), self._eval_batch):
      index = np.arange(i, min(i + self._eval_batch, len(labels)))
      index = np.pad(index, (0, hosts.pad_to(len(index), devices) - len(index)),
                     constant_values=-1)
      yield (hosts.global_rows(_rows(images, 0), index, self._sharding),
             hosts.global_rows(_rows(labels, -1), index, self._sharding))

  def eval_batches(self):
    return self._global_batches(self.data.test_images, self.data.test_labels)

  def val_batches(self):
    if self.data.val_labels is None:
      return None
    return self._global_batches(self.data.val_images, self.data.val_labels)

  def bn_batches(self, count):
    """Augmented training batches for the BN recomputation.

    Augmented as in training (as pycls' precise BN does): the network was
    trained under BatchNorm statistics of augmented batches, and statistics of
    clean images shift them (zero-padded crops move the stem's channel means);
    measured on a compact ResNet-20, clean-image statistics cost 4 points of
    test accuracy against the running ones, augmented ones none. Crop + flip
    only: ``augmentation``'s steps (the ViT recipe's, for a model without
    BatchNorm) are not applied here.
    """
    key = jax.random.split(jax.random.key(self._seed))[1]
    for i in range(count):
      index = data_lib.batch_indices(self._seed, i, self.num_train,
                                     self._batch)
      images = data_lib.augment(
          hosts.global_rows(self._images, index, self._sharding),
          jax.random.fold_in(key, i))
      yield data_lib.normalize(images, self.normalization)


class StreamInput:
  """ImageNet through tf.data, augmented on the host."""

  device_augment = False
  augmentation = augmentations.Augmentation()

  def __init__(self, config: InputConfig, batch_sharding):
    from lrpet_jax.data import imagenet  # pylint: disable=g-import-not-at-top
    self._lib = imagenet
    self._config = config
    self.builder = imagenet.builder(config.dataset, config.data_dir)
    self.num_classes = self.builder.info.features["label"].num_classes
    self.num_train = imagenet.process_split(
        self.builder, "train", drop_remainder=True)[1]
    self.input_shape = (config.image_size, config.image_size, 3)
    self.decoder = data_lib.decoder_of(config.dataset)
    # A streamed data set is a named one: its constants, unless given.
    self.normalization, self.normalization_source = resolve_normalization(
        config, train_images=None)
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

  def eval_batches(self):
    """This process's part of the validation split, as global batches: each
    process's batches padded to eval_batch_size / processes rows (label −1),
    and as many batches on every process (all take part in each)."""
    processes = jax.process_count()
    local = hosts.pad_to(self._config.eval_batch_size, processes) // processes
    n_local = self._lib.process_split(self.builder, "validation")[1]
    counts = multihost_utils.process_allgather(
        np.asarray(hosts.pad_to(n_local, local) // local))
    batches = self._lib.eval_batches(self.builder, batch_size=local,
                                     image_size=self._config.image_size)
    shape = (local,) + self.input_shape
    for _ in range(int(np.max(counts))):
      images, labels = next(batches, (np.zeros((0,) + shape[1:], np.uint8),
                                      np.zeros((0,), np.int32)))
      pad = local - len(labels)
      images = np.pad(images, ((0, pad),) + ((0, 0),) * 3)
      labels = np.pad(labels, (0, pad), constant_values=-1)
      yield (jax.make_array_from_process_local_data(self._sharding, images),
             jax.make_array_from_process_local_data(self._sharding, labels))

  def val_batches(self):
    return None  # the config check refuses val_examples for streamed data

  def bn_batches(self, count):
    for i, (images, _) in enumerate(self._host_batches(0)):
      if i == count:
        return
      yield data_lib.normalize(
          jax.make_array_from_process_local_data(self._sharding, images),
          self.normalization)


# Beside a run's checkpoints: the decoder and the mean and std its inputs had
# (``pipeline.records`` writes it; training, load_run and export read it).
INPUT_FILE = "input.json"


def recorded_normalization(workdir) -> data_lib.Normalization | None:
  """The (mean, std) in ``workdir``'s ``input.json``, or None."""
  path = pathlib.Path(workdir) / INPUT_FILE
  if not path.is_file():
    return None
  saved = json.loads(path.read_text())
  return data_lib.Normalization(tuple(saved["mean"]), tuple(saved["std"]))


def resolve_normalization(config: InputConfig, train_images,
                          cached: data_lib.Normalization | None = None
                          ) -> tuple[data_lib.Normalization, str]:
  """(normalization, where it comes from): the config's mean and std if
  given; else the named data set's constants; else (an image folder) the
  statistics of its training images (``data_lib.pixel_statistics``), or
  ``cached``, those a resumed run computed when it started."""
  if config.normalization:
    return config.normalization, "given"
  named = data_lib.named_normalization(config.dataset)
  if named is not None:
    return named, f"{config.dataset}'s constants"
  if cached is not None:
    return cached, "computed from the training images when the run started"
  return (data_lib.pixel_statistics(train_images),
          f"computed from the {len(train_images):,} training images")


def load(config: InputConfig, batch_sharding,
         cached_normalization: data_lib.Normalization | None = None
         ) -> TrainInput:
  """The adapter for ``config.dataset``, its data loaded (in-memory sets).

  Its ``normalization``: see ``resolve_normalization`` (``cached_normalization``:
  the one a resumed run computed)."""
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
  normalization, source = resolve_normalization(config, data.train_images,
                                                cached_normalization)
  return InMemoryInput(
      data, batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed,
      normalization=normalization, batch_sharding=batch_sharding,
      passes=config.repeated_augmentation,
      augmentation=config.augmentation, normalization_source=source,
      decoder=data_lib.decoder_of(config.dataset))
