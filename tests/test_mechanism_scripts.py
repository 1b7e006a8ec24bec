"""The measurements of experiments/bn_rectification.py and energy_transfer.py,
against float64 NumPy references and the geometry of a truncated SVD."""

import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bn_rectification
from experiments import energy_transfer
from experiments import policy_latency
from lrpet_jax import models
from lrpet_jax.analysis import tracing
from lrpet_jax.data import datasets as data_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _truncate(kernel, rank):
  """Rank-``rank`` truncated SVD of a (kh, kw, c_in, c_out) kernel, float64."""
  w = np.asarray(kernel, np.float64)
  u, s, vt = np.linalg.svd(w.reshape(-1, w.shape[-1]), full_matrices=False)
  return ((u[:, :rank] * s[:rank]) @ vt[:rank]).reshape(w.shape)


@pytest.mark.slow  # over 6 s: the fast tier stays near 2 minutes
def test_bn_output_error_matches_a_direct_reference():
  model = models.create("resnet8")
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  rng = np.random.default_rng(0)
  # Non-trivial BatchNorms: random γ, β and running statistics.
  randomize = lambda path, v: (
      rng.uniform(0.5, 2.0, v.shape) if path[-1].key in ("scale", "var")
      else rng.normal(0, 0.3, v.shape) if path[-1].key in ("bias", "mean")
      else v)
  variables = {
      "params": jax.tree_util.tree_map_with_path(randomize,
                                                 variables["params"]),
      "batch_stats": jax.tree_util.tree_map_with_path(
          randomize, variables["batch_stats"])}
  pairs = tracing.bn_pairs(tracing.eval_apply(model), variables,
                           (32, 32, 3)).pairs
  inputs = bn_rectification.conv_inputs(model, variables, x)
  np.testing.assert_array_equal(inputs[("conv",)][0], x)  # the stem sees x
  params = variables["params"]
  projected = jax.tree.map(lambda v: v, params)
  projected["stage1_block0"]["conv2"]["kernel"] = jnp.asarray(
      _truncate(params["stage1_block0"]["conv2"]["kernel"], 5), jnp.float32)

  errors = bn_rectification.bn_output_errors(variables, projected, inputs,
                                             pairs)
  assert set(errors) == {k.rsplit("/", 1)[0] for k in pairs}
  for name, error in errors.items():
    if name != "stage1_block0/conv2":
      assert error == 0.0, name
  # Reference: the 3×3 convolution (stride 1, zero padding 1) and BatchNorm
  # with its running statistics, in float64.
  xin = np.asarray(inputs[("stage1_block0", "conv2")][0], np.float64)
  bn_vars = {k: np.asarray(v, np.float64) for k, v in {
      **params["stage1_block0"]["bn2"],
      **variables["batch_stats"]["stage1_block0"]["bn2"]}.items()}

  def bn_of_conv(kernel):
    k = np.asarray(kernel, np.float64)
    padded = np.pad(xin, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = sum(np.einsum("bhwc,cd->bhwd", padded[:, i:i + 32, j:j + 32], k[i, j])
            for i in range(3) for j in range(3))
    return ((y - bn_vars["mean"]) / np.sqrt(bn_vars["var"] + 1e-5)
            * bn_vars["scale"] + bn_vars["bias"])

  y = bn_of_conv(params["stage1_block0"]["conv2"]["kernel"])
  yp = bn_of_conv(projected["stage1_block0"]["conv2"]["kernel"])
  want = np.linalg.norm(y - yp) / np.linalg.norm(y)
  assert 0.05 < want and errors["stage1_block0/conv2"] == pytest.approx(
      want, rel=1e-4)


@pytest.mark.slow  # two short training runs
def test_energy_transfer_measurements_follow_the_svd_geometry():
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = lambda n: rng.integers(0, 10, n).astype(np.int32)
  d = data_lib.InMemoryData(images(32), labels(32), images(8), labels(8), 10)
  runs = {}
  for et in (True, False):
    # Without BN rectification a projection is a plain truncated SVD (scaled
    # by sqrt(α) with energy transfer): its norms are known in closed form.
    config = energy_transfer.make_config(0, et, dict(
        model="resnet8", batch_size=8, num_epochs=2, bn_rectification=False))
    runs[et] = energy_transfer.one_run(config, d, 2, (d.train_images[:8],
                                                      d.train_labels[:8]))
  for run in runs.values():
    # 4 steps an epoch, one projection at each epoch's end; the last one has
    # no steps after it to compare.
    assert [p["step"] for p in run["projections"]] == [4, 8]
    assert run["projections"][1]["grad_ratio"] is None
    norms = np.asarray(run["grad_norms"])
    assert norms.shape == (8, len(run["layers"])) and (norms > 0).all()
    np.testing.assert_allclose(  # steps 3-4 before, 5-6 after
        run["projections"][0]["grad_ratio"],
        norms[4:6].mean(0) / norms[2:4].mean(0), rtol=1e-6)
  for p in runs[True]["projections"]:  # ‖P(W′)‖ = ‖W′‖
    np.testing.assert_allclose(p["removed_norm"], 0.0, atol=1e-5)
  for p in runs[False]["projections"]:  # orthogonal: ‖P(W′)‖² + ‖W′−P(W′)‖² = ‖W′‖²
    kept = 1 - np.asarray(p["removed_norm"])
    np.testing.assert_allclose(kept ** 2 + np.asarray(p["change"]) ** 2, 1.0,
                               atol=1e-4)
  assert min(runs[False]["projections"][0]["removed_norm"]) > 0.01


def git_status():
  done = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                        capture_output=True, text=True, check=False)
  return done.stdout if done.returncode == 0 else None


QUICK = {  # each script's quick mode, alone (the workers share them out)
    "bn_rectification": lambda: bn_rectification.main(
        ["--quick", "--images=16", "--bn_batches=1"]),
    "energy_transfer": lambda: energy_transfer.main(["--quick"]),
    "policy_latency": lambda: policy_latency.main(["--quick"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUICK))
def test_quick_mode_leaves_tracked_results_alone(name):
  before = git_status()
  if before is None:
    pytest.skip("not a git checkout")
  QUICK[name]()
  if name == "bn_rectification":
    # Without --dense, the quick mode trains a small dense model of its own.
    assert (ROOT / "runs" / "quick" / "bn_rectification_dense" /
            "summary.json").is_file()
  assert git_status() == before  # experiments/results/ untouched
  assert (ROOT / "runs" / "quick" / f"{name}.json").is_file()
