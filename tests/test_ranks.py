"""uniform_ranks against hand-computed ranks."""

import numpy as np
import pytest

import lrpet_jax
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
