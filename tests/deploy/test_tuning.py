"""Latency tuning: every form it may choose computes the projected model's
function, and the whole-model guard keeps all layers dense when the tuned
model is not faster."""

import jax
import numpy as np
import pytest

import lrpet_jax
from lrpet_jax import models
from lrpet_jax.analysis import folding
from lrpet_jax.deploy import tuning
from reference import rel_err


@pytest.fixture(scope="module")
def projected():
  dense = models.create("resnet8")
  variables = jax.device_get(dense.init(
      jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
  ranks = lrpet_jax.uniform_ranks(variables["params"], 0.54)
  variables = {**variables, "params": lrpet_jax.project_params(
      variables["params"], ranks)}
  pairs = lrpet_jax.analysis.tracing.bn_pairs(lrpet_jax.analysis.tracing.eval_apply(dense),
                                     variables, (32, 32, 3)).pairs
  return dense, variables, ranks, pairs


def test_candidate_ranks_hand_computed():
  # 3x3x16x16 at rank 7: 7 and 8 factorize (8*(144+16) = 1280 < 2304); 16
  # would not (2560 >= 2304), so it is not tried.
  assert tuning.candidate_ranks(7, (3, 3, 16, 16)) == [None, 7, 8]
  assert tuning.candidate_ranks(29, (3, 3, 64, 64)) == [None, 29, 32]
  assert tuning.candidate_ranks(16, (3, 3, 32, 32)) == [None, 16]
  # 3x3x3x16 (m = 27): rank 7 splits (301 < 432), 8 too (344), 16 not.
  assert tuning.candidate_ranks(7, (3, 3, 3, 16)) == [None, 7, 8]


def test_every_mix_of_forms_gives_the_projected_logits(projected):
  dense, variables, ranks, pairs = projected
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  want = dense.apply(variables, x, train=False)
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_leaves_with_path(variables["params"])
  kernel_shape = {jax.tree_util.keystr(p): np.shape(v) for p, v in params}
  for _ in range(3):  # random mixes of dense / rank / rounded-rank layers
    def pick(path, r):
      if r is None:
        return None
      options = tuning.candidate_ranks(
          r, kernel_shape[jax.tree_util.keystr(path)])
      return options[rng.integers(len(options))]
    mix = jax.tree_util.tree_map_with_path(pick, ranks,
                                           is_leaf=lambda r: r is None)
    model = models.create("resnet8", ranks=mix)
    folded = folding.fold(lrpet_jax.factorize(variables, mix), pairs)
    assert rel_err(folding.folded_apply(model, folded, x), want) <= 1e-4


def test_tune_chooses_the_fastest_and_guards_the_whole_model(projected,
                                                             monkeypatch):
  dense, variables, ranks, pairs = projected
  # Fake clocks: every factorized form beats the dense one per layer...
  monkeypatch.setattr(tuning, "time_layer",
                      lambda site, r, *a, **k: 1.0 if r is None else 1.0 / r)
  whole = {"dense": 1.0, "tuned": 2.0}  # ... but the whole model is slower.
  monkeypatch.setattr(tuning, "interleaved_seconds",
                      lambda calls, repeats: dict(whole))
  tuned, report = tuning.tune(dense, variables, ranks, pairs, batch=2)
  assert report["kept_all_dense"] and report["speedup"] == 0.5
  assert all(r is None for r in jax.tree.leaves(
      tuned, is_leaf=lambda r: r is None))
  # Per layer, the largest rank tried had the smallest fake time.
  assert [row["tuned_rank"] for row in report["layers"]][:3] == [8, 8, 8]
  assert "every layer kept dense" in tuning.format_report(report)

  whole.update(tuned=0.99)  # 1 % faster: within noise, still all dense
  _, report = tuning.tune(dense, variables, ranks, pairs, batch=2)
  assert report["kept_all_dense"]
  whole.update(tuned=0.5)  # now the tuned model is faster: kept
  tuned, report = tuning.tune(dense, variables, ranks, pairs, batch=2)
  assert not report["kept_all_dense"]
  kept = lrpet_jax.core.ranks.Ranks.of_tree(tuned).to_json()
  assert kept and all(r % 8 == 0 for r in kept.values())


@pytest.mark.slow  # real timings of every form
def test_tune_on_this_machine_is_exact(projected):
  dense, variables, ranks, pairs = projected
  tuned, report = tuning.tune(dense, variables, ranks, pairs, batch=2,
                              repeats=1)
  assert report["backend"] == jax.default_backend()
  assert len(report["layers"]) == 7 and all(
      set(row["ms"]) >= {"dense"} for row in report["layers"])
  x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
  model = models.create("resnet8", ranks=tuned)
  folded = folding.fold(lrpet_jax.factorize(variables, tuned), pairs)
  assert rel_err(folding.folded_apply(model, folded, x),
                 dense.apply(variables, x, train=False)) <= 1e-4
