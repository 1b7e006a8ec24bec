"""Input pipeline for small data sets held in memory (CIFAR-10/100).

Images are uint8 until the jitted train step, where augmentation (pad-4
random crop, horizontal flip) and normalization run on the device. Every epoch's order
and every augmentation draw derive from (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would.

``dataset`` names: ``cifar10`` and ``cifar100`` through ``tfds`` (with
``data_dir``; the ``tfds`` extra, imported only here, lazily), or
``image_folder:PATH`` (``train|test/<class>/*.jpg``), decoded by Pillow
whatever else is installed (``decoder``), in the order and with the labels
``tfds.folder_dataset.ImageFolder`` gives.

An image folder's rule (``index_image_folder``): .jpg/.jpeg/.png files are
images, other files are skipped with one warning; every image is decoded to
RGB (grayscale replicated, a palette expanded, alpha dropped); all images
must have one size; every class needs images in train/ and test/. A folder
that breaks the rule, an image that cannot be decoded, or a subset larger
than the data is refused in one line naming the file, folder or field.
"""

import contextlib
import dataclasses
import glob
import importlib.util
import logging
import os
import pathlib
import random
import shutil
import socket
import sys
import tempfile
from typing import NamedTuple
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np

# How to install what the named (tfds) data sets and streamed ImageNet need.
TFDS_EXTRA = ("install the tfds extra: python3 -m pip install -e '.[tfds]'"
              " (pinned: -r requirements-tfds.txt)")


def has_tfds() -> bool:
  """Whether tensorflow-datasets can be imported (without importing it)."""
  if "tensorflow_datasets" in sys.modules:
    return sys.modules["tensorflow_datasets"] is not None
  return importlib.util.find_spec("tensorflow_datasets") is not None


def tfds_module():
  """``tensorflow_datasets``, imported quietly (without its oneDNN kernels
  TensorFlow prints no notice about them; a user's own environment settings
  win)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  import tensorflow_datasets  # pylint: disable=g-import-not-at-top
  return tensorflow_datasets


TFDS_NAMES = ("cifar10", "cifar100")
STREAMED = ("imagenet2012",)  # through tf.data: lrpet_jax.data.imagenet


class Normalization(NamedTuple):
  """Per-channel mean and std of pixels scaled to [0, 1]: x ↦ (x − mean)/std."""

  mean: tuple[float, float, float]
  std: tuple[float, float, float]


# The constants of the named data sets (a config's empty mean/std means these,
# or an image folder's own statistics: ``pixel_statistics``).
NORMALIZATION = {
    # The authors' (and most CIFAR code's) constants.
    "cifar10": Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # torchvision's ImageNet constants.
    "imagenet2012": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def pixel_statistics(images: np.ndarray, chunk: int = 4096) -> Normalization:
  """Per-channel mean and std of ``images`` (N, H, W, C) uint8 scaled to
  [0, 1], over every pixel of every image (float64 sums, ``chunk`` images at
  a time): mean_c = Σx/n, std_c = sqrt(Σx²/n − mean_c²)."""
  if not len(images):
    raise ValueError("dataset: no training images to compute the mean and"
                     " std from")
  total = np.zeros(images.shape[-1])
  squares = np.zeros(images.shape[-1])
  for i in range(0, len(images), chunk):
    x = images[i:i + chunk].reshape(-1, images.shape[-1]).astype(np.float64)
    total += x.sum(0)
    squares += np.square(x).sum(0)
  n = images[..., 0].size
  mean = total / n
  std = np.sqrt(np.maximum(squares / n - np.square(mean), 0.0))
  if np.any(std == 0):
    raise ValueError("dataset: a channel of the training images is constant"
                     " (std 0); set --config.mean and --config.std")
  return Normalization(tuple(float(v) / 255 for v in mean),
                       tuple(float(v) / 255 for v in std))


def named_normalization(dataset: str) -> Normalization | None:
  """The constants of a named data set (cifar100 shares cifar10's), or None
  for an image folder (its statistics come from its images)."""
  if dataset.startswith("image_folder:"):
    return None
  return NORMALIZATION.get("cifar10" if dataset == "cifar100" else dataset)


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
  """A known name, or an ``image_folder:PATH`` that ``index_image_folder``
  accepts; else a one-line ValueError naming ``dataset``."""
  if dataset in TFDS_NAMES + STREAMED:
    if not has_tfds():
      raise ValueError(f"dataset: {dataset!r} needs tensorflow-datasets:"
                       f" {TFDS_EXTRA}")
    return
  if dataset.startswith("image_folder:"):
    index_image_folder(dataset.split(":", 1)[1])
    return
  raise ValueError(
      f"dataset: unknown {dataset!r}; use one of"
      f" {', '.join(TFDS_NAMES + STREAMED)} or"
      " image_folder:PATH")


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """What an image folder holds, from listing it (nothing is decoded)."""

  root: pathlib.Path
  classes: tuple[str, ...]  # the class folder names of every split: labels
  counts: dict[str, int]    # images in train/ and test/
  skipped: tuple[str, ...]  # files that are not images, ignored


def index_image_folder(root) -> FolderIndex:
  """Lists ``root/<split>/<class>/<image>`` and checks its shape.

  The rule (what tfds' ImageFolder reads): images are the files ending in
  .jpg, .jpeg or .png (any case); other files are skipped (``skipped``;
  ``load`` warns once). Every class (a folder in any split) needs a folder
  with at least one image in both train/ and test/.

  Raises:
    ValueError: one line naming ``dataset`` and the folder at fault.
  """
  root = pathlib.Path(root)
  if not (root / "train").is_dir() or not (root / "test").is_dir():
    raise ValueError(f"dataset: 'image_folder:{root}' has no train/ and test/"
                     f" folders at {root.absolute()}")
  splits = {d.name: {c.name for c in d.iterdir() if c.is_dir()}
            for d in root.iterdir() if d.is_dir()}
  classes = sorted(set().union(*splits.values()))
  counts, skipped = {}, []
  for split in ("train", "test"):
    for name in classes:
      if name not in splits[split]:
        raise ValueError(f"dataset: class {name!r} has no folder in"
                         f" {root / split} (every class needs images in train/"
                         " and test/)")
      files = [f for f in os.scandir(root / split / name) if f.is_file()]
      images = [f for f in files if f.name.lower().endswith(_IMAGE_SUFFIXES)]
      if not images:
        raise ValueError(f"dataset: {root / split / name} holds no images"
                         " (.jpg, .jpeg or .png files)")
      skipped += sorted(f.path for f in files
                        if not f.name.lower().endswith(_IMAGE_SUFFIXES))
      counts[split] = counts.get(split, 0) + len(images)
  return FolderIndex(root, tuple(classes), counts, tuple(skipped))


def check_sizes(*, n_train: int, n_test: int, train_subset: int,
                test_subset: int, val_examples: int, batch_size: int,
                where: str) -> None:
  """Subsets within the data and a batch within the training set; a one-line
  ValueError names the field (``where``: the data set, for the message)."""
  if train_subset > n_train:
    raise ValueError(f"train_subset: {train_subset} exceeds the {n_train}"
                     f" training images of {where}")
  if test_subset > n_test:
    raise ValueError(f"test_subset: {test_subset} exceeds the {n_test} test"
                     f" images of {where}")
  available = train_subset or n_train
  of = f" (train_subset={train_subset})" if train_subset else f" of {where}"
  if val_examples >= available:
    raise ValueError(f"val_examples: {val_examples} leaves none of the"
                     f" {available} training images{of} to train on")
  if batch_size > available - val_examples:
    held = f", {val_examples} held out" if val_examples else ""
    raise ValueError(f"batch_size: {batch_size} exceeds the"
                     f" {available - val_examples} training images{of}{held}")


def check_images(index: FolderIndex, decode: bool = False,
                 files: list[pathlib.Path] | None = None) -> None:
  """Every image opens and all have one size (tfds would zero-pad smaller
  ones to the largest), or a one-line ValueError names the first that does
  not. Reads headers only (about 2 s for CIFAR-10's 60,000 files), or with
  ``decode`` every pixel (after a failed read, to name the file); ``files``:
  only these (the ones a subset reads)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  first = None
  for path in files if files is not None else _image_paths(index):
    try:
      with Image.open(path) as im:
        if decode:
          im.load()
        size = im.size
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"dataset: cannot decode {path} ({_cause(e)})"
                       ) from None
    if first is None:
      first = (path, size)
    elif size != first[1]:
      raise ValueError(
          f"dataset: {path} is {size[0]}x{size[1]} but {first[0]} is"
          f" {first[1][0]}x{first[1][1]}: every image must have one size"
          " (resize them first)")


def _image_paths(index: FolderIndex):
  for split in ("train", "test"):
    for name in index.classes:
      for f in sorted(os.scandir(index.root / split / name),
                      key=lambda f: f.name):
        if f.name.lower().endswith(_IMAGE_SUFFIXES):
          yield f.path


def _subset_index(total: int, n: int, seed: int) -> np.ndarray:
  """The sorted indices of the seeded subset of ``n`` of ``total`` examples
  (all of them for n = 0 or n ≥ total)."""
  if not n or n >= total:
    return np.arange(total)
  return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def _subset(images, labels, n, seed):
  keep = _subset_index(len(labels), n, seed)
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
  tfds = tfds_module()
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


def folder_files(root) -> tuple[dict[str, list[tuple[pathlib.Path, int]]],
                                int]:
  """({split: [(file, label)]}, num_classes) of ``root/<split>/<class>/<image>``
  in the order and with the labels of ``tfds.folder_dataset.ImageFolder``:
  labels index the sorted class names of all splits; each split's (class,
  file)-sorted list is shuffled by ``random.Random(split_name)``, as tfds
  does."""
  root = pathlib.Path(root)
  splits = {d.name: sorted(c for c in d.iterdir() if c.is_dir())
            for d in sorted(root.iterdir()) if d.is_dir()}
  names = sorted({c.name for classes in splits.values() for c in classes})
  out = {}
  for split, classes in splits.items():
    files = [(f, names.index(c.name)) for c in classes
             for f in sorted(c.iterdir())
             if f.suffix.lower() in _IMAGE_SUFFIXES]
    random.Random(split).shuffle(files)
    out[split] = files
  return out, len(names)


def decoder() -> str:
  """The image decoder of image folders, with the versions that fix its
  pixels: Pillow and the libjpeg / zlib it was built with (recorded in
  every run's ``input.json`` and summary)."""
  import PIL  # pylint: disable=g-import-not-at-top
  from PIL import features  # pylint: disable=g-import-not-at-top
  jpeg = (f"libjpeg-turbo {features.version_feature('libjpeg_turbo')}"
          if features.check_feature("libjpeg_turbo")
          else f"libjpeg {features.version('jpg')}")
  return f"Pillow {PIL.__version__} ({jpeg}, zlib {features.version('zlib')})"


def decoder_of(dataset: str) -> str:
  """What decodes ``dataset``'s images: Pillow (``decoder``) for an image
  folder, TensorFlow through tfds for the named data sets."""
  if dataset.startswith("image_folder:"):
    return decoder()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return (f"tensorflow-datasets {tfds_module().__version__} (TensorFlow"
          f" {tf.__version__})")


def _decode_one(path: pathlib.Path) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), np.uint8)


def _decode(files: list[tuple[pathlib.Path, int]]
            ) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 (N, H, W, 3) images, int32 (N,) labels) of ``files``, decoded by
  Pillow (``decoder``), whatever else is installed (one thread: threads
  were slower on CIFAR's small images, 1.6 s against 1.1 s for 5,000)."""
  images = [_decode_one(f) for f, _ in files]
  return (np.stack(images).astype(np.uint8),
          np.asarray([label for _, label in files], np.int32))


def read_image_folder(root: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                          int]:
  """``root/<split>/<class>/<image>`` decoded by Pillow (``decoder``), in
  the order and with the labels of ``tfds.folder_dataset.ImageFolder``
  (``folder_files``).

  Returns:
    ({split: (uint8 (N, H, W, 3) images, int32 (N,) labels)}, num_classes).
  """
  files, num_classes = folder_files(root)
  return {split: _decode(f) for split, f in files.items()}, num_classes


def subset_files(root, subsets: dict[str, tuple[int, int]]
                 ) -> tuple[dict[str, list[tuple[pathlib.Path, int]]], int]:
  """({split: [(file, label)]}, num_classes) of the seeded subsets
  ``{split: (n, seed)}`` of an image folder: the examples ``load`` would cut
  from the whole folder, in the same order."""
  files, num_classes = folder_files(root)
  return {split: [files[split][i] for i in _subset_index(len(files[split]),
                                                         n, seed)]
          for split, (n, seed) in subsets.items()}, num_classes


def read_folder_subsets(root, subsets: dict[str, tuple[int, int]]
                        ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                   int]:
  """The seeded subsets ``{split: (n, seed)}`` of an image folder, decoding
  only their files (``subset_files``): the arrays ``load`` would cut from
  the whole folder, in a fraction of the time."""
  chosen, num_classes = subset_files(root, subsets)
  return ({split: _decode(f) for split, f in chosen.items()}, num_classes)


def _read_with_tfds(dataset: str, data_dir: str | None):
  tfds = tfds_module()
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

  Named data sets through tfds (the ``tfds`` extra); an
  ``image_folder:PATH`` with Pillow (``read_image_folder``), and with both
  subsets given, only their files (``read_folder_subsets``: the same
  arrays).
  """
  check_dataset_name(dataset)
  if dataset.startswith("image_folder:") and train_subset and test_subset:
    index = index_image_folder(dataset.split(":", 1)[1])
    check_sizes(n_train=index.counts["train"], n_test=index.counts["test"],
                train_subset=train_subset, test_subset=test_subset,
                val_examples=0, batch_size=0, where=dataset)
    arrays, num_classes = _read_folder(index, {
        "train": (train_subset, seed), "test": (test_subset, seed + 1)})
    return InMemoryData(*arrays["train"], *arrays["test"],
                        num_classes=num_classes)
  if dataset.startswith("image_folder:"):
    arrays, num_classes = _read_folder(
        index_image_folder(dataset.split(":", 1)[1]))
  else:
    try:
      tfds_module()
    except ImportError:
      raise ValueError(f"dataset: {dataset!r} needs tensorflow-datasets:"
                       f" {TFDS_EXTRA}") from None
    arrays, num_classes = _read_with_tfds(dataset, data_dir)
  check_sizes(n_train=len(arrays["train"][1]), n_test=len(arrays["test"][1]),
              train_subset=train_subset, test_subset=test_subset,
              val_examples=0, batch_size=0, where=dataset)
  train = _subset(*arrays["train"], train_subset, seed)
  test = _subset(*arrays["test"], test_subset, seed + 1)
  return InMemoryData(*train, *test, num_classes=num_classes)


def _read_folder(index: FolderIndex, subsets=None):
  """An image folder's arrays, decoded by Pillow (with ``subsets``,
  {split: (n, seed)}, only those examples: ``read_folder_subsets``); its
  images checked first, and a read that fails diagnosed by name
  (``check_images``)."""
  if index.skipped:
    logging.getLogger("absl").warning(
        "%d file(s) in %s are not .jpg/.jpeg/.png images and are skipped, e.g."
        " %s", len(index.skipped), index.root, index.skipped[0])
  chosen = files = None
  if subsets:
    chosen, num_classes = subset_files(index.root, subsets)
    files = [f for split in chosen.values() for f, _ in split]
  check_images(index, files=files)
  try:
    if chosen is not None:
      return {split: _decode(f) for split, f in chosen.items()}, num_classes
    return read_image_folder(index.root)
  except Exception as e:  # pylint: disable=broad-except
    check_images(index, decode=True, files=files)  # names the file, if
    # Pillow agrees
    raise ValueError(f"dataset: cannot read {index.root} ({_cause(e)})"
                     ) from None


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


def epoch_order(seed: int, epoch: int, n: int, passes: int = 1) -> np.ndarray:
  """The example order of ``epoch`` when an epoch is ``passes`` passes over
  the ``n`` examples, each in a new order: their ``RASampler(len_factor=passes)``
  ("repeated augmentation"). One pass is ``epoch_permutation``."""
  orders = [epoch_permutation(seed, epoch, n)]
  orders += [np.random.default_rng([seed, epoch, j]).permutation(n)
             for j in range(1, passes)]
  return np.concatenate(orders)


def batch_indices(seed: int, step: int, n: int, batch_size: int,
                  passes: int = 1) -> np.ndarray:
  """Indices of the examples of global ``step``: ``n · passes // batch_size``
  steps per epoch (``epoch_order``; the incomplete last batch dropped)."""
  steps_per_epoch = n * passes // batch_size
  epoch, i = divmod(step, steps_per_epoch)
  return epoch_order(seed, epoch, n, passes)[i * batch_size:
                                             (i + 1) * batch_size]


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
