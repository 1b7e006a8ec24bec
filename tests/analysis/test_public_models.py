"""Public Flax models by other authors (``public_models``, installed from the
registry at pinned versions), and the kinds of layer the issue found wrong,
each right against an independent reference or refused in one line.

References: MACs from the modules' own attributes and call shapes (Flax
method interception, output positions × kernel taps × input features per
group), not from the jaxpr; each projected kernel against a float64 NumPy
SVD (``reference.reference_projection``); the compact and the folded model
against the projected dense model's logits.
"""

import math

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpet_jax
from lrpet_jax import models
from lrpet_jax.analysis import accounting
from lrpet_jax.analysis import folding
from lrpet_jax.analysis import tracing
from lrpet_jax.pipeline import steps
from reference import randomized_bn
from reference import reference_projection
from reference import rel_err

public_models = pytest.importorskip("public_models")
for _package in ("jax_resnet", "flaxmodels", "jax_models"):
  pytest.importorskip(_package, reason="pip install --no-deps -r"
                      " tests/requirements-models.txt")

NAMES = sorted(public_models.FLAGS)
SHAPE = public_models.INPUT
# The products of two activations (no module's kernel), by hand: CaiT's 2
# blocks of 16 patch tokens, 2 heads of 16 features (q·kᵀ and attn·v), then
# its class-attention block (1 query over 17 tokens).
ATTENTION = {"cait": 2 * 2 * 2 * 16 * 16 * 16 + 2 * 2 * 1 * 17 * 16}


def module_macs(model, variables, x, **flags) -> int:
  """MACs per example from each conv / dense module's attributes and the
  shapes it is called with (one example of the batch)."""
  total = []

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    m = context.module
    if context.method_name != "__call__":
      return out
    if isinstance(m, (nn.Conv, nn.ConvLocal)):
      c_in = args[0].shape[-1]
      groups = getattr(m, "feature_group_count", 1)
      taps = math.prod(m.kernel_size)
      total.append(math.prod(out.shape[1:]) * taps * c_in // groups)
    elif isinstance(m, nn.Dense):
      total.append(math.prod(out.shape[1:]) * args[0].shape[-1])
    elif type(m).__name__ == "DepthwiseConv2D":  # jax-models' own layer
      total.append(math.prod(out.shape[1:]) * math.prod(m.kernel_shape))
    return out

  with nn.intercept_methods(count):
    model.apply(variables, x, **flags)
  return sum(total)


def setup(name):
  model = models.with_train_flag(getattr(public_models, name)(10),
                                 public_models.FLAGS[name])
  x = jax.random.normal(jax.random.key(1), (2,) + SHAPE)
  variables = randomized_bn(
      model.init(jax.random.key(0), x[:1], train=False), 0)
  table = tracing.table(tracing.eval_apply(model), variables, SHAPE)
  return model, variables, table, x


# One in the fast tier (a mixer of Dense layers with an inverted flag); the
# rest take 10-45 s each on 2 cores (flaxmodels' own BatchNorm class is in
# the fast tier through its table below).
FAST = ("mlp_mixer",)


@pytest.mark.parametrize("name", [
    n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
    for n in NAMES])
def test_public_model_table_step_compact_and_fold(name):
  model, variables, table, x = setup(name)
  # MACs: the table, cost() and a count from the modules themselves agree.
  want = module_macs(model, variables, x[:1], train=False)
  assert table.dense_macs == want
  assert lrpet_jax.cost(model, variables, SHAPE)["macs"] == (
      want + ATTENTION.get(name, 0))
  # Ranks through the table (what the pipeline does), one projection with
  # BN rectification against a float64 NumPy SVD.
  chosen = [l.kernel for l in table.selected(("conv", "transposed_conv",
                                              "dense"))]
  assert chosen, name
  params = variables["params"]
  ranks = lrpet_jax.uniform_ranks(params, 0.5,
                                  include=lrpet_jax.core.ranks.by_name(chosen))
  scales = lrpet_jax.bn_out_scales(params, variables.get("batch_stats", {}),
                                   table.pairs)
  projected = lrpet_jax.project_params(params, ranks, out_scales=scales)
  flat_r = lrpet_jax.core._trees.leaves_by_path(ranks)
  flat_s = lrpet_jax.core._trees.leaves_by_path(scales)
  flat_p = lrpet_jax.core._trees.leaves_by_path(params)
  got = lrpet_jax.core._trees.leaves_by_path(projected)
  for key, rank in flat_r.items():
    if rank is None:
      continue
    ref = reference_projection(flat_p[key], rank, out_scale=flat_s.get(key),
                               eps=1e-5)
    assert rel_err(got[key], ref) <= 1e-4, key
  # The compact model is the projected dense model; folded, too.
  dense_vars = {**variables, "params": projected}
  want_logits = model.apply(dense_vars, x, train=False)
  small = lrpet_jax.Factorized(model, ranks)
  small_vars = lrpet_jax.factorize(dense_vars, ranks)
  assert rel_err(small.apply(small_vars, x, train=False), want_logits) <= 1e-4
  pairing = tracing.Pairing.of(table)
  for m, v in ((model, dense_vars), (small, small_vars)):
    folded = folding.fold(v, pairing)
    assert rel_err(folding.folded_apply(m, folded, x, train=False),
                   want_logits) <= 1e-4


def test_a_batchnorm_of_another_class_is_paired_rectified_and_folded():
  """flaxmodels' own BatchNorm class (flax's math) pairs like nn.BatchNorm,
  with its epsilon read from the graph."""
  _, _, table, _ = setup("flaxmodels_resnet18")
  assert len(table.pairs) == 20 and len(table.folds) == 20
  assert table.pairs["Conv_0/kernel"] == "BatchNorm_0"
  assert table.pairs["Conv_0/kernel"].epsilon == 1e-5
  assert table.unpaired == {"Dense_0/kernel": "feeds no BatchNorm"}


@pytest.mark.slow  # two tables of 54 and 6 layers: 11 s
def test_layers_known_by_their_computation():
  """jax-resnet's convs inside its own blocks are ranked (nn.Conv itself);
  ResNeXt's 32-group convs are refused by name; ConvMixer's BatchNorm after
  GELU pairs with nothing."""
  _, _, table, _ = setup("jax_resnext50")
  grouped = [l for l in table.layers if l.kind == "grouped_conv"]
  assert len(grouped) == 16 and not any(l.rankable for l in grouped)
  assert all("32 groups" in l.reason for l in grouped)
  _, _, table, _ = setup("conv_mixer")
  assert not table.pairs and len(table.kept_norms) == 5


class StdConv(nn.Conv):
  """BiT's weight-standardized conv (big_vision's pattern): the kernel is
  standardized inside the layer before it convolves."""

  def param(self, name, *args, **kwargs):
    p = super().param(name, *args, **kwargs)
    if name == "kernel":
      mean = jnp.mean(p, axis=(0, 1, 2), keepdims=True)
      p = (p - mean) / jnp.sqrt(jnp.var(p, axis=(0, 1, 2), keepdims=True)
                                + 1e-10)
    return p


class BiTLike(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = StdConv(8, (3, 3), use_bias=False, name="conv1")(x)
    x = nn.relu(nn.GroupNorm(num_groups=4)(x))
    x = StdConv(8, (3, 3), use_bias=False, name="conv2")(x)
    return nn.Dense(5, name="head")(nn.relu(nn.GroupNorm(4)(x)).mean((1, 2)))


@pytest.mark.slow  # VAN's eager init: 20 s
def test_a_model_jax_cannot_trace_is_refused_in_one_line():
  """jax-models' VAN calls .item() on a traced value in its __call__."""
  name, flag = next(iter(public_models.REFUSED.items()))
  model = models.with_train_flag(getattr(public_models, name)(10), flag)
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE),
                         train=False)  # eagerly: it runs, untraced
  with pytest.raises(ValueError) as e:
    tracing.table(tracing.eval_apply(model), variables, SHAPE)
  assert str(e.value).startswith(
      "model: its forward pass cannot be traced by jax.jit")
  assert "\n" not in str(e.value)


def make_bit(num_classes=5, dtype=None):
  del num_classes, dtype
  return BiTLike()


def test_weight_standardized_convs_are_counted_and_refused_by_name():
  model = BiTLike()
  shape = (8, 8, 3)
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape))
  table = tracing.table(tracing.eval_apply(model), variables, shape)
  conv1 = table.layer("conv1/kernel")
  assert not conv1.rankable and "computed on before use" in conv1.reason
  # By hand: 8·8 positions × 3·3·3 taps·inputs × 8, then × 3·3·8 × 8, + 8·5.
  hand = 64 * 27 * 8 + 64 * 72 * 8 + 8 * 5
  assert table.dense_macs == hand
  assert lrpet_jax.cost(model, variables, shape)["macs"] == hand
  ranks = lrpet_jax.uniform_ranks(variables["params"], 0.5)
  with pytest.raises(ValueError, match="^conv1: cannot factorize a StdConv"):
    lrpet_jax.Factorized(model, ranks).apply(
        lrpet_jax.factorize(variables, ranks), jnp.zeros((1,) + shape))
  # The pipeline refuses it naming the layers and why (not "every leaf is
  # None").
  from lrpet_jax.pipeline import setup  # pylint: disable=g-import-not-at-top
  import smoke  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.update(model="test_public_models:make_bit", num_classes=5)
  with pytest.raises(ValueError) as e:
    setup.make_setting(config, shape, 10)
  assert str(e.value).startswith("model: none of its conv/transposed_conv"
                                 " layers can be ranked - conv1/kernel: its"
                                 " kernel is computed on before use")
  assert "\n" not in str(e.value)


class Local(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.ConvLocal(8, (3, 3), padding="VALID", name="local")(x)
    unused = nn.Dense(7, name="dead")(x.mean((1, 2)))  # pylint: disable=unused-variable
    return nn.Dense(5, name="head")(x.mean((1, 2)))


def test_conv_local_and_dead_work_by_hand():
  model = Local()
  shape = (10, 10, 3)
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape))
  hand = 8 * 8 * (3 * 3 * 3) * 8 + 8 * 5  # the dead head costs nothing
  assert lrpet_jax.cost(model, variables, shape)["macs"] == hand
  table = tracing.table(tracing.eval_apply(model), variables, shape)
  assert table.dense_macs == hand
  assert table.layer("dead/kernel").reason == (
      "its output never reaches the model's output")
  assert not table.layer("local/kernel").rankable


class DropPath(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), name="conv")(x)
    if train:  # timm's drop path, from a stream of its own name
      keep = jax.random.bernoulli(self.make_rng("drop_path"), 0.5,
                                  (x.shape[0], 1, 1, 1))
      x = x * keep
    return nn.Dense(self.num_classes, name="head")(x.mean((1, 2)))


def test_every_rng_stream_is_drawn_from_the_step_key():
  model = DropPath()
  x = jnp.ones((16, 6, 6, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  key = jax.random.key(3)
  run = lambda k: steps.train_apply(model, variables, x, k)[0]
  np.testing.assert_array_equal(run(key), run(key))
  assert not np.array_equal(run(key), run(jax.random.key(4)))


class SyncBN(nn.Module):
  """flax examples/imagenet's pattern: BatchNorm(axis_name='batch')."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name="batch",
                     name="bn")(x)
    return nn.Dense(self.num_classes, name="head")(x.mean((1, 2)))


def test_cross_device_batchnorm_trains_on_the_global_batch():
  model = SyncBN()
  x = jax.random.normal(jax.random.key(0), (8, 6, 6, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  table = tracing.table(tracing.eval_apply(model), variables, (6, 6, 3))
  assert table.axis_names == {"batch"} and table.pairs == {
      "conv/kernel": "bn"}
  _, mutated = jax.jit(lambda v, x: steps.train_apply(
      model, v, x, jax.random.key(0), table.axis_names))(variables, x)
  # The statistics of the whole batch, computed by hand (momentum 0.99
  # from a zero mean).
  y = jax.lax.conv_general_dilated(
      np.asarray(x, np.float64), np.asarray(variables["params"]["conv"][
          "kernel"], np.float64), (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  mean = np.asarray(y).mean((0, 1, 2))
  np.testing.assert_allclose(mutated["batch_stats"]["bn"]["mean"],
                             0.01 * mean, rtol=1e-4, atol=1e-7)


class Block(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 3, rngs=rngs)
    self.bn = nnx.BatchNorm(3, rngs=rngs)

  def __call__(self, x):
    return nnx.gelu(self.bn(self.linear(x)))


class ScannedMLP(nnx.Module):
  """flax's NNX scan-over-layers pattern: blocks made by nnx.vmap, run by
  nnx.scan."""

  def __init__(self, rngs):
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
      return Block(rngs)
    self.blocks = create(rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x, block):
      return block(x)
    return forward(x, self.blocks)


def test_nnx_transforms_are_refused_in_one_line():
  model = ScannedMLP(nnx.Rngs(0))
  with pytest.raises(ValueError) as e:
    tracing.table(model, None, (3,))
  assert str(e.value).startswith("model: an nnx.Linear ran as a module the"
                                 " layer table cannot name")
  assert "\n" not in str(e.value)


class NnxDropoutAtCall(nnx.Module):
  """The NNX ViT of flax's docs takes its dropout key in the call."""

  def __init__(self, rngs):
    self.linear = nnx.Linear(4, 3, rngs=rngs)
    self.dropout = nnx.Dropout(0.5)

  def __call__(self, x, rngs: nnx.Rngs | None = None):
    return self.dropout(self.linear(x), rngs=rngs)


def test_nnx_model_taking_rngs_in_its_call_trains():
  model = lrpet_jax.analysis.nnx_models.NnxModel(NnxDropoutAtCall)
  variables = model.init(jax.random.key(0), None)
  x = jnp.ones((64, 4))
  run = lambda k: steps.train_apply(model, variables, x, k)[0]
  a, b = run(jax.random.key(1)), run(jax.random.key(2))
  np.testing.assert_array_equal(a, run(jax.random.key(1)))
  assert not np.array_equal(a, b) and np.mean(np.asarray(a) == 0) > 0.2


class Plain(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(x)


def test_a_model_without_a_flag_runs_and_a_missing_flag_is_not_suggested():
  model = models.with_train_flag(nn.Sequential([nn.Dense(4), nn.relu,
                                                nn.Dense(2)]), "train")
  v = model.init(jax.random.key(0), jnp.ones((1, 3)), train=False)
  assert model.apply(v, jnp.ones((1, 3)), train=True).shape == (1, 2)
  with pytest.raises(ValueError) as e:
    models.check_flag(Plain(), "training")
  assert str(e.value) == (
      "model_flag: 'training': Plain.__call__(x) takes no training flag;"
      " leave model_flag unset (the model is then called without one)")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jax_resnet18", "mlp_mixer"])
def test_public_model_through_the_pipeline(name, tiny_config, tmp_path):
  from lrpet_jax.pipeline import train  # pylint: disable=g-import-not-at-top
  summary = train.train_and_evaluate(
      tiny_config(model=f"public_models:{name}",
                  model_flag=public_models.FLAGS[name], num_steps=3,
                  steps_per_call=1, project_every_steps=2),
      str(tmp_path / "w"))
  assert max(summary["export_check"][k] for k in (
      "compact", "folded", "serving")) <= 1e-5
  assert summary["compact_macs"] < summary["dense_macs"]


def make_sync_bn(num_classes=4, dtype=None):
  del dtype
  return SyncBN(num_classes)


class NnxConvDropoutAtCall(nnx.Module):
  def __init__(self, num_classes, rngs):
    self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.dropout = nnx.Dropout(0.5)
    self.head = nnx.Linear(8, num_classes, rngs=rngs)

  def __call__(self, x, rngs: nnx.Rngs | None = None):
    x = nnx.relu(self.bn(self.conv(x)))
    return self.head(self.dropout(x.mean((1, 2)), rngs=rngs))


def make_nnx_dropout_at_call(num_classes=4, dtype=None, *, rngs):
  del dtype
  return NnxConvDropoutAtCall(num_classes, rngs)


@pytest.mark.slow
@pytest.mark.parametrize("factory,classes", [
    ("make_sync_bn", 4), ("make_nnx_dropout_at_call", 4)])
def test_rng_streams_and_synced_batchnorm_through_the_pipeline(
    factory, classes, tiny_config, tmp_path):
  """The issue's exit-4 cases train and export: a BatchNorm(axis_name=
  'batch'), an NNX model taking rngs in its call (a drop_path stream: in
  process, above)."""
  from lrpet_jax.pipeline import train  # pylint: disable=g-import-not-at-top
  summary = train.train_and_evaluate(
      tiny_config(model=f"test_public_models:{factory}", num_classes=classes,
                  num_steps=3, steps_per_call=1, project_every_steps=2),
      str(tmp_path / "w"))
  assert max(summary["export_check"][k] for k in (
      "compact", "folded", "serving")) <= 1e-5
