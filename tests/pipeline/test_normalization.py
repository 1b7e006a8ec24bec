"""An image folder's input normalization (#39): its own training images'
mean and std unless given, computed once, recorded in the workdir and
summary, read back on resume, by ``load_run`` and by the export command;
the serving artifact takes the uint8 images ``load_run`` hands out."""

import json

import numpy as np
import pytest

import lrpet_jax
from lrpet_jax.data import datasets
from lrpet_jax.deploy import from_checkpoint
from lrpet_jax.pipeline import config_check
from lrpet_jax.pipeline import train
from lrpet_jax.ranking import selection


def test_mean_without_std_is_refused(tiny_config):
  with pytest.raises(config_check.ConfigError, match=r"^std: give both mean"
                     r" and std, or neither \(the data set's own\)$"):
    config_check.check(tiny_config(std=()))
  with pytest.raises(config_check.ConfigError, match=r"^mean: must be three"
                     r" numbers, or \(\) for the data set's own, got"):
    config_check.check(tiny_config(mean=(0.5, 0.5)))


@pytest.mark.slow
def test_an_image_folder_is_normalized_with_its_own_statistics(
    tiny_config, png_folder, tmp_path):
  workdir = tmp_path / "w"
  summary = train.train_and_evaluate(tiny_config(mean=(), std=()),
                                     str(workdir))
  # The reference: NumPy over every pixel of the training images, as decoded.
  train_images = datasets.load(f"image_folder:{png_folder}").train_images
  x = train_images.astype(np.float64).reshape(-1, 3) / 255
  want = {"mean": list(x.mean(0)), "std": list(x.std(0))}
  recorded = json.loads((workdir / "input.json").read_text())
  np.testing.assert_allclose(recorded["mean"], want["mean"], rtol=1e-12)
  np.testing.assert_allclose(recorded["std"], want["std"], rtol=1e-10)
  assert recorded["normalization_from"] == (
      "computed from the 24 training images")
  assert recorded["decoder"].startswith("Pillow ")
  assert summary["input"] == recorded
  spec = json.loads((workdir / "serving" / "spec.json").read_text())
  assert spec["input"]["normalization"] == {"mean": recorded["mean"],
                                            "std": recorded["std"]}
  # load_run normalizes with it, and its images go into the artifact as
  # they are.
  run = lrpet_jax.load_run(workdir)
  assert run.normalization == (tuple(recorded["mean"]), tuple(recorded["std"]))
  images, labels = run.test_data
  served = np.asarray(run.serving.call(images))
  assert served.shape == (len(labels), 4)
  top1 = float(np.mean(np.argmax(served, -1) == labels))
  assert run.evaluate("serving")["top1"] == top1
  assert run.evaluate("compact")["top1"] == pytest.approx(top1, abs=1 / 16)
  # The export command reads the run's record beside its variables.
  report = from_checkpoint.compact_from_checkpoint(
      str(workdir / "dense_final"), str(tmp_path / "out"), "resnet8",
      rule=selection.RankRule(ratio=0.5), num_classes=4, image_size=16)
  assert report["model"] == "resnet8"
  exported = json.loads((tmp_path / "out" / "serving" / "spec.json"
                         ).read_text())
  assert exported["input"]["normalization"] == spec["input"]["normalization"]
  # A resumed run reads the record instead of computing again.
  (workdir / "summary.json").unlink()
  again = train.train_and_evaluate(tiny_config(mean=(), std=()), str(workdir))
  assert again["input"] == {
      **recorded, "normalization_from":
          "computed from the training images when the run started"}
  assert again["final_accuracy"] == summary["final_accuracy"]
