"""Flax NNX models: the same analysis, projection and compact model as Linen.

References: the zoo's Linen ResNet-20 (the NNX ResNet-20 given its variables
must compute, pair, count and project alike), a float64 NumPy SVD, MACs
counted by hand.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrpet_jax
from lrpet_jax import models
from lrpet_jax.analysis import nnx_models
from lrpet_jax.analysis import tracing
from lrpet_jax.core.ranks import Ranks
from reference import randomized_bn, reference_projection, rel_err

from examples import own_nnx_model


@pytest.fixture(scope="module")
def resnet20_pair():
  linen, nnx_model = models.build("resnet20"), models.build("resnet20_nnx")
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  variables = randomized_bn(jax.jit(lambda k: linen.init(
      k, x, train=False))(jax.random.key(1)), 2)
  return linen, nnx_model, variables, x


def test_nnx_resnet20_is_the_zoo_resnet20(resnet20_pair):
  linen, nnx_model, variables, x = resnet20_pair
  own = jax.eval_shape(lambda: nnx_model.init(jax.random.key(1), x))
  assert jax.tree.structure(own) == jax.tree.structure(variables)
  assert jax.tree.map(lambda a: a.shape, own) == jax.tree.map(
      jnp.shape, variables)
  run = lambda m, **kw: jax.jit(lambda v, x: m.apply(v, x, **kw))(
      variables, x)
  assert rel_err(run(nnx_model, train=False), run(linen, train=False)) < 1e-6
  out, stats = run(nnx_model, train=True, mutable=["batch_stats"])
  ref, ref_stats = run(linen, train=True, mutable=["batch_stats"])
  assert rel_err(out, ref) < 1e-6
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(ref_stats)):
    assert rel_err(a, b) < 1e-6
  t_nnx = tracing.table(tracing.eval_apply(nnx_model), variables, (32, 32, 3))
  t_linen = tracing.table(tracing.eval_apply(linen), variables, (32, 32, 3))
  assert [l.name for l in t_nnx.layers] == [l.name for l in t_linen.layers]
  assert [l.macs for l in t_nnx.layers] == [l.macs for l in t_linen.layers]
  assert t_nnx.pairs == t_linen.pairs and len(t_nnx.pairs) == 19
  assert t_nnx.folds == t_linen.folds
  # ResNet-20 at 32x32: 40.55M MACs (the zoo's count, hand-checked there).
  assert t_nnx.dense_macs == 40_551_040


@pytest.mark.slow
def test_nnx_optimizer_projects_as_the_linen_pipeline_and_numpy(
    resnet20_pair):
  """One step of AdamW + LRPET with BN rectification: through
  ``nnx.Optimizer`` on the NNX model, and as a plain Optax update of the
  Linen model's variables, from the same state and batch."""
  linen, _, variables, x = resnet20_pair
  labels = jnp.arange(4) % 10
  pairs = tracing.bn_pairs(tracing.eval_apply(linen), variables,
                           (32, 32, 3)).pairs
  ranks = Ranks({k: 5 for k in pairs})
  tx = lambda: optax.chain(optax.adamw(1e-3),
                           lrpet_jax.low_rank_projection(ranks, every=1))

  def loss(logits):
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  (_, stats), grads = jax.jit(jax.value_and_grad(
      lambda p: (lambda o: (loss(o[0]), o[1]["batch_stats"]))(linen.apply(
          {**variables, "params": p}, x, train=True,
          mutable=["batch_stats"])), has_aux=True))(variables["params"])
  opt = tx()

  @jax.jit
  def linen_step(params, stats, grads):
    updates, _ = opt.update(
        grads, opt.init(params), params,
        out_scales=lrpet_jax.bn_out_scales(params, stats, pairs))
    return optax.apply_updates(params, updates)

  linen_params = linen_step(variables["params"], stats, grads)

  model = nnx_models.NnxModel.of(
      models.nnx_cifar_resnet.make(rngs=nnx.Rngs(0))).module(variables,
                                                           train=True)
  optimizer = nnx.Optimizer(model, tx(), wrt=nnx.Param)

  @nnx.jit
  def nnx_step(model, optimizer):
    grads = nnx.grad(lambda m: loss(m(x)))(model)
    optimizer.update(model, grads, out_scales=lrpet_jax.bn_out_scales(
        nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat), pairs))

  nnx_step(model, optimizer)
  nnx_params = nnx_models.variables(model)["params"]

  assert rel_err(jnp.concatenate([a.ravel() for a in jax.tree.leaves(
      nnx_params)]), jnp.concatenate([a.ravel() for a in jax.tree.leaves(
          linen_params)])) < 1e-5
  adam = optax.adamw(1e-3)
  stepped = optax.apply_updates(variables["params"], adam.update(
      grads, adam.init(variables["params"]), variables["params"])[0])
  block = "stage2_block1"
  gamma = variables["params"][block]["bn1"]["scale"]
  a = np.asarray(gamma) / np.sqrt(np.asarray(stats[block]["bn1"]["var"])
                                  + 1e-5)
  got = nnx_params[block]["conv1"]["kernel"]
  assert np.linalg.matrix_rank(np.asarray(got).reshape(-1, 32), 1e-4) == 5
  assert rel_err(got, reference_projection(
      stepped[block]["conv1"]["kernel"], 5, out_scale=a)) < 1e-5


def _hand_counted():
  """Two NNX models with their own names and nesting, and their MACs per
  32x32x3 example counted by hand."""

  class Stack(nnx.Module):  # nnx.Sequential, a dict of modules, a transposed
    def __init__(self, rngs):  # convolution and a LayerNorm
      self.features = nnx.Sequential(
          nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs),
          nnx.BatchNorm(8, epsilon=1e-3, rngs=rngs), nnx.relu)
      self.up = nnx.ConvTranspose(8, 4, (2, 2), strides=(2, 2), rngs=rngs)
      self.heads = nnx.Dict(norm=nnx.LayerNorm(4, rngs=rngs),
                            out=nnx.Linear(4, 10, rngs=rngs))

    def __call__(self, x):
      x = self.up(self.features(x))
      return self.heads["out"](self.heads["norm"](x.mean((1, 2))))

  own = own_nnx_model.make(10, rngs=nnx.Rngs(0))
  # stem: 16x16 outputs x 16 x (3*3*3); body: 16x16 x 32 x (3*3*16); head 32*10
  own_macs = {"stem/kernel": 256 * 16 * 27, "body/0/kernel": 256 * 32 * 144,
              "head/kernel": 320}
  # conv 16x16 x 8 x 27; transposed: input 16x16x8 x taps 4 x c_out 4 (no
  # inserted zeros); 4*10
  stack_macs = {"features/layers/0/kernel": 256 * 8 * 27,
                "up/kernel": 256 * 8 * 4 * 4, "heads/out/kernel": 40}
  return [(own, own_macs, {"stem/kernel": "norms/0",
                           "body/0/kernel": "norms/1"}),
          (Stack(nnx.Rngs(0)), stack_macs,
           {"features/layers/0/kernel": "features/layers/1"})]


@pytest.mark.parametrize("case", [0, 1])
def test_hand_counted_macs_and_pairs_of_nnx_models(case):
  module, macs, pairs = _hand_counted()[case]
  table = tracing.table(module, None, (32, 32, 3))
  assert {l.name: l.macs for l in table.layers} == macs
  assert lrpet_jax.cost(module, nnx_models.variables(module), (32, 32, 3))[
      "macs"] == sum(macs.values())  # from the jaxpr, the module as given
  assert table.pairs == pairs
  assert all(l.rankable for l in table.layers)
  if case == 1:  # the BatchNorm's own epsilon, as Linen's
    assert table.pairs["features/layers/0/kernel"].epsilon == 1e-3


def test_attention_projections_are_refused_by_name_not_guessed():
  mha = nnx.MultiHeadAttention(4, 16, 16, decode=False, rngs=nnx.Rngs(0))
  table = tracing.table(mha, None, (5, 16))
  assert sorted(l.name for l in table.layers) == [
      "key/kernel", "out/kernel", "query/kernel", "value/kernel"]
  assert all(l.kind != "conv" and not l.rankable for l in table.layers)
  assert all("LinearGeneral" in l.reason or "axes" in l.reason
             for l in table.layers)


def test_variables_of_an_nnx_state_are_refused_in_one_line():
  module = own_nnx_model.make(10, rngs=nnx.Rngs(0))
  graph, state = nnx.split(module)
  with pytest.raises(ValueError, match=r"^variables: a kernel outside a"
                     r" 'params' collection \(body/0/kernel\).*nnx\.Module"):
    tracing.bn_pairs(lambda v, x: nnx.merge(graph, v)(x), state, (8, 8, 3))


def test_compact_nnx_model_is_the_projected_model():
  model = models.build("examples.own_nnx_model:make", 10)
  variables = randomized_bn(model.init(jax.random.key(0), None), 1)
  table = tracing.table(tracing.eval_apply(model), variables, (16, 16, 3))
  ranks = Ranks({l.name: 3 for l in table.selected()})
  assert set(ranks) == {"stem/kernel", "body/0/kernel"}
  projected = {**variables, "params": lrpet_jax.project_params(
      variables["params"], ranks)}
  compact = lrpet_jax.Factorized(model, ranks)
  compact_variables = lrpet_jax.factorize(projected, ranks)
  x = jax.random.normal(jax.random.key(3), (5, 16, 16, 3))
  dense_logits = model.apply(projected, x)
  assert rel_err(compact.apply(compact_variables, x), dense_logits) < 1e-5
  module = compact.nnx_model.module(compact_variables)
  assert isinstance(module, nnx.Module)
  assert isinstance(module.body[0], nnx_models.SplitLayer)
  assert module.stem.first_kernel.shape == (3, 3, 3, 3)
  assert module.stem.second_kernel.shape == (1, 1, 3, 16)
  assert rel_err(module(x), dense_logits) < 1e-5
  with pytest.raises(ValueError, match=r"^ranks name stem_typo/kernel, which"
                     r" is not a kernel of the NNX model"):
    lrpet_jax.Factorized(model, Ranks({"stem_typo/kernel": 3}))
  dense_cost = lrpet_jax.cost(model, variables, (16, 16, 3))
  compact_cost = lrpet_jax.cost(compact, compact_variables, (16, 16, 3))
  # stem 8x8 x (27*3 + 3*16); body 8x8 x (144*3 + 3*32): the two halves
  assert dense_cost["macs"] - compact_cost["macs"] == (
      64 * 16 * 27 + 64 * 32 * 144) - (64 * (81 + 48) + 64 * (432 + 96))


def test_variables_of_another_kind_are_refused():
  class Counter(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 2, rngs=rngs)
      self.calls = nnx.Variable(jnp.zeros(()))

    def __call__(self, x):
      return self.linear(x)

  with pytest.raises(ValueError, match=r"^model: the NNX model's variable"
                     r" calls is an nnx.Variable"):
    nnx_models.NnxModel(Counter)


def test_a_factory_without_rngs_returning_nnx_is_told_the_signature(
    monkeypatch):
  import types  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  fake = types.ModuleType("fake_nnx_factory")
  fake.make = lambda num_classes, dtype=None: own_nnx_model.make(
      num_classes, dtype, rngs=nnx.Rngs(0))
  monkeypatch.setitem(sys.modules, "fake_nnx_factory", fake)
  with pytest.raises(ValueError, match=r"takes rngs: factory\(num_classes=,"
                     r" dtype=, rngs=\)"):
    models.build("fake_nnx_factory:make", 10)


def test_readme_nnx_block_runs_and_serves(tmp_path, monkeypatch):
  import tempfile  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its mkdtemp()
  import docs  # pylint: disable=g-import-not-at-top
  ns = {}
  exec(docs.block("docs/nnx.md", "class OwnNnxNet"), ns)  # pylint: disable=exec-used
  assert ns["pairs"] == {"stem/kernel": "norms/0", "body/0/kernel": "norms/1"}
  # The Linen block's model in NNX: the same MACs, dense and compact.
  assert (ns["macs"], ns["small_macs"]) == (1_290_560, 809_280)
  # The kernels the optimizer projected (4 steps, every 2) have rank <= r.
  kernel = np.asarray(ns["model"].body[0].kernel[...]).reshape(-1, 32)
  assert np.linalg.matrix_rank(kernel, 1e-4 * np.abs(kernel).max()) <= 16
  import jax.export  # pylint: disable=g-import-not-at-top
  served = jax.export.deserialize((ns["out"] / "model.jax_export").read_bytes())
  pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  want = ns["compact"](((pixels / 255 - 0.5) / 0.25).astype(np.float32))
  assert rel_err(served.call(pixels), want) <= 1e-4


def test_layers_an_nnx_transform_recreates_are_refused_not_unpaired():
  class Remat(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(8, rngs=rngs)

    def __call__(self, x):
      return self.bn(nnx.remat(lambda conv, x: conv(x))(self.conv, x))

  with pytest.raises(ValueError, match=r"^model: an nnx.Conv ran as a module"
                     r" the layer table cannot name \(re-created by an NNX"
                     r" transform such as nnx.remat"):
    tracing.table(Remat(nnx.Rngs(0)), None, (8, 8, 3))


def test_latency_tuning_of_an_nnx_model_is_refused_before_anything_is_read(
    tmp_path):
  from lrpet_jax.deploy import from_checkpoint  # pylint: disable=g-import-not-at-top
  from lrpet_jax.ranking import selection  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"^tune_for: latency tuning .* NNX"):
    from_checkpoint.compact_from_checkpoint(
        str(tmp_path / "absent"), str(tmp_path / "out"),
        "examples.own_nnx_model:make", rule=selection.RankRule(ratio=0.5),
        tune_for="cpu", dataset="cifar10")
  assert not (tmp_path / "out").exists()
