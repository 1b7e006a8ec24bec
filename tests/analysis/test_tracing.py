"""analysis/tracing on its own: the evaluation flags a model is called
with, abstract variables, and the BatchNorm pairing of a hand-built model
(which BatchNorm follows which kernel, which fold, and why the others do
not), checked against what the model's code says."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lrpet_jax.analysis import tracing

SHAPE = (8, 8, 3)


class Net(nn.Module):
  """conv0 → bn0 (paired, folded); conv1 → ReLU → bn1 (a ReLU between:
  conv1 unpaired, bn1 kept); head (no BatchNorm)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), use_bias=False, name="conv0")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn0")(x)
    x = nn.relu(nn.Conv(6, (3, 3), name="conv1")(x))
    x = nn.BatchNorm(use_running_average=not train, epsilon=1e-3,
                     name="bn1")(x)
    return nn.Dense(3, name="head")(x.mean((1, 2)))


class NoFlag(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(x.mean((1, 2)))


def test_eval_flags_follow_the_call_signature():
  assert tracing.eval_flags(Net()) == {"train": False}
  assert tracing.eval_flags(NoFlag()) == {}


def test_abstract_variables_have_the_init_shapes_and_compute_nothing():
  abstract = tracing.abstract_variables(Net(), SHAPE)
  assert isinstance(abstract["params"]["conv0"]["kernel"],
                    jax.ShapeDtypeStruct)
  assert abstract["params"]["conv0"]["kernel"].shape == (3, 3, 3, 4)
  assert abstract["batch_stats"]["bn1"]["var"].shape == (6,)


def test_pairs_folds_and_reasons_of_a_hand_built_model():
  model = Net()
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE))
  pairing = tracing.bn_pairs(tracing.eval_apply(model), variables, SHAPE)
  assert pairing.pairs == {"conv0/kernel": "bn0"}
  assert pairing.pairs["conv0/kernel"].epsilon == 1e-5  # bn0's own
  assert set(pairing.unpaired) == {"conv1/kernel", "head/kernel"}
  assert pairing.folds == {"conv0/kernel": "bn0"}
  assert pairing.fold_axes == {"conv0/kernel": 3}  # the kernel's c_out axis
  assert "bn1" in pairing.kept
  assert set(pairing.to_json()) == {"pairs", "unpaired", "unpaired_reasons",
                                    "folded", "not_folded"}
  # eval_apply runs the model as model.apply(v, x, train=False) does.
  x = np.random.default_rng(0).normal(size=(2,) + SHAPE).astype(np.float32)
  np.testing.assert_array_equal(
      tracing.eval_apply(model)(variables, x),
      model.apply(variables, x, train=False))
