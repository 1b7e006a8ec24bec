"""uniform_ranks against hand-computed ranks."""

import json

import numpy as np
import pytest

import lrpet_jax
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.core.ranks import floor_ranks, is_kernel, round_ranks

PARAMS = {
    "conv1": {"kernel": np.zeros((3, 3, 3, 16))},        # n = min(27, 16) = 16
    "conv2": {"kernel": np.zeros((3, 3, 16, 64))},       # n = min(144, 64) = 64
    "down": {"kernel": np.zeros((1, 1, 16, 64))},        # n = min(16, 64) = 16
    "bn": {"scale": np.ones(64), "bias": np.zeros(64)},
    "head": {"kernel": np.zeros((64, 10)), "bias": np.zeros(10)},
    "odd": {"kernel": np.zeros(5)},                       # ndim 1: skipped
}


def test_hand_computed_ranks():
  # Convolutions only by default: int(16 - 8.64) = 7, int(64 - 34.56) = 29.
  expected = {
      "conv1": {"kernel": 7}, "conv2": {"kernel": 29}, "down": {"kernel": 7},
      "bn": {"scale": None, "bias": None},
      "head": {"kernel": None, "bias": None}, "odd": {"kernel": None},
  }
  assert lrpet_jax.uniform_ranks(PARAMS, 0.54) == expected
  # Dense kernels too on request: head int(10 - 5.4) = 4.
  expected["head"]["kernel"] = 4
  assert lrpet_jax.uniform_ranks(PARAMS, 0.54, include=is_kernel) == expected


def test_floor_ranks():
  ranks = lrpet_jax.uniform_ranks(PARAMS, 0.9)  # conv1 1, conv2 6, down 1
  floored = floor_ranks(ranks, PARAMS, 10, first="conv1/kernel", first_floor=3)
  # conv1 → 3 (its own floor), conv2 → 10, down → 10 but full rank 16 allows it.
  assert floored["conv1"]["kernel"] == 3 and floored["conv2"]["kernel"] == 10
  assert floored["down"]["kernel"] == 10 and floored["head"]["kernel"] is None
  # Capped at the full rank: conv1 is 27x16.
  assert floor_ranks(ranks, PARAMS, 40)["conv1"]["kernel"] == 16
  with pytest.raises(ValueError, match="first: 'head/kernel' has no rank"):
    floor_ranks(ranks, PARAMS, 1, first="head/kernel", first_floor=2)
  with pytest.raises(ValueError, match="floor"):
    floor_ranks(ranks, PARAMS, -1)


def test_extreme_ratios():
  assert lrpet_jax.uniform_ranks(PARAMS, 0.0)["conv2"]["kernel"] == 64
  # int(16 - 15.84) = 0 -> clamped to 1.
  assert lrpet_jax.uniform_ranks(PARAMS, 0.99)["conv1"]["kernel"] == 1


def test_include_overrides_selection():
  ranks = lrpet_jax.uniform_ranks(
      PARAMS, 0.5, include=lambda path, leaf: path[0].key == "conv2"
      and leaf.ndim == 4)
  assert ranks["conv2"]["kernel"] == 32
  assert ranks["conv1"]["kernel"] is None and ranks["head"]["kernel"] is None


def test_include_selecting_a_vector_is_an_error():
  with pytest.raises(ValueError, match="bn/bias"):
    lrpet_jax.uniform_ranks(PARAMS, 0.5, include=lambda p, x: True)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "0.5", True])
def test_bad_ratio(ratio):
  with pytest.raises(ValueError, match="ratio"):
    lrpet_jax.uniform_ranks(PARAMS, ratio)


def test_round_ranks():
  ranks = lrpet_jax.uniform_ranks(PARAMS, 0.54, include=is_kernel)
  rounded = round_ranks(ranks, PARAMS, 8)
  # 7 -> 8, 29 -> 32, head 4 -> 8 but capped at its full rank 10 -> 8.
  assert rounded["conv1"]["kernel"] == 8 and rounded["conv2"]["kernel"] == 32
  assert rounded["head"]["kernel"] == 8 and rounded["bn"]["scale"] is None
  assert round_ranks({"k": {"kernel": 9}}, {"k": {"kernel": np.zeros((12, 10))}},
                     8)["k"]["kernel"] == 10  # 16 capped at min(12, 10)
  with pytest.raises(ValueError, match="multiple"):
    round_ranks(ranks, PARAMS, 0)


def test_one_ranks_value_in_its_three_forms(tmp_path):
  """A ``Ranks`` ↔ its JSON object ↔ its rank pytree, and every entry point
  that takes a rank pytree takes it too, with the same result."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import lrpet_jax  # pylint: disable=g-import-not-at-top
  from lrpet_jax.core.ranks import Ranks  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      del train
      x = nn.relu(nn.Conv(16, (3, 3), name="conv")(x))
      x = nn.Conv(8, (3, 3), strides=2, name="down")(x)
      return nn.Dense(4, name="head")(x.mean((1, 2)))

  model = Net()
  x = jnp.ones((1, 8, 8, 3))
  variables = model.init(jax.random.key(0), x)
  params = variables["params"]
  tree = lrpet_jax.uniform_ranks(params, 0.5)
  ranks = Ranks.of_tree(tree)
  assert ranks.tree(params) == tree and Ranks.of_tree(ranks) is ranks
  # min(27, 16) → 8 and min(144, 8) → 4; the Dense head unranked.
  assert ranks == ranks.to_json() == {"conv/kernel": 8, "down/kernel": 4}
  assert ranks["conv/kernel"] == ranks[("conv", "kernel")] == 8
  (tmp_path / "ranks.json").write_text(json.dumps(ranks.to_json()))
  assert Ranks.read(tmp_path / "ranks.json") == ranks
  with pytest.raises(ValueError, match="^ranks name 'nope/kernel', which is"
                     " not in params$"):
    Ranks({"nope/kernel": 2}).tree(params)
  with pytest.raises(ValueError, match=r"^ranks: 'conv/kernel' has rank 0,"):
    Ranks({"conv/kernel": 0})
  # The same projection, compact model and optimizer from either form.
  # (Compiled: op by op, each of the SVD's primitives would compile alone.)
  a, b = (jax.jit(lambda p, f=form: lrpet_jax.project_params(p, f))(params)
          for form in (tree, ranks))
  assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a),
                                                  jax.tree.leaves(b)))
  dense = {**variables, "params": a}
  for form in (tree, ranks):
    compact = lrpet_jax.Factorized(model, form)
    logits = compact.apply(lrpet_jax.factorize(dense, form), x)
    np.testing.assert_allclose(logits, model.apply(dense, x), rtol=1e-4,
                               atol=1e-5)
  grads = jax.tree.map(jnp.ones_like, params)
  updates = []
  for form in (tree, ranks):
    tx = lrpet_jax.lrpet(0.1, form, every=1)
    updates.append(jax.jit(tx.update)(grads, tx.init(params), params)[0])
  assert all(np.array_equal(u, v) for u, v in zip(*map(jax.tree.leaves,
                                                        updates)))


def test_ranks_write_and_read_back_and_as_json(tmp_path):
  params = {"a": {"kernel": np.zeros((3, 3, 4, 8))}, "b": {"bias": np.zeros(8)}}
  tree = {"a": {"kernel": 3}, "b": {"bias": None}}
  assert ranks_lib.as_json(tree) == {"a/kernel": 3}  # by hand
  assert ranks_lib.as_json(ranks_lib.Ranks({"a/kernel": 3})) == {"a/kernel": 3}
  ranks_lib.Ranks.of_tree(tree).write(tmp_path / "ranks.json")
  assert json.loads((tmp_path / "ranks.json").read_text()) == {"a/kernel": 3}
  assert ranks_lib.Ranks.read(tmp_path / "ranks.json").tree(params) == tree
