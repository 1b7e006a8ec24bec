"""analysis/accounting on its own: FLOPs counted from a jaxpr against hand
counts, the zoo's published MACs and params, the compact model's cost from
the dense layer costs, and uniform ranks meeting a budget."""

import functools
import math

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpet_jax
from lrpet_jax import models
from lrpet_jax.analysis import accounting
from lrpet_jax.analysis import folding
from lrpet_jax.analysis import tracing
from lrpet_jax.core import ranks as ranks_lib


def abstract_variables(model, size):
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def spec(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


# --- flops: one primitive at a time, counted by hand ------------------------

def conv(x, w, **kw):
  return lax.conv_general_dilated(
      x, w, window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


def test_a_convolution_counts_two_flops_per_tap_padding_included():
  # 5x5x4 output positions x (3·3·2) taps, zero-padding taps included.
  got = accounting.flops(conv, spec(1, 5, 5, 2), spec(3, 3, 2, 4))
  assert got == {"flops": 3600, "matmul_flops": 3600, "elementwise_flops": 0}


def test_a_grouped_convolution_counts_its_groups_inputs_only():
  # 2 groups: each output sees 3·3·(4/2) inputs: 5·5·6 outputs x 18.
  got = accounting.flops(functools.partial(conv, feature_group_count=2),
                         spec(1, 5, 5, 4), spec(3, 3, 2, 6))
  assert got["matmul_flops"] == 2 * 150 * 18


def test_a_transposed_convolution_skips_the_inserted_zeros():
  # lhs dilation 2 (a stride-2 transposed conv): every input pixel meets
  # every tap once, 4·4·2 inputs x 9 taps x 3 outputs; counted at its 9x9x3
  # outputs x 3·3·2 taps (mostly inserted zeros) it would be 4,374 MACs.
  transposed = lambda x, w: lax.conv_general_dilated(
      x, w, window_strides=(1, 1), padding=((2, 2), (2, 2)),
      lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = accounting.flops(transposed, spec(1, 4, 4, 2), spec(3, 3, 2, 3))
  assert got["matmul_flops"] == 2 * 32 * 9 * 3 == 1728


def test_matrix_products_elementwise_ops_reductions_and_pooling():
  got = accounting.flops(lambda a, b: a @ b, spec(3, 5), spec(5, 7))
  assert got["matmul_flops"] == 2 * 3 * 7 * 5
  # x·2 + 1: a multiply and an add per element; reshape and broadcast: 0.
  got = accounting.flops(lambda x: (x * 2.0 + 1.0).reshape(12), spec(3, 4))
  assert got == {"flops": 24, "matmul_flops": 0, "elementwise_flops": 24}
  # A sum: one per input element.
  got = accounting.flops(lambda x: x.sum(), spec(4, 6))
  assert got["elementwise_flops"] == 24
  # 2x2 max pooling, stride 2, of 4x4: 4 windows of 4 taps.
  got = accounting.flops(lambda x: nn.max_pool(x, (2, 2), (2, 2)),
                         spec(1, 4, 4, 1))
  assert got["elementwise_flops"] == 16


def test_a_scan_counts_its_body_once_per_iteration():
  def loop(h, w):
    return lax.scan(lambda c, _: (jnp.tanh(c @ w), None), h, None,
                    length=4)[0]
  got = accounting.flops(loop, spec(2, 3), spec(3, 3))
  # Each of 4 iterations: a (2,3)@(3,3) product, then tanh of 6 elements.
  assert got["matmul_flops"] == 4 * 2 * 6 * 3
  assert got["elementwise_flops"] == 4 * 6


def test_data_dependent_control_flow_is_refused():
  def loop(x):
    return lax.while_loop(lambda c: c.sum() < 10.0, lambda c: c * 2.0, x)
  with pytest.raises(NotImplementedError, match="control flow"):
    accounting.flops(loop, spec(3))


# --- cost and compact_cost on a model small enough to count -----------------

class ConvHead(nn.Module):
  """3x3 conv 4 -> 8 on 6x6, global mean, dense 8 -> 10."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.Conv(8, (3, 3), use_bias=False, name="conv")(x)
    return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def conv_head():
  model = ConvHead()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 4)))
  return model, variables


def test_cost_of_a_small_model_by_hand(conv_head):
  model, variables = conv_head
  got = accounting.cost(model, variables, (6, 6, 4))
  conv_macs, head_macs = 36 * (3 * 3 * 4) * 8, 8 * 10  # 10,368 and 80
  assert got["macs"] == conv_macs + head_macs
  assert got["params"] == 3 * 3 * 4 * 8 + 8 * 10 + 10
  # The mean's sum over 288 inputs, its division of 8, the head's bias 10.
  assert got["elementwise_flops"] == 288 + 8 + 10
  costs = accounting.layer_costs(model, variables, (6, 6, 4))
  assert [(c.kernel, c.macs) for c in costs] == [
      (("conv", "kernel"), conv_macs), (("head", "kernel"), head_macs)]


@pytest.mark.parametrize("rank, conv_macs, conv_weights", [
    # The conv as a 36x8 matrix at 36 positions. Rank 2: 2·(36 + 8) = 88
    # weights < 288, so split: 36·36·2 + 36·2·8 MACs.
    (2, 36 * 36 * 2 + 36 * 2 * 8, 88),
    # Rank 7: 7·44 = 308 weights >= 288, so it stays dense.
    (7, 36 * 288, 288),
])
def test_compact_cost_by_hand(conv_head, rank, conv_macs, conv_weights):
  model, variables = conv_head
  costs = accounting.layer_costs(model, variables, (6, 6, 4))
  ranks = {"conv": {"kernel": rank}, "head": {"kernel": None}}
  got = accounting.compact_cost(costs, 1000, ranks)
  assert got == {"macs": conv_macs + 80, "params": 1000 - 288 + conv_weights}


def test_compact_cost_is_the_factorized_models_counted_cost(conv_head):
  model, variables = conv_head
  ranks = {"conv": {"kernel": 3}, "head": {"kernel": 4, "bias": None}}
  compact = lrpet_jax.Factorized(model, ranks)
  counted = accounting.cost(compact, lrpet_jax.factorize(variables, ranks),
                            (6, 6, 4))
  total = sum(x.size for x in jax.tree.leaves(variables["params"]))
  predicted = accounting.compact_cost(
      accounting.layer_costs(model, variables, (6, 6, 4)), total, ranks)
  assert (counted["macs"], counted["params"]) == (predicted["macs"],
                                                  predicted["params"])


# --- the zoo: published figures ----------------------------------------------

@pytest.mark.parametrize("name, macs, params", [
    # He et al. 2016: 0.27M / 0.46M / 0.85M / 1.7M params.
    ("resnet20", 40_551_040, 0.27e6), ("resnet32", 68_862_592, 0.46e6),
    ("resnet56", 125_485_696, 0.85e6), ("resnet110", 252_887_680, 1.7e6),
])
def test_cifar_resnet_costs(name, macs, params):
  model = models.create(name)
  got = lrpet_jax.cost(model, abstract_variables(model, 32), (32, 32, 3))
  assert got["macs"] == macs  # 40.55M / 68.86M / 125.49M / 252.89M
  assert abs(got["params"] - params) / params < 0.02
  assert got["matmul_flops"] == 2 * macs
  assert got["flops"] == got["matmul_flops"] + got["elementwise_flops"]
  assert abs(got["flops"] - 2 * macs) / (2 * macs) < 0.02


def test_elementwise_flops_hand_counted():
  # ResNet-20 at 32x32, per example. Activations: 16384 (stage 1), 8192
  # (stage 2), 4096 (stage 3) elements. Each BatchNorm: subtract, multiply,
  # add (3 per element); the stem adds a ReLU; each block 2 BatchNorms, a
  # ReLU, the residual add and a ReLU (9 per element). Pooling: a sum over
  # 4096 inputs and 64 divisions; the head's bias: 10.
  stages = (16384, 8192, 4096)
  per_bn = sum(2 * 3 * a for a in stages) + 16384  # BN output elements
  unfolded = 4 * 16384 + 3 * 9 * sum(stages) + 4096 + 64 + 10  # 843,850
  model = models.create("resnet20")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  got = lrpet_jax.cost(model, variables, (32, 32, 3))
  # Plus the per-channel arithmetic of each BatchNorm's factor (rsqrt etc.).
  assert unfolded <= got["elementwise_flops"] <= 1.01 * unfolded
  # Folded, each BatchNorm is one bias add: 2 fewer per element, exactly.
  pairs = tracing.bn_pairs(tracing.eval_apply(model), variables,
                           (32, 32, 3)).pairs
  folded = folding.fold(variables, pairs)
  got = lrpet_jax.cost(model, variables, (32, 32, 3),
                       apply_fn=lambda v, x: folding.folded_apply(model,
                                                                  folded, x))
  assert got["elementwise_flops"] == unfolded - 2 * per_bn == 467_018
  assert got["matmul_flops"] == 2 * 40_551_040


def test_vgg16_and_resnet50_costs():
  vgg = models.create("vgg16")
  got = lrpet_jax.cost(vgg, abstract_variables(vgg, 32), (32, 32, 3))
  assert abs(got["macs"] - 313e6) / 313e6 < 0.005
  assert abs(got["params"] - 14.7e6) / 14.7e6 < 0.005
  r50 = models.create("resnet50", num_classes=1000)
  got = lrpet_jax.cost(r50, abstract_variables(r50, 224), (224, 224, 3))
  assert abs(got["macs"] - 4.1e9) / 4.1e9 < 0.01
  assert abs(got["params"] - 25.6e6) / 25.6e6 < 0.005


# --- ranks_for_budget --------------------------------------------------------

class TwoConvs(nn.Module):
  """Two 3x3 convs (3 -> 16 -> 32) on 8x8 and a dense head: a budget's step
  function has a few dozen steps."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Conv(16, (3, 3), use_bias=False, name="conv0")(x))
    x = nn.Conv(32, (3, 3), use_bias=False, name="conv1")(x)
    return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


def test_the_budget_picks_the_uniform_ratio_closest_to_the_target():
  model = TwoConvs()
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1, 8, 8, 3))))
  params = variables["params"]

  def macs_reduction(ranks):
    # By hand: 64 positions; conv0 a 27x16 matrix, conv1 a 144x32 one.
    total = dense = 64 * 27 * 16 + 64 * 144 * 32 + 32 * 10
    for (m, n), r in zip(((27, 16), (144, 32)),
                         (ranks["conv0"]["kernel"], ranks["conv1"]["kernel"])):
      if r * (m + n) < m * n:
        total += 64 * (m * r + r * n) - 64 * m * n
    return 1 - total / dense

  # Every reduction uniform ranks can reach, over a fine grid of ratios.
  reachable = sorted({macs_reduction(ranks_lib.uniform_ranks(params, q))
                      for q in np.linspace(0.0, 0.999, 2000)})
  for target in (0.3, 0.55, 0.8):
    got = macs_reduction(accounting.ranks_for_budget(
        model, variables, (8, 8, 3), macs_reduction=target))
    best = min(reachable, key=lambda r: abs(r - target))
    assert math.isclose(got, best), (target, got, best)


class TestRanksForBudget:

  @functools.cached_property
  def setup(self):
    model = models.create("resnet56")
    return model, abstract_variables(model, 32)

  def compact_macs_reduction(self, model, variables, ranks):
    compact = models.create("resnet56", ranks=ranks)
    compact_vars = jax.eval_shape(lambda: compact.init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    dense = lrpet_jax.cost(model, variables, (32, 32, 3))["macs"]
    return 1 - lrpet_jax.cost(compact, compact_vars, (32, 32, 3))["macs"] / dense

  @pytest.mark.slow  # over 6 s: the fast tier stays near 2 minutes
  def test_reaches_the_paper_budget(self):
    model, variables = self.setup
    ranks = lrpet_jax.ranks_for_budget(model, variables, (32, 32, 3),
                                       macs_reduction=0.507)
    got = self.compact_macs_reduction(model, variables, ranks)
    assert abs(got - 0.507) < 0.005
    # ratio 0.54 gives 50.7% fewer MACs (the paper's ResNet-56 setting).
    paper = self.compact_macs_reduction(
        model, variables, lrpet_jax.uniform_ranks(variables["params"], 0.54))
    assert abs(paper - 0.507) < 0.001

  def test_params_budget(self):
    model, variables = self.setup
    ranks = lrpet_jax.ranks_for_budget(model, variables, (32, 32, 3),
                                       params_reduction=0.6)
    compact = models.create("resnet56", ranks=ranks)
    n = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
        lambda: compact.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                             train=False))["params"]))
    assert abs(1 - n / 853_018 - 0.6) < 0.01

  def test_unreachable_budget_says_the_best(self):
    model, variables = self.setup
    with pytest.raises(ValueError, match="best achievable"):
      lrpet_jax.ranks_for_budget(model, variables, (32, 32, 3),
                                 macs_reduction=0.999)

  @pytest.mark.parametrize("kwargs", [
      {}, {"macs_reduction": 0.5, "params_reduction": 0.5},
      {"macs_reduction": 1.5}, {"params_reduction": 0.0},
      {"macs_reduction": True}])
  def test_bad_targets(self, kwargs):
    model, variables = self.setup
    with pytest.raises(ValueError, match="reduction"):
      lrpet_jax.ranks_for_budget(model, variables, (32, 32, 3), **kwargs)
