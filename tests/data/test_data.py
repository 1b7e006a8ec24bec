"""Data loading (tfds path under mock_data, image folders) and augmentation."""

import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpet_jax.data import datasets


@pytest.mark.slow  # over 6 s: the fast tier stays near 2 minutes
def test_tfds_cifar10_path_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=40):
    d = datasets.load("cifar10", train_subset=24)
  assert d.train_images.shape == (24, 32, 32, 3)
  assert d.train_images.dtype == np.uint8 and d.train_labels.dtype == np.int32
  assert d.test_images.shape == (40, 32, 32, 3) and d.num_classes == 10


def test_unreachable_download_host_fails_fast_without_litter(tmp_path,
                                                           monkeypatch):
  # Offline and an empty data_dir: one line naming the host and the fix,
  # before tfds' minutes of retries, and nothing left in data_dir.
  pytest.importorskip("tensorflow_datasets")
  asked = []
  def offline(host, timeout_s=5.0):
    asked.append(host)
    return "gaierror: Name or service not known"
  monkeypatch.setattr(datasets, "_reachable", offline)
  root = tmp_path / "tfds"
  with pytest.raises(ValueError) as e:
    datasets.load("cifar100", data_dir=str(root))
  message = str(e.value)
  assert "\n" not in message
  assert "www.cs.toronto.edu cannot be reached" in message
  assert "Name or service not known" in message and "image_folder:PATH" in message
  assert asked == ["www.cs.toronto.edu"]
  assert not root.exists()


def test_failed_download_names_the_cause_and_cleans_up(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(datasets, "_reachable", lambda host, timeout_s=5.0: None)
  root = tmp_path / "tfds"
  (root / "kept").mkdir(parents=True)  # was there before: stays
  def broken(self, *args, **kwargs):
    (root / "downloads" / "cifar10").mkdir(parents=True)
    (root / "cifar10" / "3.0.2").mkdir(parents=True)
    raise ModuleNotFoundError("No module named 'importlib_resources'")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", broken)
  with pytest.raises(ValueError, match=r"cannot load or download 'cifar10'"
                     r" \(ModuleNotFoundError: No module named"
                     r" 'importlib_resources'\)"):
    datasets.load("cifar10", data_dir=str(root))
  assert sorted(p.name for p in root.iterdir()) == ["kept"]


@pytest.mark.parametrize("name", ["mnist", "image_folder:/nonexistent"])
def test_bad_dataset_names(name):
  with pytest.raises(ValueError, match="dataset"):
    datasets.check_dataset_name(name)


def test_batches_are_a_function_of_seed_and_step():
  n, b = 100, 32  # 3 steps per epoch
  first_epoch = np.concatenate([datasets.batch_indices(0, s, n, b)
                                for s in range(3)])
  assert len(set(first_epoch)) == 96  # no repeats inside an epoch
  np.testing.assert_array_equal(datasets.batch_indices(0, 4, n, b),
                                datasets.batch_indices(0, 4, n, b))
  assert not np.array_equal(datasets.batch_indices(0, 1, n, b),
                            datasets.batch_indices(0, 4, n, b))  # epoch 1 reshuffled
  assert not np.array_equal(datasets.batch_indices(0, 1, n, b),
                            datasets.batch_indices(1, 1, n, b))


def test_augment_crops_and_flips():
  img = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
  out = np.asarray(datasets.augment(jnp.asarray(img), jax.random.key(0), pad=2))
  padded = np.pad(img, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(2):
    candidates = [padded[i, y:y + 8, x:x + 8] for y in range(5)
                  for x in range(5)]
    candidates += [c[:, ::-1] for c in candidates]
    assert any(np.array_equal(out[i], c) for c in candidates)


def test_normalize():
  x = datasets.normalize(jnp.full((1, 1, 1, 3), 255, jnp.uint8),
                     datasets.Normalization((0.5, 0.5, 0.5), (0.25, 0.5, 1.0)))
  np.testing.assert_allclose(np.asarray(x).ravel(), [2.0, 1.0, 0.5])


def test_image_folders_have_tfds_order_and_labels(tmp_path):
  """Pillow decodes; the order and labels are tfds ImageFolder's (the
  reference), and the pixels its TensorFlow decoder's within a few levels."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  # Class names whose sorted order differs from creation order; a non-image
  # file that both readers must skip.
  for split, classes in (("train", ("zebra", "ant", "moth")),
                         ("test", ("moth", "zebra", "ant"))):
    for c in classes:
      d = tmp_path / split / c
      d.mkdir(parents=True)
      for i in (3, 1, 2):
        img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / f"img{i}.jpg", quality=90)
      (d / "notes.txt").write_text("not an image")
  loaded = datasets.load(f"image_folder:{tmp_path}")
  builder = tfds.folder_dataset.ImageFolder(str(tmp_path))
  assert builder.info.features["label"].num_classes == loaded.num_classes == 3
  for split, images, labels in (
      ("train", loaded.train_images, loaded.train_labels),
      ("test", loaded.test_images, loaded.test_labels)):
    want = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1,
                                            shuffle_files=False))
    np.testing.assert_array_equal(want["label"], labels)
    # Same images in the same order; TF's fast DCT vs Pillow's accurate one
    # differ by a few levels on these noise images (same image: ≤ 8, others
    # differ by ~85 on average).
    diff = np.abs(want["image"].astype(int) - images.astype(int))
    assert diff.max() <= 8 and diff.mean() < 2, (split, diff.max())
  # ant=0, moth=1, zebra=2, three files each.
  assert sorted(loaded.train_labels) == [0] * 3 + [1] * 3 + [2] * 3
  assert sorted(loaded.test_labels) == [0] * 3 + [1] * 3 + [2] * 3


SHARED_CIFAR10 = pathlib.Path(__file__).resolve().parents[3] / "shared" / (
    "datasets/cifar10")
_DECODE = """
import sys, numpy as np
if sys.argv[2] == "hidden":
  sys.modules["tensorflow"] = sys.modules["tensorflow_datasets"] = None
else:
  import tensorflow_datasets, tensorflow  # importable, and imported first
from lrpet_jax.data import datasets
d = datasets.load("image_folder:" + sys.argv[1], None, 300, 200, 7)
np.savez(sys.argv[3], train=d.train_images, test=d.test_images)
print(datasets.decoder_of("image_folder:x"))
"""


@pytest.mark.skipif(not SHARED_CIFAR10.is_dir(), reason="no shared CIFAR-10")
def test_the_same_pixels_with_and_without_tensorflow(tmp_path):
  """One decoder whatever is installed: the shared CIFAR-10 copy's JPEGs
  read with TensorFlow hidden and with it imported are the same arrays."""
  pytest.importorskip("tensorflow_datasets")
  got, names = {}, {}
  for mode in ("hidden", "imported"):
    done = subprocess.run(
        [sys.executable, "-c", _DECODE, str(SHARED_CIFAR10), mode,
         str(tmp_path / f"{mode}.npz")], capture_output=True, text=True,
        timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    got[mode] = np.load(tmp_path / f"{mode}.npz")
    names[mode] = done.stdout.strip()
  for split in ("train", "test"):
    np.testing.assert_array_equal(got["hidden"][split],
                                  got["imported"][split])
  assert names["hidden"] == names["imported"]
  assert names["hidden"].startswith("Pillow ")


def test_without_tfds_image_folders_load_and_tfds_names_fail(tmp_path,
                                                             monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split in ("train", "test"):
    for c in ("a", "b"):
      (tmp_path / split / c).mkdir(parents=True)
      for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 60 * i + (c == "b") * 100,
                                np.uint8)).save(tmp_path / split / c / f"{i}.png")
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # ImportError
  loaded = datasets.load(f"image_folder:{tmp_path}")
  assert loaded.num_classes == 2 and loaded.train_images.shape == (4, 8, 8, 3)
  # PNG is lossless: each image's pixel value names its class and index.
  for images, labels in ((loaded.train_images, loaded.train_labels),
                         (loaded.test_images, loaded.test_labels)):
    assert sorted(int(v) for v in images[:, 0, 0, 0]) == [0, 60, 100, 160]
    np.testing.assert_array_equal(labels, images[:, 0, 0, 0] >= 100)
  with pytest.raises(ValueError, match=r"^dataset: 'cifar10' needs"
                     r" tensorflow-datasets: install the tfds extra: python3 -m"
                     r" pip install -e '\.\[tfds\]'"):
    datasets.load("cifar10")


def two_class_folder(root, n, size, suffix, low=0, **save):
  """Classes a and b, ``n`` random ``size``² images each in train/ and test/."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in ("a", "b"):
      (root / split / c).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(low, 255, (size, size, 3), np.uint8)
                        ).save(root / split / c / f"{i}{suffix}", **save)


def test_precise_bn_batches_are_augmented_training_batches(tmp_path):
  """Each BN-recompute image is a pad-4 crop (+ flip) of its training image."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from lrpet_jax.data import inputs  # pylint: disable=g-import-not-at-top
  two_class_folder(tmp_path, 4, 8, ".png", low=1)
  config = inputs.InputConfig(
      dataset=f"image_folder:{tmp_path}", data_dir=None, train_subset=0,
      test_subset=0, val_examples=0, seed=0, batch_size=8, eval_batch_size=8,
      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), image_size=8)
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  source = inputs.load(config, NamedSharding(mesh, P("data")))
  (batch,) = list(source.bn_batches(1))
  idx = datasets.batch_indices(0, 0, 8, 8)
  clean = source.data.train_images[idx].astype(np.float32) / 255.0
  padded = np.pad(clean, ((0, 0), (4, 4), (4, 4), (0, 0)))
  changed = 0
  for out, img in zip(np.asarray(batch), padded):
    views = [img[y:y + 8, x:x + 8] for y in range(9) for x in range(9)]
    views += [v[:, ::-1] for v in views]
    assert min(np.abs(out - v).max() for v in views) < 1e-6
    changed += not np.allclose(out, img[4:12, 4:12])
  assert changed >= 4  # not the clean images


@pytest.mark.slow  # over 6 s: the fast tier stays near 2 minutes
def test_tfds_leaves_no_temporary_folders(tmp_path, monkeypatch):
  """tfds makes an empty tmp*tfds folder per builder (without the cleanup,
  one is left here) and leaves it."""
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(datasets.tempfile, "tempdir", str(tmp_path))
  with tfds.testing.mock_data(num_examples=8):
    d = datasets.load("cifar10", train_subset=4)
  assert len(d.train_labels) == 4
  assert not list(tmp_path.glob("tmp*tfds"))


def png_folder_at(root, size=(8, 8), classes=("a", "b"), n=2, mode="RGB"):
  """root/{train,test}/<class>/<i>.png, lossless, of one size and mode."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
  for split in ("train", "test"):
    for c in classes:
      (root / split / c).mkdir(parents=True, exist_ok=True)
      for i in range(n):
        pixels = rng.integers(0, 255, size[::-1] + (channels,), np.uint8)
        Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels,
                        mode).save(root / split / c / f"{i}.png")
  return root


@pytest.mark.parametrize("break_it, message", [
    # A class the test split has and train/ lacks (and the reverse).
    (lambda r: shutil.rmtree(r / "train" / "b"),
     "dataset: class 'b' has no folder in {r}/train"),
    (lambda r: shutil.rmtree(r / "test" / "a"),
     "dataset: class 'a' has no folder in {r}/test"),
    # An empty class folder (or one of non-images only).
    (lambda r: [f.unlink() for f in (r / "test" / "b").iterdir()],
     "dataset: {r}/test/b holds no images"),
    # An image that cannot be decoded.
    (lambda r: (r / "train" / "a" / "1.png").write_bytes(b"\x89PNG garbage"),
     "dataset: cannot decode {r}/train/a/1.png"),
    # An image of another size.
    (lambda r: png_folder_at(r, size=(10, 8), classes=("b",), n=1),
     "dataset: {r}/train/b/0.png is 10x8 but {r}/train/a/0.png is 8x8: every"
     " image must have one size"),
])
def test_a_broken_folder_is_refused_by_name(tmp_path, break_it, message):
  root = png_folder_at(tmp_path / "data")
  break_it(root)
  with pytest.raises(ValueError) as e:
    datasets.load(f"image_folder:{root}")
  assert str(e.value).startswith(message.format(r=root)), str(e.value)
  assert "\n" not in str(e.value)


def test_grayscale_and_alpha_become_rgb_and_other_files_are_skipped(
    tmp_path, caplog):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = png_folder_at(tmp_path / "data")
  gray = png_folder_at(tmp_path / "gray", mode="L")
  rgba = png_folder_at(tmp_path / "rgba", mode="RGBA")
  (root / "train" / "a" / "notes.txt").write_text("not an image")
  with caplog.at_level("WARNING"):
    loaded = datasets.load(f"image_folder:{root}")
  assert any("1 file(s) in" in m and "notes.txt" in m
             for m in caplog.messages)
  assert len(loaded.train_labels) == 4
  for folder in (gray, rgba):
    got = datasets.load(f"image_folder:{folder}")
    assert got.train_images.shape == (4, 8, 8, 3)
    want = sorted(np.asarray(Image.open(f).convert("RGB")).tobytes()
                  for f in (folder / "train").rglob("*.png"))
    assert sorted(im.tobytes() for im in got.train_images) == want


def test_sizes_are_checked_naming_the_field():
  kw = dict(n_train=40, n_test=10, train_subset=0, test_subset=0,
            val_examples=0, batch_size=32, where="image_folder:X")
  datasets.check_sizes(**kw)
  for change, message in (
      (dict(train_subset=1024), "train_subset: 1024 exceeds the 40 training"),
      (dict(test_subset=11), "test_subset: 11 exceeds the 10 test images"),
      (dict(train_subset=5), "batch_size: 32 exceeds the 5 training images"
       " (train_subset=5)"),
      (dict(val_examples=40), "val_examples: 40 leaves none of the 40"),
      (dict(val_examples=20), "batch_size: 32 exceeds the 20 training images"
       " of image_folder:X, 20 held out")):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
      datasets.check_sizes(**{**kw, **change})


def test_a_corrupt_jpeg_is_named(tmp_path):
  # Its header is fine (sizes pass), its data is cut short: TensorFlow's
  # decoder fails mid-read, and the file is found and named.
  two_class_folder(tmp_path, 2, 32, ".jpg", quality=90)
  bad = tmp_path / "test" / "b" / "1.jpg"
  bad.write_bytes(bad.read_bytes()[:400])
  with pytest.raises(ValueError, match=f"^dataset: cannot decode {bad} "):
    datasets.load(f"image_folder:{tmp_path}")


def test_subsets_of_an_image_folder_read_alone_are_the_subsets_of_the_whole(
    tmp_path):
  """With both subsets, only their files are decoded: the same examples, in
  the same order, with the same pixels (real CIFAR-10 JPEGs when the shared
  copy is there, else generated ones) as cut from the whole folder."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  cifar = (pathlib.Path(__file__).resolve().parents[3] / "shared" / "datasets"
           / "cifar10")
  rng = np.random.default_rng(0)
  for split, n in (("train", 12), ("test", 4)):
    for c in ("cat", "ant", "dog"):
      d = tmp_path / split / c
      d.mkdir(parents=True)
      real = sorted((cifar / split / c).glob("*.jpg"))[:n] if (
          cifar / split / c).is_dir() else []
      for i in range(n):
        if real:
          (d / real[i].name).symlink_to(real[i])
        else:
          img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
          Image.fromarray(img).save(d / f"{i}.jpg", quality=95)
  name = f"image_folder:{tmp_path}"
  whole = datasets.load(name)
  for seed in (0, 3):
    alone = datasets.load(name, train_subset=20, test_subset=5, seed=seed)
    train = np.sort(np.random.default_rng(seed).permutation(36)[:20])
    test = np.sort(np.random.default_rng(seed + 1).permutation(12)[:5])
    np.testing.assert_array_equal(alone.train_images, whole.train_images[train])
    np.testing.assert_array_equal(alone.train_labels, whole.train_labels[train])
    np.testing.assert_array_equal(alone.test_images, whole.test_images[test])
    np.testing.assert_array_equal(alone.test_labels, whole.test_labels[test])
  # The whole-folder reader and the subset reader: the same pixels.
  files, _ = datasets.folder_files(tmp_path)
  pillow = datasets.read_image_folder(str(tmp_path))[0]
  alone = datasets.read_folder_subsets(tmp_path, {"train": (20, 0)})[0]
  keep = np.sort(np.random.default_rng(0).permutation(36)[:20])
  np.testing.assert_array_equal(alone["train"][0], pillow["train"][0][keep])
  assert len(files["train"]) == 36


def test_pixel_statistics_are_the_mean_and_std_over_every_pixel():
  images = np.random.default_rng(5).integers(0, 256, (37, 5, 7, 3), np.uint8)
  images[..., 2] //= 4  # channels with other statistics
  x = images.astype(np.float64).reshape(-1, 3) / 255  # reference: NumPy
  got = datasets.pixel_statistics(images, chunk=8)  # chunks that do not divide
  np.testing.assert_allclose(got.mean, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(got.std, x.std(0), rtol=1e-10)
  with pytest.raises(ValueError, match=r"^dataset: a channel of the training"
                     r" images is constant"):
    datasets.pixel_statistics(np.zeros((2, 4, 4, 3), np.uint8))


def test_named_data_sets_have_constants_and_image_folders_none():
  assert datasets.named_normalization("cifar10").mean == (0.4914, 0.4822,
                                                          0.4465)
  assert datasets.named_normalization("cifar100") == (
      datasets.named_normalization("cifar10"))
  assert datasets.named_normalization("image_folder:/x") is None
