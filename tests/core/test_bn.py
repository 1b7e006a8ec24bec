"""bn_out_scales and recompute_batch_stats against direct computations."""

import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpet_jax

EPS = 1e-5


class ConvBN(nn.Module):
  """conv 3x3 → BN(momentum 0.9) → relu → conv 1x1 → BN(momentum 0.5)."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3), name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     epsilon=EPS, name="bn1")(x)
    x = nn.relu(x)
    x = nn.Conv(4, (1, 1), use_bias=False, name="conv2")(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.5,
                        epsilon=EPS, name="bn2")(x)


def random_variables(seed=0):
  model = ConvBN()
  x = jnp.zeros((2, 6, 6, 3))
  variables = model.init(jax.random.key(seed), x, train=False)
  rng = np.random.default_rng(seed)
  # Non-trivial γ, β and junk running statistics.
  randomize = lambda t, lo, hi: jax.tree.map(
      lambda v: jnp.asarray(rng.uniform(lo, hi, v.shape), v.dtype), t)
  return model, {
      "params": {
          **variables["params"],
          "bn1": randomize(variables["params"]["bn1"], 0.5, 2.0),
          "bn2": randomize(variables["params"]["bn2"], 0.5, 2.0),
      },
      "batch_stats": randomize(variables["batch_stats"], 3.0, 9.0),
  }


def test_bn_out_scales_hand_computed():
  _, variables = random_variables()
  params, stats = variables["params"], variables["batch_stats"]
  scales = lrpet_jax.bn_out_scales(
      params, stats, {"conv1/kernel": "bn1", ("conv2", "kernel"): ("bn2",)})
  for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
    gamma = np.asarray(params[bn]["scale"], np.float64)
    var = np.asarray(stats[bn]["var"], np.float64)
    np.testing.assert_allclose(scales[conv]["kernel"],
                               gamma / np.sqrt(var + EPS), rtol=1e-6)
  assert scales["conv1"]["bias"] is None
  assert scales["bn1"]["scale"] is None


@pytest.mark.parametrize("pairs, message", [
    ({"conv9/kernel": "bn1"}, "conv9/kernel"),
    ({"conv1/kernel": "bn9"}, "bn9"),
    ({"conv1/kernel": "bn2"}, "channels"),
])
def test_bn_out_scales_bad_pairs(pairs, message):
  _, variables = random_variables()
  with pytest.raises(ValueError, match=message):
    lrpet_jax.bn_out_scales(variables["params"], variables["batch_stats"],
                            pairs)


def direct_statistics(params, batches):
  """Per-batch BN statistics from the conv outputs, averaged in float64."""
  conv = functools.partial(
      lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=lax.Precision.HIGHEST)
  sums = {k: {"mean": 0.0, "var": 0.0} for k in ("bn1", "bn2")}
  for x in batches:
    y1 = np.asarray(conv(x, params["conv1"]["kernel"]), np.float64)
    y1 += np.asarray(params["conv1"]["bias"], np.float64)
    mu1, var1 = y1.mean((0, 1, 2)), y1.var((0, 1, 2))
    bn1 = params["bn1"]
    z = (y1 - mu1) / np.sqrt(var1 + EPS) * np.asarray(bn1["scale"]) + np.asarray(
        bn1["bias"])
    z = np.maximum(z, 0.0)
    y2 = np.asarray(conv(jnp.asarray(z, jnp.float32),
                         params["conv2"]["kernel"]), np.float64)
    mu2, var2 = y2.mean((0, 1, 2)), y2.var((0, 1, 2))
    for k, mu, var in (("bn1", mu1, var1), ("bn2", mu2, var2)):
      sums[k]["mean"] = sums[k]["mean"] + mu / len(batches)
      sums[k]["var"] = sums[k]["var"] + var / len(batches)
  return sums


def test_recompute_batch_stats_is_precise_bn():
  model, variables = random_variables(1)
  rng = np.random.default_rng(1)
  batches = [jnp.asarray(rng.standard_normal((4, 6, 6, 3)) * s + s, jnp.float32)
             for s in (1.0, 2.0, 0.5)]
  apply_fn = functools.partial(model.apply, train=True, mutable=["batch_stats"])
  got = lrpet_jax.recompute_batch_stats(apply_fn, variables, batches)
  want = direct_statistics(variables["params"], batches)
  for bn in ("bn1", "bn2"):
    for stat in ("mean", "var"):
      np.testing.assert_allclose(got[bn][stat], want[bn][stat], rtol=1e-4,
                                 atol=1e-5, err_msg=f"{bn}/{stat}")
  # A generator works as well, and the old statistics do not matter.
  again = lrpet_jax.recompute_batch_stats(
      apply_fn, {**variables, "batch_stats": jax.tree.map(
          jnp.zeros_like, variables["batch_stats"])}, (b for b in batches))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5),
               again, got)


def test_recompute_batch_stats_errors():
  model, variables = random_variables()
  apply_fn = functools.partial(model.apply, train=True, mutable=["batch_stats"])
  with pytest.raises(ValueError, match="batches"):
    lrpet_jax.recompute_batch_stats(apply_fn, variables, [])
  with pytest.raises(ValueError, match="batch_stats"):
    lrpet_jax.recompute_batch_stats(
        apply_fn, {"params": variables["params"]}, [jnp.zeros((2, 6, 6, 3))])
