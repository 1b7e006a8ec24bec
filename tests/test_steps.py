"""How the loop splits the steps between two boundaries into compiled calls."""

from lrpet_jax import steps


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
