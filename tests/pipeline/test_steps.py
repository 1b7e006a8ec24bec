"""The compiled training calls: K steps per call equal K calls of one step."""

import flax.linen as nn
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest

from lrpet_jax.analysis import tracing
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.data import datasets as data_lib
from lrpet_jax.data import inputs
from lrpet_jax.pipeline import methods
from lrpet_jax.pipeline import steps


def test_call_lengths_hand_computed():
  # 389 plain steps before an epoch's projection at 8 per call: 48 calls of
  # 8, then 5 = 4 + 1; lengths 8, 4 and 1 are the only ones compiled.
  lengths = steps.chunk_lengths(389, 8)
  assert lengths == [8] * 48 + [4, 1]
  assert steps.chunk_lengths(13, 8) == [8, 4, 1]
  assert steps.chunk_lengths(7, 7) == [7]
  assert steps.chunk_lengths(6, 7) == [4, 2]
  assert steps.chunk_lengths(3, 1) == [1, 1, 1]
  assert steps.next_call_length(5, 8) == 4


def tiny_data():
  """(normalization, 48 random 16x16 training images of 10 classes)."""
  rng = np.random.default_rng(0)
  return data_lib.Normalization((0.5,) * 3, (0.25,) * 3), (
      data_lib.InMemoryData(
          rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8),
          rng.integers(0, 10, 48).astype(np.int32),
          np.zeros((1, 16, 16, 3), np.uint8), np.zeros((1,), np.int32), 10))


def run_calls(method, variables, data, normalization, lengths, **source):
  """(state, window) after the calls ``lengths`` (an int: that many plain
  steps in one call; "project": one projecting step) from ``variables``, on
  batches of 8 of ``data``, on one device; ``source``: more arguments of
  ``inputs.InMemoryInput`` (passes, augmentation)."""
  mesh = jax.make_mesh((1,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  source = inputs.InMemoryInput(
      data, batch_size=8, eval_batch_size=8, seed=0,
      normalization=normalization,
      batch_sharding=NamedSharding(mesh, P("data")), **source)
  stepper = steps.Stepper(method, source, 0, normalization)
  state = jax.device_put(steps.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      opt_state=method.tx.init(variables["params"])), replicated)
  window = jax.device_put(steps.empty_window(), replicated)
  step = 0
  for length in lengths:
    projecting = length == "project"
    state, window, _ = stepper(state, window, step,
                               1 if projecting else length, projecting)
    step += 1 if projecting else length
  return jax.device_get(state), jax.device_get(window)


class Float64Net(nn.Module):
  """Two conv → BatchNorm pairs and a head, every variable in float64."""

  @nn.compact
  def __call__(self, x, train: bool):
    f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
    for i, strides in enumerate((1, 2)):
      x = nn.Conv(8, (3, 3), strides=strides, use_bias=False, name=f"conv{i}",
                  **f64)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                               force_float32_reductions=False, name=f"bn{i}",
                               **f64)(x))
    return nn.Dense(10, name="head", **f64)(x.mean((1, 2)))


@pytest.mark.slow  # over 6 s: the fast tier stays near 2 minutes
def test_k_steps_per_call_equal_single_steps_in_float64():
  # Two epochs of 6 steps, a projection at the end of each (steps 6 and 12).
  # Calls of up to 4 steps (one unrolled scan) against calls of one step: in
  # float32 the two compilations round differently and the difference grows
  # chaotically (1e-7 → 2e-4 over 12 steps of the pipeline test on one
  # processor), so the schedule is compared in float64, where the same
  # round-off stays below 1e-12.
  normalization, data = tiny_data()
  model = Float64Net()

  def train(lengths):
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                           train=False)
    method = methods.method_for("lrpet", methods.Setting(
        build_model=lambda ranks=None, dtype=None: model, dtype=None,
        dense_abstract=None,
        ranks=ranks_lib.uniform_ranks(variables["params"], 0.5),
        pairing=tracing.Pairing({"conv0/kernel": "bn0", "conv1/kernel": "bn1"},
                                ("head/kernel",)),
        learning_rate=0.05, momentum=0.9, weight_decay=1e-4, nesterov=False,
        project_every=6, energy_transfer=True, residual_scale=0.0,
        bn_rectification=True))
    return run_calls(method, variables, data, normalization, lengths)

  with jax.enable_x64(True):
    single = train([1] * 5 + ["project"] + [1] * 5 + ["project"])
    chunked = train([4, 1, "project", 4, 1, "project"])
  for name in ("params", "batch_stats", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(single[0], name)),
                    jax.tree.leaves(getattr(chunked[0], name))):
      assert a.dtype == b.dtype
      if a.dtype == np.float64:
        scale = max(float(np.max(np.abs(a), initial=0.0)), 1e-30)
        assert float(np.max(np.abs(a - b), initial=0.0)) <= 1e-10 * scale
      else:  # the projection counter (int32) and energy kept (float32)
        np.testing.assert_allclose(a, b, rtol=1e-6)
  assert int(single[0].step) == int(chunked[0].step) == 12
  np.testing.assert_allclose(single[1]["loss"], chunked[1]["loss"], rtol=1e-10)
  # Both projected: each kernel has rank 4 of 8 after step 12.
  for i in range(2):
    w = np.asarray(chunked[0].params[f"conv{i}"]["kernel"]).reshape(-1, 8)
    s = np.linalg.svd(w, compute_uv=False)
    assert s[4] <= 1e-9 * s[0] < s[3]
