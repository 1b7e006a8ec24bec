"""Rank policies against hand-computed answers and a float64 NumPy SVD."""

import numpy as np
import pytest

import flax.linen as nn
import jax
import jax.numpy as jnp

from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.ranking import policies
from lrpet_jax.ranking import selection


def kernel_with_spectrum(shape, singular_values, seed=0):
  """A kernel whose (prod(...), c_out) matrix has these singular values."""
  rng = np.random.default_rng(seed)
  m, n = int(np.prod(shape[:-1])), shape[-1]
  u, _ = np.linalg.qr(rng.normal(size=(m, n)))
  v, _ = np.linalg.qr(rng.normal(size=(n, n)))
  s = np.zeros(n)
  s[:len(singular_values)] = singular_values
  return ((u * s) @ v.T).reshape(shape).astype(np.float32)


def test_energy_rule_against_numpy_svd():
  # Squared singular values 16, 9, 4, 1 (energy 30): kept 16/30 = 0.53 at
  # rank 1, 25/30 = 0.83 at 2, 29/30 = 0.97 at 3.
  params = {"conv": {"kernel": kernel_with_spectrum((3, 3, 4, 6),
                                                    [4, 3, 2, 1])}}
  ranks = ranks_lib.uniform_ranks(params, 0.0)
  spectra = policies.layer_spectra(params, ranks)
  np.testing.assert_allclose(spectra["conv/kernel"][:5], [4, 3, 2, 1, 0],
                             atol=1e-5)
  for threshold, rank in ((0.5, 1), (0.8, 2), (0.84, 3), (0.97, 4),
                          (1.0, 4)):
    assert policies.energy_ranks(spectra, threshold) == {
        "conv/kernel": rank}, threshold
  # With BatchNorm factors the spectrum is that of W·diag(a), as projected.
  a = np.linspace(0.5, 2.0, 6)
  scaled = policies.layer_spectra(
      params, ranks, {"conv": {"kernel": a}})["conv/kernel"]
  want = np.linalg.svd(np.asarray(params["conv"]["kernel"], np.float64)
                       .reshape(36, 6) * a, compute_uv=False)
  np.testing.assert_allclose(scaled, want, rtol=1e-6)


def test_budget_greedy_hand_computed():
  # Two layers of one shape (100x100, one position): a rank costs 200 MACs.
  # Normalized squared spectra A: .4 .3 .2 .1, B: .25 each. From rank 1 each,
  # three more ranks fit (1000 MACs); by gain per MAC: A2 (.3), then B2 and
  # B3 (.25 each) before A3 (.2): A = 2, B = 3, 1.45 of energy kept (A3 +
  # B2 would keep 1.40).
  shape = policies.LayerShape(100, 100, 1)
  spectra = {"a": np.sqrt([.4, .3, .2, .1]), "b": np.sqrt([.25] * 4)}
  ranks = policies.budget_ranks(spectra, {"a": shape, "b": shape}, 1000)
  assert ranks == {"a": 2, "b": 3}
  # 999 MACs: only two increments fit (A2, B2).
  assert policies.budget_ranks(
      spectra, {"a": shape, "b": shape}, 999) == {"a": 2, "b": 2}


def test_budget_past_break_even_goes_dense():
  # 4x4, one position: rank 1 costs 8 (< 16, factorized); rank 2 would cost
  # 16, not less than dense, so the next step is the dense layer (full rank
  # 4) for 8 more MACs.
  small = policies.LayerShape(4, 4, 1)
  spectra = {"s": np.sqrt([.7, .1, .1, .1])}
  assert policies.budget_ranks(spectra, {"s": small}, 16) == {"s": 4}
  assert policies.budget_ranks(spectra, {"s": small}, 15) == {"s": 1}
  assert small.macs(1) == 8 and small.macs(2) == 16 and small.macs(None) == 16


def test_unreachable_budget_names_the_field():
  shape = policies.LayerShape(100, 100, 10)  # rank 1: 2,000 MACs
  with pytest.raises(ValueError, match="^budget_macs_reduction: out of reach:"
                     " even rank 1 in every projected layer costs 4,000 MACs,"
                     " over the 3,999 allowed$"):
    policies.budget_ranks({"a": np.ones(4), "b": np.ones(4)},
                          {"a": shape, "b": shape}, 3999)


def test_macs_budget_counts_the_unranked_layers():
  # 1,000 MACs in all, 800 of them in the ranked layer: a 50 % cut leaves
  # 500, of which the unranked 200 take their share.
  shapes = {"a": policies.LayerShape(20, 40, 1)}  # 800 dense
  assert policies.macs_budget(shapes, 1000, 0.5) == 300


@pytest.mark.parametrize("fields,policy", [
    ({}, "uniform"), ({"ranks_file": "r.json"}, "ranks_file"),
    ({"macs_reduction": 0.5}, "uniform_budget"),
    ({"params_reduction": 0.5}, "uniform_budget"),
    ({"rank_policy": "energy"}, "energy"),
    ({"rank_policy": "budget", "budget_macs_reduction": 0.5}, "budget")])
def test_a_rule_names_one_policy(fields, policy):
  rule = selection.RankRule(ratio=0.5, **fields)
  assert rule.policy.NAME == policy
  assert rule.decided_in_training == (policy in ("energy", "budget"))


@pytest.mark.parametrize("fields,message", [
    ({"rank_policy": "spectral"}, "rank_policy: unknown 'spectral'; valid:"
     " uniform, energy, budget"),
    ({"macs_reduction": 0.5, "ranks_file": "r.json"},
     "ranks_file: give at most one of macs_reduction, params_reduction and"
     " ranks_file (also macs_reduction)"),
    ({"macs_reduction": 0.5, "params_reduction": 0.5},
     "params_reduction: give at most one of macs_reduction, params_reduction"
     " and ranks_file (also macs_reduction)"),
    # The two MACs cuts have two names: a uniform ratio's, the budget's.
    ({"rank_policy": "budget", "macs_reduction": 0.5},
     "macs_reduction: not with rank_policy 'budget' (the budget policy's cut"
     " is budget_macs_reduction)"),
    ({"rank_policy": "budget"}, "budget_macs_reduction: rank_policy 'budget'"
     " needs a MACs cut in (0, 1), got 0.0"),
    ({"rank_policy": "energy", "ranks_file": "r.json"},
     "ranks_file: not with rank_policy 'energy'"),
    ({"budget_macs_reduction": 0.5},
     "budget_macs_reduction: not with rank_policy 'uniform'")])
def test_fields_of_two_policies_are_one_line(fields, message):
  with pytest.raises(ValueError) as e:
    selection.RankRule(ratio=0.5, **fields)
  assert str(e.value) == message


class TwoConvs(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Conv(8, (3, 3), name="a")(x))
    return nn.Conv(6, (1, 1), name="b")(x).mean((1, 2))


def test_a_new_policy_is_one_class_and_an_entry(monkeypatch):
  class Half(selection.RankPolicy):
    """In training: half of each layer's full rank."""
    NAME = "half"
    DECIDED_IN_TRAINING = True

    def decide(self, spectra, shapes, dense_macs):
      return {k: max(1, len(s) // 2) for k, s in spectra.items()}

  monkeypatch.setitem(selection.REGISTRY, "half", Half)
  rule = selection.RankRule(ratio=0.5, rank_policy="half")
  model = TwoConvs()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  full = selection.select(rule, model, variables, (8, 8, 3))
  plan = selection.deferred(rule, model, variables, (8, 8, 3), step=3)
  ranks, record = selection.decide(plan, variables["params"], full)
  # Full ranks: min(3*3*3, 8) = 8 and min(8, 6) = 6 (NumPy's SVD sees them).
  for name, full_rank in (("a", 8), ("b", 6)):
    w = np.asarray(variables["params"][name]["kernel"])
    assert np.linalg.matrix_rank(w.reshape(-1, w.shape[-1])) == full_rank
    assert ranks[name]["kernel"] == full_rank // 2
  assert record["policy"] == "half" and record["step"] == 3
