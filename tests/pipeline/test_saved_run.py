"""pipeline/saved_run on its own, on workdirs written by hand (no training):
what a workdir must hold, the test data found from where the run started,
the saved models evaluated as a hand-normalized forward pass does, and
one-line refusals of what a workdir lacks."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpet_jax
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.data import datasets
from lrpet_jax.deploy import variables_file
from lrpet_jax.pipeline import saved_run
from lrpet_jax.pipeline import setup


def write_workdir(workdir, config, command_dir=None):
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(config.to_json(indent=1))
  if command_dir is not None:
    (workdir / "commands.txt").write_text(
        f"cd {command_dir} && python -m lrpet_jax.main --workdir=w\n")
  return workdir


def top1_by_hand(model, variables, images, labels, config):
  x = (np.asarray(images, np.float32) / 255.0 - np.asarray(config.mean)) / (
      np.asarray(config.std))
  logits = model.apply(variables, jnp.asarray(x, jnp.float32), train=False)
  return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def test_a_folder_without_config_json_is_refused(tmp_path):
  with pytest.raises(ValueError) as e:
    lrpet_jax.load_run(tmp_path)
  assert str(e.value) == (f"workdir: {tmp_path} holds no config.json (not a"
                          " run's workdir)")


def test_an_unfinished_run_says_what_it_lacks(tiny_config, tmp_path):
  run = lrpet_jax.load_run(write_workdir(tmp_path / "w", tiny_config()))
  assert run.summary is None and run.ranks is None
  assert run.compact_model is None
  for which in ("dense", "compact", "serving"):
    with pytest.raises(ValueError) as e:
      run.evaluate(which)
    assert str(e.value) == (f"{tmp_path / 'w'} holds no {which} model (the"
                            " run has not finished)")
  with pytest.raises(ValueError, match="which: 'best' is not"):
    run.evaluate("best")


def test_a_relative_image_folder_is_found_from_where_the_run_started(
    tiny_config, png_folder, tmp_path):
  config = tiny_config(dataset=f"image_folder:{png_folder.name}")
  workdir = write_workdir(tmp_path / "w", config,
                          command_dir=png_folder.parent)
  assert pathlib.Path.cwd() != png_folder.parent
  images, labels = lrpet_jax.load_run(workdir).test_data
  want = datasets.load(f"image_folder:{png_folder}", None, 0, 0, config.seed)
  np.testing.assert_array_equal(images, want.test_images)
  np.testing.assert_array_equal(labels, want.test_labels)
  assert images.shape == (16, 16, 16, 3) and images.dtype == np.uint8


def test_saved_models_evaluate_as_a_forward_pass_by_hand(tiny_config,
                                                         tmp_path):
  config = tiny_config()
  workdir = write_workdir(tmp_path / "w", config)
  model = setup.model_builder(config)()
  variables = model.init(jax.random.key(3), jnp.zeros((1, 16, 16, 3)),
                         train=False)
  kernel = "stage2_block0/conv1/kernel"  # 3·3·16 x 32 at rank 4: split
  (workdir / "ranks.json").write_text(json.dumps({kernel: 4}))
  ranks = ranks_lib.Ranks({kernel: 4}).tree(variables["params"])
  projected = {**variables, "params": lrpet_jax.project_params(
      variables["params"], ranks)}
  variables_file.save(workdir / "dense_final", projected)
  variables_file.save(workdir / "compact",
                      lrpet_jax.factorize(projected, ranks))
  run = lrpet_jax.load_run(workdir)
  assert run.ranks == ranks
  assert isinstance(run.compact_model, lrpet_jax.Factorized)
  images, labels = run.test_data
  want = top1_by_hand(model, projected, images, labels, config)
  assert run.evaluate("dense")["top1"] == want
  assert run.evaluate("compact")["top1"] == want
  assert run.evaluate("dense")["top5"] == 1.0  # 4 classes


def test_top_k_counts_by_hand():
  logits = np.array([[0, 9, 1, 2, 3, 4, 5],    # label 1: top-1
                     [9, 8, 7, 6, 5, 0, 1],    # label 4: 5th best, top-5
                     [9, 8, 7, 6, 5, 4, 0]],   # label 6: last, neither
                    np.float32)
  labels = np.array([1, 4, 6])
  got = saved_run._top_k(lambda x: x, [(logits[:2], labels[:2]),
                                       (logits[2:], labels[2:])], np.float32)
  assert got == {"top1": 1 / 3, "top5": 2 / 3}


def make_mlp(num_classes=4, dtype=None):
  """A model without BatchNorm (as the authors' ViT): no batch_stats."""
  del dtype
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      del train
      x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x)).mean((1, 2))
      return nn.Dense(num_classes, name="head")(x)
  return Mlp()


def test_a_run_without_batchnorm_loads_and_evaluates(tiny_config, tmp_path):
  """The pipeline writes such a run's variables with an empty batch_stats
  (``ending``); load_run restores them (it raised Orbax's 'batch_stats
  MISSING')."""
  config = tiny_config(model="test_saved_run:make_mlp")
  workdir = write_workdir(tmp_path / "w", config)
  model = setup.model_builder(config)()
  variables = model.init(jax.random.key(3), jnp.zeros((1, 16, 16, 3)),
                         train=False)
  assert "batch_stats" not in variables
  ranks = ranks_lib.Ranks({"conv/kernel": 2}).tree(variables["params"])
  projected = {"params": lrpet_jax.project_params(variables["params"], ranks),
               "batch_stats": {}}
  (workdir / "ranks.json").write_text(json.dumps({"conv/kernel": 2}))
  variables_file.save(workdir / "dense_final", projected)
  variables_file.save(workdir / "compact",
                      lrpet_jax.factorize(projected, ranks))
  run = lrpet_jax.load_run(workdir)
  images, labels = run.test_data
  want = top1_by_hand(model, projected, images, labels, config)
  assert run.evaluate("dense")["top1"] == want
  assert run.evaluate("compact")["top1"] == want
  assert run.dense_variables["batch_stats"] == {}
