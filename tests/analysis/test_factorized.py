"""analysis/factorized on its own: the break-even guard and the weights and
MACs of a layer at a rank, counted by hand."""

from lrpet_jax.analysis import factorized


def test_break_even_guard():
  assert factorized.is_factorized(7, (3, 3, 3, 16))      # 7·(27+16)=301 < 432
  assert not factorized.is_factorized(11, (3, 3, 3, 16))  # 11·43=473 ≥ 432
  assert not factorized.is_factorized(None, (3, 3, 3, 16))
  assert not factorized.is_factorized(5, (10, 10))         # 5·20 = 100 ≥ 100


def test_weights_at_a_rank():
  # A 3x3 conv 4 -> 8 is a 36x8 matrix: rank 2 splits it into 2·(36 + 8).
  assert factorized.layer_weights(2, (3, 3, 4, 8)) == 88
  assert factorized.layer_weights(7, (3, 3, 4, 8)) == 288  # 7·44 ≥ 288: dense
  assert factorized.layer_weights(None, (64, 10)) == 640


def test_macs_at_a_rank():
  # 36 output positions: dense 36·36·8; split, a 3x3 conv to 2 channels at
  # every position, then a 1x1 conv 2 -> 8 at every position.
  assert factorized.layer_macs(None, (3, 3, 4, 8), 36) == 36 * 288
  assert factorized.layer_macs(2, (3, 3, 4, 8), 36) == 36 * 36 * 2 + 36 * 2 * 8
  # A stride-2 transposed conv: its MACs per weight are its 16 input
  # positions, while the 1x1 half runs at its 64 output positions.
  assert factorized.layer_macs(2, (3, 3, 4, 8), 16, 64) == (
      16 * 36 * 2 + 64 * 2 * 8)
  assert factorized.layer_macs(7, (3, 3, 4, 8), 16, 64) == 16 * 288
