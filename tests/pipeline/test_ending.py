"""pipeline/ending on its own: the final projection against a float64 NumPy
LRPET with BN rectification, precise BN against the batches' own statistics,
the phases run in order and stop when told, and how many evaluations each
method's ending runs (the progress estimate reads it)."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpet_jax.analysis import tracing
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.pipeline import ending, methods, steps
from reference import randomized_bn, reference_projection


class ConvBN(nn.Module):
  """3x3 conv 3 -> 8, BatchNorm, ReLU, global mean, dense 8 -> 4."""
  norm: bool = True

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), use_bias=False, name="conv")(x)
    if self.norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       name="bn")(x)
    return nn.Dense(4, name="head")(nn.relu(x).mean(axis=(1, 2)))


def ending_of(method_name, *, norm=True, seed=0):
  """An ``Ending`` of a ConvBN with random weights and BatchNorm, ranks at
  ratio 0.5 on the conv (27x8 -> rank 4)."""
  model = ConvBN(norm=norm)
  variables = randomized_bn(model.init(jax.random.key(seed),
                                       jnp.zeros((1, 6, 6, 3))), seed)
  variables = {"batch_stats": {}, **variables}
  ranks = ranks_lib.uniform_ranks(variables["params"], 0.5)
  setting = methods.Setting(
      build_model=lambda ranks=None, dtype=None: model, dtype=None,
      dense_abstract=jax.eval_shape(lambda: variables), ranks=ranks,
      pairing=tracing.bn_pairs(tracing.eval_apply(model), variables,
                               (6, 6, 3)),
      learning_rate=lambda step: 0.1, momentum=0.9, weight_decay=0.0,
      nesterov=False, project_every=5, energy_transfer=True,
      residual_scale=0.0, bn_rectification=True)
  method = methods.method_for(method_name, setting)
  state = steps.TrainState(step=jnp.asarray(10), params=variables["params"],
                           batch_stats=variables["batch_stats"],
                           opt_state=None)
  return ending.Ending(method=method, state=state, workdir=None,
                       source=Batches(seed), bn_recompute_batches=3,
                       normalization=None, input_shape=(6, 6, 3),
                       description={})


class Batches:
  """A training input's ``bn_batches``: normalized float images."""

  def __init__(self, seed):
    self.images = jax.random.normal(jax.random.key(seed + 1), (3, 5, 6, 6, 3))

  def bn_batches(self, count):
    return list(self.images[:count])


def test_the_final_projection_is_lrpet_with_bn_rectification():
  e = ending_of("lrpet")
  kernel = np.asarray(e.params["conv"]["kernel"])
  bn_ = e.state.batch_stats["bn"]
  a = (np.asarray(e.params["bn"]["scale"], np.float64)
       / np.sqrt(np.asarray(bn_["var"], np.float64) + 1e-5))
  said = e.method.FINAL_PHASES[0].run(e)
  assert said == "projected 1 kernels to their ranks"
  want = reference_projection(kernel, 4, out_scale=a)
  got = np.asarray(e.params["conv"]["kernel"], np.float64)
  assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
  np.testing.assert_array_equal(e.params["head"]["kernel"],
                                e.state.params["head"]["kernel"])


def test_precise_bn_is_the_mean_of_the_batches_statistics():
  e = ending_of("lrpet")
  assert ending.PRECISE_BN.run(e) == (
      "BatchNorm statistics recomputed from 3 training batches")
  kernel = np.asarray(e.params["conv"]["kernel"])
  means, variances = [], []
  for x in e.source.bn_batches(3):
    y = np.asarray(lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest"), np.float64)
    means.append(y.mean(axis=(0, 1, 2)))
    variances.append(y.var(axis=(0, 1, 2)))
  got = e.dense_variables["batch_stats"]["bn"]
  np.testing.assert_allclose(got["mean"], np.mean(means, axis=0), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(got["var"], np.mean(variances, axis=0),
                             rtol=1e-4)
  assert e.compact_variables is None  # lrpet trains the dense model


def test_a_model_without_batchnorm_keeps_its_params():
  e = ending_of("compact", norm=False)
  assert ending.PRECISE_BN.run(e) == (
      "no BatchNorm statistics to recompute (the model has none)")
  assert e.compact_variables["batch_stats"] == {}
  assert e.dense_variables is None  # compact trains the compact model
  np.testing.assert_array_equal(e.compact_variables["params"]["conv"]["kernel"],
                                e.state.params["conv"]["kernel"])


class Recorder:
  """A method whose phases say their names and record that they ran."""
  NAME = "recorder"

  def __init__(self):
    self.ran = []
    self.FINAL_PHASES = tuple(  # pylint: disable=invalid-name
        ending.Phase(lambda e, n=n: self.ran.append(n) or f"did {n}")
        for n in ("a", "b", "c"))


@pytest.mark.parametrize("stop_after, logged", [
    (None, ["did a", "did b", "did c"]), (2, ["did a", "did b"])])
def test_finish_runs_the_phases_in_order_and_stops_when_told(
    monkeypatch, stop_after, logged):
  method, lines = Recorder(), []
  monkeypatch.setattr(ending, "summary", lambda e: {"summary_of": e})
  e = type("E", (), {"method": method})()
  got = ending.finish(e, lines.append,
                      stopped=lambda: len(lines) == stop_after)
  assert lines == logged and method.ran == [l[-1] for l in logged]
  assert got == (None if stop_after else {"summary_of": e})


@pytest.mark.parametrize("name, count", [
    ("lrpet", 2),    # the dense model, then the compact one
    ("dense", 1),    # the dense model
    ("compact", 1),  # the compact model
])
def test_each_methods_ending_counts_its_evaluations(name, count):
  method = methods.REGISTRY[name]
  assert ending.evaluations(method.FINAL_PHASES) == count
