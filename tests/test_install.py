"""Each extra of pyproject.toml, installed into a fresh venv (at the pinned
versions: requirements*.txt as constraints), runs the command it exists for:
``train`` the main job, the export command and ``load_run`` on an image
folder, without TensorFlow and within 1.2 GB; ``tfds`` (added to it) the
main job on cifar10 through tfds (``tfds.testing.mock_data``)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("install")]
LIMIT_BYTES = 1.2e9
TINY = ("--config.model=resnet8", "--config.num_classes=2",
        "--config.train_subset=0", "--config.test_subset=0",
        "--config.batch_size=8", "--config.num_steps=4",
        "--config.checkpoint_every_steps=4", "--config.log_every_steps=2",
        "--config.bn_recompute_batches=1", "--config.eval_batch_size=8")

_MOCKED_CIFAR10 = """
import sys
import tensorflow_datasets as tfds
sys.path.insert(0, "configs")
import cifar
from lrpet_jax.pipeline import train
config = cifar.get_config()
config.update(dict(model="resnet8", dataset="cifar10", train_subset=16,
                   test_subset=0, batch_size=8, num_steps=2, num_epochs=1,
                   lr_boundaries_epochs=(), checkpoint_every_steps=2,
                   bn_recompute_batches=1, eval_batch_size=8))
with tfds.testing.mock_data(num_examples=16):
  summary = train.train_and_evaluate(config, sys.argv[1])
print(summary["input"]["decoder"])
"""


def _size(path: pathlib.Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*")
             if f.is_file() and not f.is_symlink())


def _run(args, cwd=ROOT, timeout=900):
  done = subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, check=False,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                                 PYTHONPATH=""))
  assert done.returncode == 0, (args, done.stderr[-3000:])
  return done


def _folder(root: pathlib.Path) -> pathlib.Path:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, n in (("train", 8), ("test", 4)):
    for c in ("a", "b"):
      (root / split / c).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(
            root / split / c / f"{i}.png")
  return root


def test_each_extra_installs_into_a_fresh_venv_and_runs(tmp_path):
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", str(venv)])
  python = str(venv / "bin" / "python")
  pip = [python, "-m", "pip", "install", "-q", "-c", "requirements.txt",
         "-c", "requirements-tfds.txt"]
  # train: the main job on an image folder, its export and load_run.
  _run(pip + [".[train]"])
  hidden = subprocess.run([python, "-c", "import tensorflow"], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
  assert "No module named 'tensorflow'" in hidden.stderr
  assert _size(venv) <= LIMIT_BYTES, _size(venv)
  folder, workdir = _folder(tmp_path / "data"), tmp_path / "run"
  _run([python, "-m", "lrpet_jax.main", "--config=configs/smoke.py",
        f"--workdir={workdir}", f"--config.dataset=image_folder:{folder}",
        "--config.mean=()", "--config.std=()", *TINY])
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["input"]["decoder"].startswith("Pillow ")
  _run([python, "-m", "lrpet_jax.export", f"--variables={workdir}/dense_final",
        f"--workdir={tmp_path / 'export'}", "--model=resnet8", "--ratio=0.5",
        "--num_classes=2", "--image_size=16"])
  assert (tmp_path / "export" / "serving" / "model.jax_export").is_file()
  evaluated = _run([python, "-c", "import sys, lrpet_jax; run = lrpet_jax"
                    ".load_run(sys.argv[1]); print(run.evaluate('compact')"
                    "['top1'], run.evaluate('serving')['top1'])",
                    str(workdir)])
  compact, served = map(float, evaluated.stdout.split())
  assert compact == summary["final_accuracy"] and 0 <= served <= 1
  # tfds, added: the main job on cifar10 through tfds.
  _run(pip + [".[tfds]"])
  mocked = _run([python, "-c", _MOCKED_CIFAR10, str(tmp_path / "cifar10")])
  assert mocked.stdout.strip().splitlines()[-1].startswith(
      "tensorflow-datasets ")
