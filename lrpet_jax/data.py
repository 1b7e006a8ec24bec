"""Input pipeline for small data sets held in memory (CIFAR-10/100).

Images stay uint8 on the device; augmentation (pad-4 random crop, horizontal
flip) and normalization run inside the jitted train step. Every epoch's order
and every augmentation draw derive from (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would.

``dataset`` names: ``cifar10`` and ``cifar100`` through ``tfds`` (with
``data_dir``), or ``image_folder:PATH`` through
``tfds.folder_dataset.ImageFolder`` (``train|test/<class>/*.jpg``). TensorFlow
is imported only here, lazily.
"""

import contextlib
import dataclasses
import glob
import logging
import os
import pathlib
import random
import shutil
import socket
import tempfile
from typing import NamedTuple
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np

TFDS_NAMES = ("cifar10", "cifar100")
STREAMED = ("imagenet2012",)  # through tf.data: lrpet_jax.imagenet_input


class Normalization(NamedTuple):
  """Per-channel mean and std of pixels scaled to [0, 1]: x ↦ (x − mean)/std."""

  mean: tuple[float, float, float]
  std: tuple[float, float, float]


# The constants the configs and the export command use, one set per data set.
NORMALIZATION = {
    # The authors' (and most CIFAR code's) constants.
    "cifar10": Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # torchvision's ImageNet constants.
    "imagenet2012": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclasses.dataclass(frozen=True)
class InMemoryData:
  train_images: np.ndarray  # (N, H, W, 3) uint8
  train_labels: np.ndarray  # (N,) int32
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  # Held out from the training set (``hold_out``); None without a validation split.
  val_images: np.ndarray | None = None
  val_labels: np.ndarray | None = None


def check_dataset_name(dataset: str) -> None:
  if dataset in TFDS_NAMES + STREAMED:
    return
  if dataset.startswith("image_folder:"):
    path = pathlib.Path(dataset.split(":", 1)[1])
    if not (path / "train").is_dir() or not (path / "test").is_dir():
      raise ValueError(
          f"dataset: {dataset!r} has no train/ and test/ folders at"
          f" {path.absolute()}")
    return
  raise ValueError(
      f"dataset: unknown {dataset!r}; use one of"
      f" {', '.join(TFDS_NAMES + STREAMED)} or"
      " image_folder:PATH")


def _subset(images, labels, n, seed):
  if not n or n >= len(labels):
    return images, labels
  keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:n])
  return images[keep], labels[keep]


def _reachable(host: str, timeout_s: float = 5.0) -> str | None:
  """None if ``host:443`` accepts a TCP connection, else the reason."""
  try:
    socket.create_connection((host, 443), timeout=timeout_s).close()
  except OSError as e:
    return f"{type(e).__name__}: {e}"
  return None


@contextlib.contextmanager
def _without_notice(prefix: str):
  """Drops the absl log records that start with ``prefix`` for a while."""
  def keep(record):
    return not str(record.msg).startswith(prefix)
  logger = logging.getLogger("absl")
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


@contextlib.contextmanager
def _no_tfds_tempdirs():
  """Removes the empty ``/tmp/tmp*tfds`` folders tfds leaves behind.

  ``DatasetInfo.initialize_from_bucket`` (tfds 4.9) makes a temporary folder
  for metadata from GCS and, when there is none (offline, or an ImageFolder),
  returns without removing it: one more folder per run.
  """
  pattern = str(pathlib.Path(tempfile.gettempdir()) / "tmp*tfds")
  before = set(glob.glob(pattern))
  try:
    yield
  finally:
    for path in set(glob.glob(pattern)) - before:
      try:
        os.rmdir(path)  # only if empty
      except OSError:
        pass


def _cause(e: BaseException) -> str:
  first = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def prepared_builder(dataset: str, data_dir: str | None, hint: str):
  """``tfds.builder(dataset)``, downloaded and prepared, or one-line ValueError.

  A data set that must be downloaded fails within seconds when its host
  (the builder's homepage) cannot be reached, instead of tfds' minutes of
  retries; whatever a failed download created under ``data_dir`` is removed.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    # "Variant folder ... has no dataset_info.json": a data set not there yet.
    with _without_notice("Variant folder"), _no_tfds_tempdirs():
      builder = tfds.builder(dataset, data_dir=data_dir)
      if builder.is_prepared():
        return builder
      homepage = builder.info.homepage
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"dataset: cannot open {dataset!r} ({_cause(e)});"
                     f" {hint}") from None
  root = pathlib.Path(builder.data_dir).parents[1]  # <root>/<name>/<version>
  created = [p for p in (root, root / "downloads", root / dataset)
             if not p.exists()]
  host = urllib.parse.urlparse(homepage or "").hostname
  mocked = type(builder).download_and_prepare.__module__.startswith(
      "tensorflow_datasets.testing")  # tfds.testing.mock_data downloads nothing
  if (host and not mocked
      and not getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)):
    reason = _reachable(host)
    if reason:
      raise ValueError(
          f"dataset: {dataset!r} is not prepared in {root} and its download"
          f" host {host} cannot be reached ({reason}); {hint}")
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    for p in created:
      shutil.rmtree(p, ignore_errors=True)
    raise ValueError(f"dataset: cannot load or download {dataset!r}"
                     f" ({_cause(e)}); {hint}") from None
  return builder


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_image_folder(root: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                          int]:
  """``root/<split>/<class>/<image>`` read with Pillow, in the order and with
  the labels of ``tfds.folder_dataset.ImageFolder``: labels index the sorted
  class names of all splits; each split's (class, file)-sorted list is shuffled
  by ``random.Random(split_name)``, as tfds does. The loader where
  tensorflow-datasets is not installed. Pixels may differ from tfds' by a few
  levels: TensorFlow decodes JPEG with the fast integer DCT, Pillow with the
  accurate one.

  Returns:
    ({split: (uint8 (N, H, W, 3) images, int32 (N,) labels)}, num_classes).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root)
  splits = {d.name: sorted(c for c in d.iterdir() if c.is_dir())
            for d in sorted(root.iterdir()) if d.is_dir()}
  names = sorted({c.name for classes in splits.values() for c in classes})
  arrays = {}
  for split, classes in splits.items():
    files = [(f, names.index(c.name)) for c in classes
             for f in sorted(c.iterdir())
             if f.suffix.lower() in _IMAGE_SUFFIXES]
    random.Random(split).shuffle(files)
    images = []
    for f, _ in files:
      with Image.open(f) as im:
        images.append(np.asarray(im.convert("RGB"), np.uint8))
    arrays[split] = (np.stack(images),
                     np.asarray([label for _, label in files], np.int32))
  return arrays, len(names)


def _read_with_tfds(dataset: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if dataset.startswith("image_folder:"):
    with _no_tfds_tempdirs():
      builder = tfds.folder_dataset.ImageFolder(dataset.split(":", 1)[1])
  else:
    builder = prepared_builder(
        dataset, data_dir, "point --config.data_dir at a prepared tfds"
        " directory or use --config.dataset=image_folder:PATH for a local copy")
  arrays = {}
  for split in ("train", "test"):
    chunks = list(tfds.as_numpy(builder.as_dataset(
        split=split, batch_size=4096, shuffle_files=False)))
    arrays[split] = (
        np.concatenate([c["image"] for c in chunks]).astype(np.uint8),
        np.concatenate([c["label"] for c in chunks]).astype(np.int32))
  return arrays, builder.info.features["label"].num_classes


def load(dataset: str, data_dir: str | None = None, train_subset: int = 0,
         test_subset: int = 0, seed: int = 0) -> InMemoryData:
  """Loads a whole small data set as uint8 arrays (optionally a seeded subset).

  Through tfds; an ``image_folder:PATH`` is read with Pillow
  (``read_image_folder``) where tensorflow-datasets is not installed.
  """
  check_dataset_name(dataset)
  try:
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    if not dataset.startswith("image_folder:"):
      raise ValueError(f"dataset: {dataset!r} needs tensorflow-datasets, which"
                       " is not installed") from None
    arrays, num_classes = read_image_folder(dataset.split(":", 1)[1])
  else:
    arrays, num_classes = _read_with_tfds(dataset, data_dir)
  train = _subset(*arrays["train"], train_subset, seed)
  test = _subset(*arrays["test"], test_subset, seed + 1)
  return InMemoryData(*train, *test, num_classes=num_classes)


def hold_out(data: InMemoryData, n: int, seed: int) -> InMemoryData:
  """``n`` training examples (a seeded draw) moved to a validation split."""
  total = len(data.train_labels)
  if not 0 <= n < total:
    raise ValueError(f"val_examples: {n} must be below the {total} training"
                     " examples")
  if not n:
    return data
  order = np.random.default_rng((seed, 0x76616C)).permutation(total)
  val, train = np.sort(order[:n]), np.sort(order[n:])
  return dataclasses.replace(
      data, train_images=data.train_images[train],
      train_labels=data.train_labels[train], val_images=data.train_images[val],
      val_labels=data.train_labels[val])


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The example order of ``epoch``: a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
  """Indices of the examples of global ``step`` (incomplete last batch dropped)."""
  steps_per_epoch = n // batch_size
  epoch, i = divmod(step, steps_per_epoch)
  return epoch_permutation(seed, epoch, n)[i * batch_size:(i + 1) * batch_size]


def normalize(images: jax.Array, normalization: Normalization) -> jax.Array:
  """uint8 (..., 3) → float32, (x/255 − mean)/std per channel."""
  mean, std = normalization
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def augment(images: jax.Array, key: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop after zero padding by ``pad`` and random horizontal flip.

  torchvision's recipe pads the image with black (0) pixels before
  normalization, so apply this to the uint8 images, then ``normalize``.

  Args:
    images: (B, H, W, C) uint8.
    key: PRNG key for this batch.
  """
  b, h, w, _ = images.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(
      im, (o[0], o[1], 0), (h, w, im.shape[-1])))(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], crop[:, :, ::-1, :], crop)
