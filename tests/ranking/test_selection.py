"""ranking/selection on its own: which kernels get which rank, against
ranks counted by hand on a small model, and one-line refusals."""

import json

import flax.linen as nn
import jax
import pytest

from lrpet_jax.analysis import tracing
from lrpet_jax.ranking import selection

SHAPE = (8, 8, 3)


class Small(nn.Module):
  """conv0 3·3·3 → 16, conv1 3·3·16 → 32, head 32 → 10."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(16, (3, 3), name="conv0")(x))
    x = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))
    return nn.Dense(10, name="head")(x.mean((1, 2)))


def _select(**fields):
  model = Small()
  variables = tracing.abstract_variables(model, SHAPE)
  ranks = selection.select(selection.RankRule(**fields), model, variables,
                           SHAPE)
  return {"/".join(k.key for k in path): r for path, r in
          jax.tree_util.tree_leaves_with_path(ranks)}


def test_uniform_ratio_ranks_every_conv_by_the_papers_formula():
  # n = min(27, 16) = 16 → int(16 − 16·0.5) = 8; n = min(144, 32) = 32 → 16.
  assert _select(ratio=0.5) == {"conv0/kernel": 8, "conv1/kernel": 16}
  # r = max(1, ...): a ratio near 1 leaves rank 1.
  assert _select(ratio=0.99) == {"conv0/kernel": 1, "conv1/kernel": 1}
  # The classifier too with project_dense: n = min(32, 10) = 10 → 5.
  assert _select(ratio=0.5, project_dense=True) == {
      "conv0/kernel": 8, "conv1/kernel": 16, "head/kernel": 5}


def test_floors_and_a_ranks_file(tmp_path):
  assert _select(ratio=0.9, rank_floor=3, first_rank_floor=12) == {
      "conv0/kernel": 12, "conv1/kernel": 3}
  path = tmp_path / "ranks.json"
  path.write_text(json.dumps({"conv1/kernel": 7}))
  assert _select(ratio=0.5, ranks_file=str(path)) == {"conv1/kernel": 7}


def test_a_macs_cut_picks_the_uniform_ratio_that_meets_it():
  # Hand-counted MACs of 8×8 'SAME' outputs: conv0 64·27·16 = 27,648,
  # conv1 64·144·32 = 294,912, head 320 (its bias adds none).
  dense = 27_648 + 294_912 + 320
  ranks = _select(ratio=0.5, macs_reduction=0.4)
  compact = (64 * ranks["conv0/kernel"] * (27 + 16)
             + 64 * ranks["conv1/kernel"] * (144 + 32) + 320)
  assert 1 - compact / dense >= 0.4


def test_bad_fields_are_one_line():
  with pytest.raises(ValueError, match=r"^project_layers: give it or"
                     " project_dense, not both"):
    selection.RankRule(ratio=0.5, project_layers="conv", project_dense=True)
  with pytest.raises(ValueError, match=r"^project_layers: 'attention' selects"
                     r" no layer that can be ranked"):
    _select(ratio=0.5, project_layers="attention")
