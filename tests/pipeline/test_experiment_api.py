"""The public experiment API (``lrpet_jax.pipeline.experiment``): the
config's method and its step, checked against a NumPy SVD."""

import jax
import numpy as np
import pytest

from lrpet_jax.core import _trees
from lrpet_jax.pipeline import experiment

pytestmark = pytest.mark.slow  # compiles a projecting step (~20 s)


def test_a_projecting_step_leaves_each_ranked_kernel_at_its_rank(tiny_config):
  config = tiny_config(model="resnet8", ratio=0.5)
  exp = experiment.from_config(config, input_shape=(16, 16, 3),
                               steps_per_epoch=3)
  assert exp.method.NAME == "lrpet"
  state = exp.initial_state()
  assert int(state.step) == 0
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, 8).astype(np.int32)
  step = exp.step_fn(project=True, grad_norms=True)
  state, _, aux = step(state, experiment.empty_window(), images, labels)
  assert int(state.step) == 1
  assert set(aux) == {"grad_norms", "pre_projection_params"}
  ranks = _trees.leaves_by_path(exp.method.setting.ranks)
  params = _trees.leaves_by_path(jax.device_get(state.params))
  before = _trees.leaves_by_path(jax.device_get(aux["pre_projection_params"]))
  assert ranks  # ResNet-8's convolutions
  for key, rank in ranks.items():
    if rank is None:
      continue
    w = np.asarray(params[key], np.float64)
    s = np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)
    assert s[rank:].max(initial=0.0) <= 1e-5 * s[0], key
    s0 = np.linalg.svd(np.asarray(before[key], np.float64).reshape(
        -1, w.shape[-1]), compute_uv=False)
    if rank < len(s0):  # the projection removed something
      assert s0[rank] > 1e-3 * s0[0], key


def test_the_readme_block_runs(tiny_config):
  """The experiments page's API block, as written, on the tiny config."""
  import docs  # pylint: disable=g-import-not-at-top
  block = docs.block("docs/experiments.md", "experiment.from_config")
  rng = np.random.default_rng(0)
  ns = {"config": tiny_config(model="resnet8"),
        "images_uint8": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "labels": rng.integers(0, 4, 8).astype(np.int32)}
  exec(block, ns)  # pylint: disable=exec-used
  assert int(ns["state"].step) == 1
  assert set(ns["aux"]) == {"grad_norms"}  # update 0 does not project
  assert int(ns["window"]["steps"]) == 1
