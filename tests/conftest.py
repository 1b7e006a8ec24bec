"""Test configuration: quiet TensorFlow logs; a tiny image folder and config
for in-process runs of the pipeline."""

import gc
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent compilation cache for the session, set before jax is
# imported: the many short training runs (subprocesses and pytest-xdist
# workers inherit it) compile the same programs. A tiny pipeline run measured
# 61 s cold and 26 s warm. The process that made it removes it.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="lrpet_jax_tests_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests compile hundreds of small programs and run each a few times, so
# LLVM's code optimization is most of their time and buys nothing: the fast
# tier took 158 s with it and 88 s without (2 cores). XLA's own graph passes
# still run; LLVM at -O0 keeps IEEE float semantics (no reassociation). Every
# subprocess a test starts inherits the flag (``reference.xla_flags`` adds
# to it).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "configs"))
# The tests of each subpackage sit in the folder of its name; ``reference``
# (the independent NumPy references) serves them all.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def png_folder(tmp_path_factory):
  """4 classes of 16x16 PNGs with a class cue: 6 train and 4 test images each."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("png")
  rng = np.random.default_rng(0)
  for split, n in (("train", 6), ("test", 4)):
    for c in range(4):
      (root / split / f"c{c}").mkdir(parents=True)
      for i in range(n):
        img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        img[..., c % 3] = 60 * (c // 3)
        Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.png")
  return root


@pytest.fixture
def tiny_config(png_folder):
  """tiny_config(**overrides): the smoke config on ``png_folder``: ResNet-8,
  3 steps an epoch of 8 images, 6 steps, up to 2 per call."""
  import smoke  # pylint: disable=g-import-not-at-top

  def make(**overrides):
    config = smoke.get_config()
    config.update(dict(
        model="resnet8", num_classes=4, dataset=f"image_folder:{png_folder}",
        train_subset=0, test_subset=0, batch_size=8, num_steps=6,
        project_every_steps=0, checkpoint_every_steps=3, log_every_steps=2,
        bn_recompute_batches=1, eval_batch_size=16, steps_per_call=2))
    config.update(overrides)
    return config
  return make


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  # A pytest-xdist worker collects its garbage now, before it reports that it
  # is done, and freezes what is left: execnet sends a worker still busy 5 s
  # after that report a SIGINT, and the full collections of pytest's own
  # teardown on the session's heap took that long; the signal then landed in
  # a gc callback (JAX's, hypothesis') as a KeyboardInterrupt traceback.
  gc.collect()
  gc.freeze()
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
