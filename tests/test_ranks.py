"""uniform_ranks against hand-computed ranks."""

import numpy as np
import pytest

import lrpet_jax

PARAMS = {
    "conv1": {"kernel": np.zeros((3, 3, 3, 16))},        # n = min(27, 16) = 16
    "conv2": {"kernel": np.zeros((3, 3, 16, 64))},       # n = min(144, 64) = 64
    "down": {"kernel": np.zeros((1, 1, 16, 64))},        # n = min(16, 64) = 16
    "bn": {"scale": np.ones(64), "bias": np.zeros(64)},
    "head": {"kernel": np.zeros((64, 10)), "bias": np.zeros(10)},
    "odd": {"kernel": np.zeros(5)},                       # ndim 1: skipped
}


def test_hand_computed_ranks():
  ranks = lrpet_jax.uniform_ranks(PARAMS, 0.54)
  # int(16 - 8.64) = 7, int(64 - 34.56) = 29, int(10 - 5.4) = 4.
  assert ranks == {
      "conv1": {"kernel": 7}, "conv2": {"kernel": 29}, "down": {"kernel": 7},
      "bn": {"scale": None, "bias": None},
      "head": {"kernel": 4, "bias": None}, "odd": {"kernel": None},
  }


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
  from lrpet_jax.ranks import round_ranks  # pylint: disable=g-import-not-at-top
  ranks = lrpet_jax.uniform_ranks(PARAMS, 0.54)
  rounded = round_ranks(ranks, PARAMS, 8)
  # 7 -> 8, 29 -> 32, head 4 -> 8 but capped at its full rank 10 -> 8.
  assert rounded["conv1"]["kernel"] == 8 and rounded["conv2"]["kernel"] == 32
  assert rounded["head"]["kernel"] == 8 and rounded["bn"]["scale"] is None
  assert round_ranks({"k": {"kernel": 9}}, {"k": {"kernel": np.zeros((12, 10))}},
                     8)["k"]["kernel"] == 10  # 16 capped at min(12, 10)
  with pytest.raises(ValueError, match="multiple"):
    round_ranks(ranks, PARAMS, 0)
