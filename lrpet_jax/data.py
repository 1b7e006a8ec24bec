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

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

TFDS_NAMES = ("cifar10", "cifar100")
STREAMED = ("imagenet2012",)  # through tf.data: lrpet_jax.imagenet_input


@dataclasses.dataclass(frozen=True)
class InMemoryData:
  train_images: np.ndarray  # (N, H, W, 3) uint8
  train_labels: np.ndarray  # (N,) int32
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int


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


def prepared_builder(dataset: str, data_dir: str | None, hint: str):
  """``tfds.builder(dataset)``, downloaded and prepared, or one-line ValueError."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(dataset, data_dir=data_dir)
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"dataset: cannot load or download {dataset!r}"
                     f" ({type(e).__name__}); {hint}") from None
  return builder


def load(dataset: str, data_dir: str | None = None, train_subset: int = 0,
         test_subset: int = 0, seed: int = 0) -> InMemoryData:
  """Loads a whole small data set as uint8 arrays (optionally a seeded subset)."""
  check_dataset_name(dataset)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if dataset.startswith("image_folder:"):
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
  train = _subset(*arrays["train"], train_subset, seed)
  test = _subset(*arrays["test"], test_subset, seed + 1)
  return InMemoryData(*train, *test,
                      num_classes=builder.info.features["label"].num_classes)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The example order of ``epoch``: a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
  """Indices of the examples of global ``step`` (incomplete last batch dropped)."""
  steps_per_epoch = n // batch_size
  epoch, i = divmod(step, steps_per_epoch)
  return epoch_permutation(seed, epoch, n)[i * batch_size:(i + 1) * batch_size]


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 (..., 3) → float32, (x/255 − mean)/std per channel."""
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
