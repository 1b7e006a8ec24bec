"""Every Flax model right or refused: the layer table on linen patterns the
zoo does not have.

Each model here is checked against an independent reference: folded logits
against the unfolded model's own, rectification factors against
γ/sqrt(var + ε) in NumPy, MACs against hand counts, projections against a
float64 NumPy SVD, and the compact model against the projected dense one.
"""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpet_jax
from lrpet_jax.analysis import accounting
from lrpet_jax.analysis import folding
from lrpet_jax.analysis import tracing
from lrpet_jax.deploy import compact
from lrpet_jax.deploy import export_check
from lrpet_jax.pipeline import train
from lrpet_jax.ranking import selection
from reference import randomized_bn
from reference import reference_projection
from reference import rel_err

BN = functools.partial(nn.BatchNorm, use_running_average=True)


class SharedConv(nn.Module):
  """One conv module called twice, a BatchNorm after each call."""

  @nn.compact
  def __call__(self, x):
    conv = nn.Conv(3, (3, 3), name="shared")
    y = BN(name="bn_a")(conv(x))
    return BN(name="bn_b")(conv(nn.relu(y))).mean((1, 2))


class SkipRead(nn.Module):
  """A conv whose output feeds its BatchNorm and a skip add."""

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(3, (3, 3), use_bias=False, name="conv")(x)
    return (BN(name="bn")(y) + y).mean((1, 2))


class Eps(nn.Module):
  """A BatchNorm with its own epsilon."""

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(4, (3, 3), use_bias=False, name="conv")(x)
    return BN(epsilon=1e-3, name="bn")(y).mean((1, 2))


class TransposedKernel(nn.Module):
  """ConvTranspose(transpose_kernel=True), c_in = c_out: kernel (kh, kw,
  c_out, c_in), output features on axis 2."""

  @nn.compact
  def __call__(self, x):
    y = nn.ConvTranspose(3, (3, 3), transpose_kernel=True, use_bias=False,
                         name="up")(x)
    return BN(name="bn")(y).mean((1, 2))


class RematConv(nn.Module):
  @nn.compact
  def __call__(self, x):
    y = nn.remat(nn.Conv)(4, (3, 3), use_bias=False, name="conv")(x)
    return nn.Dense(2, name="head")(BN(name="bn")(y).mean((1, 2)))


class ScanBody(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.relu(nn.Conv(3, (3, 3), name="conv")(x)), None


class Scanned(nn.Module):
  """Three conv layers stacked by nn.scan: kernel (3, 3, 3, 3, 3)."""

  @nn.compact
  def __call__(self, x):
    x, _ = nn.scan(ScanBody, variable_axes={"params": 0},
                   split_rngs={"params": True}, length=3)(name="layers")(
                       x, None)
    return x.mean((1, 2))


class Conv1D(nn.Module):
  @nn.compact
  def __call__(self, x):  # x: (N, L, C)
    y = nn.Conv(8, (3,), use_bias=False, name="conv")(x)
    return BN(name="bn")(y).mean(1)


class StridedUp(nn.Module):
  """A strided transposed conv (upsampling 2×) between two BatchNorms."""

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(6, (3, 3), use_bias=False, name="conv")(x)
    y = nn.relu(BN(name="bn0")(y))
    y = nn.ConvTranspose(8, (3, 3), strides=(2, 2), use_bias=False,
                         name="up")(y)
    return BN(name="bn1")(y).mean((1, 2))


class Attention(nn.Module):
  @nn.compact
  def __call__(self, x):  # x: (N, L, D)
    y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16,
                                        name="att")(x)
    return nn.Dense(3, name="head")(y.mean(1))


class Depthwise(nn.Module):
  @nn.compact
  def __call__(self, x):
    y = nn.Conv(8, (3, 3), use_bias=False, name="stem")(x)
    y = nn.Conv(8, (3, 3), feature_group_count=8, use_bias=False,
                name="dw")(y)
    return BN(name="bn")(y).mean((1, 2))


class SharedNorm(nn.Module):
  """One BatchNorm module after two convs."""

  @nn.compact
  def __call__(self, x):
    norm = BN(name="bn")
    a = norm(nn.Conv(4, (3, 3), use_bias=False, name="a")(x))
    b = norm(nn.Conv(4, (1, 1), use_bias=False, name="b")(x))
    return (a * b).mean((1, 2))


class WithLayerNorm(nn.Module):
  """conv → LayerNorm, conv with bias → BatchNorm, Dense → BatchNorm."""

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(name="ln")(nn.Conv(4, (3, 3), name="c0")(x))
    y = BN(name="bn")(nn.Conv(4, (3, 3), name="c1")(y))
    return BN(name="bn_d")(nn.Dense(5, name="d")(y.mean((1, 2))))


def sequential():
  """nn.Sequential: no flag anywhere, BatchNorm in eval mode at
  construction."""
  return nn.Sequential([nn.Conv(4, (3, 3), use_bias=False), BN(),
                        nn.relu, lambda x: x.mean((1, 2))])


# model, input shape (one example)
MODELS = {
    "shared_conv": (SharedConv, (6, 6, 3)),
    "skip_read": (SkipRead, (6, 6, 3)),
    "eps": (Eps, (6, 6, 3)),
    "transposed_kernel": (TransposedKernel, (4, 4, 3)),
    "remat": (RematConv, (6, 6, 3)),
    "scanned": (Scanned, (6, 6, 3)),
    "conv1d": (Conv1D, (10, 3)),
    "strided_up": (StridedUp, (4, 4, 3)),
    "attention": (Attention, (5, 8)),
    "depthwise": (Depthwise, (6, 6, 3)),
    "shared_norm": (SharedNorm, (6, 6, 3)),
    "layer_norm": (WithLayerNorm, (6, 6, 3)),
    "sequential": (sequential, (6, 6, 3)),
}


def setup(name, seed=0):
  make, shape = MODELS[name]
  model = make()
  x = jax.random.normal(jax.random.key(seed + 1), (4,) + shape)
  variables = model.init(jax.random.key(seed), x)
  if "batch_stats" in variables:  # running var down to 2e-3: ε matters
    variables = randomized_bn(variables, seed)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, v: v * 4e-3 if p[-1].key == "var" else v, variables)
  return model, x, variables, shape


def table(name):
  model, x, variables, shape = setup(name)
  return tracing.table(tracing.eval_apply(model), variables, shape)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_folded_model_computes_the_unfolded_one(name):
  """Folding keeps every model's logits: only BatchNorms that can fold are
  removed, each with its own ε along the op's output axis."""
  model, x, variables, shape = setup(name)
  pairing = tracing.bn_pairs(tracing.eval_apply(model), variables, shape)
  want = np.asarray(model.apply(variables, x), np.float64)
  got = np.asarray(folding.folded_apply(
      model, folding.fold(variables, pairing), x), np.float64)
  assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want)), name


@pytest.mark.parametrize("name, folds, kept", [
    ("shared_conv", {}, {"bn_a": "shared/kernel runs 2 times",
                         "bn_b": "shared/kernel's first call feeds another"
                                 " BatchNorm"}),
    ("skip_read", {}, {"bn": "conv/kernel's output is also read by add"}),
    ("eps", {"conv/kernel": "bn"}, {}),
    ("transposed_kernel", {"up/kernel": "bn"}, {}),
    ("remat", {"conv/kernel": "bn"}, {}),
    ("strided_up", {"conv/kernel": "bn0", "up/kernel": "bn1"}, {}),
    ("shared_norm", {"a/kernel": "bn", "b/kernel": "bn"}, {}),
    ("layer_norm", {"c1/kernel": "bn", "d/kernel": "bn_d"}, {}),
    ("sequential", {"layers_0/kernel": "layers_1"}, {}),
])
def test_which_batchnorms_fold_and_why_not(name, folds, kept):
  t = table(name)
  assert t.folds == folds
  assert t.kept_norms == kept


def test_pairs_carry_each_batchnorms_epsilon():
  """a = γ / sqrt(var + ε) with the module's ε = 1e-3 (22 % off with 1e-5
  at var 2e-3)."""
  model, x, variables, shape = setup("eps")
  pairs = tracing.bn_pairs(tracing.eval_apply(model), variables, shape).pairs
  assert pairs == {"conv/kernel": "bn"} and pairs["conv/kernel"].epsilon == 1e-3
  scales = lrpet_jax.bn_out_scales(variables["params"],
                                   variables["batch_stats"], pairs)
  gamma = np.asarray(variables["params"]["bn"]["scale"], np.float64)
  var = np.asarray(variables["batch_stats"]["bn"]["var"], np.float64)
  np.testing.assert_allclose(scales["conv"]["kernel"],
                             gamma / np.sqrt(var + 1e-3), rtol=1e-6)


def test_transposed_kernel_is_folded_on_its_output_axis_not_ranked():
  t = table("transposed_kernel")
  layer = t.layer("up/kernel")
  assert (layer.kind, layer.cols, layer.rankable) == ("conv", (2,), False)
  assert "not the last axis" in layer.reason
  assert "up/kernel" not in t.pairs  # rectification needs the last axis
  assert "not the kernel's last axis" in t.unpaired["up/kernel"]


def test_remat_layer_is_paired():
  assert table("remat").pairs == {"conv/kernel": "bn"}


def test_scan_stacked_kernels_count_every_layer_and_stay_unranked():
  model, x, variables, shape = setup("scanned")
  t = tracing.table(tracing.eval_apply(model), variables, shape)
  (layer,) = t.layers
  assert layer.stacked == (0,) and layer.calls == 3 and not layer.rankable
  per_layer = 6 * 6 * 3 * (3 * 3 * 3)  # SAME: 36 positions, 3 out, 27 in
  assert layer.macs == 3 * per_layer
  assert lrpet_jax.cost(model, variables, shape, apply_fn=tracing.eval_apply(
      model))["macs"] == 3 * per_layer
  rule = selection.RankRule(ratio=0.5)
  ranks = selection.select(rule, model, variables, shape, table=t)
  assert jax.tree.leaves(ranks) == []
  assert "nn.scan" in selection.unranked(rule, t)["layers/conv/kernel"]


def test_one_dimensional_conv_macs_by_hand():
  model, x, variables, shape = setup("conv1d")
  (layer,) = table("conv1d").layers
  assert layer.macs == 10 * 3 * 3 * 8  # L · k · c_in · c_out (SAME)
  assert lrpet_jax.cost(model, variables, shape,
                        apply_fn=tracing.eval_apply(model))["macs"] == 720


def test_strided_transposed_conv_macs_without_inserted_zeros():
  model, x, variables, shape = setup("strided_up")
  t = tracing.table(tracing.eval_apply(model), variables, shape)
  up = t.layer("up/kernel")
  assert up.kind == "transposed_conv" and up.rankable
  # Each of the 4·4 input positions meets 3·3 taps · 6 inputs · 8 outputs.
  assert up.macs == 4 * 4 * 9 * 6 * 8
  assert up.out_positions == 8 * 8
  conv = 4 * 4 * 9 * 3 * 6
  assert lrpet_jax.cost(model, variables, shape, apply_fn=tracing.eval_apply(
      model))["macs"] == conv + up.macs
  # Factorized at rank 2: the strided half at the input positions, the 1×1
  # half at the output positions; the compact model's jaxpr agrees.
  ranks = jax.tree_util.tree_map_with_path(
      lambda p, _: 2 if p[0].key == "up" else None, variables["params"])
  small = lrpet_jax.Factorized(model, ranks)
  small_vars = lrpet_jax.factorize(variables, ranks)
  counted = lrpet_jax.cost(small, small_vars, shape,
                           apply_fn=tracing.eval_apply(small))["macs"]
  assert counted == conv + 4 * 4 * 9 * 6 * 2 + 8 * 8 * 2 * 8
  assert accounting.compact_cost(list(t.layers), 0, ranks)["macs"] == counted


def test_compact_strided_transposed_conv_is_the_projected_dense_model():
  model, x, variables, shape = setup("strided_up")
  t = tracing.table(tracing.eval_apply(model), variables, shape)
  rule = selection.RankRule(ratio=0.5)
  ranks = selection.select(rule, model, variables, shape, table=t)
  scales = lrpet_jax.bn_out_scales(variables["params"],
                                   variables["batch_stats"], t.pairs)
  params = lrpet_jax.project_params(variables["params"], ranks,
                                    out_scales=scales)
  assert ranks["up"]["kernel"] == 4  # n = 8 outputs at ratio 0.5
  want = reference_projection(variables["params"]["up"]["kernel"], 4,
                              out_scale=scales["up"]["kernel"])
  assert rel_err(params["up"]["kernel"], want) < 1e-5
  dense = {**variables, "params": params}
  small = lrpet_jax.Factorized(model, ranks)
  got = small.apply(lrpet_jax.factorize(dense, ranks), x)
  np.testing.assert_allclose(got, model.apply(dense, x), rtol=1e-4, atol=1e-5)


def test_attention_kernels_are_dense_layers_never_convolutions():
  model, x, variables, shape = setup("attention")
  t = tracing.table(tracing.eval_apply(model), variables, shape)
  kinds = {l.name: (l.kind, l.rankable) for l in t.layers}
  assert kinds == {
      "att/query/kernel": ("dense", False), "att/key/kernel": ("dense", False),
      "att/value/kernel": ("dense", False), "att/out/kernel": ("dense", True),
      "head/kernel": ("dense", True)}
  # The query map's matrix is the (8, 16) the op contracts, not (16, 8).
  assert t.layer("att/query/kernel").rows == (0,)
  assert t.layer("att/query/kernel").cols == (1, 2)
  default = selection.select(selection.RankRule(ratio=0.5), model,
                                  variables, shape, table=t)
  assert jax.tree.leaves(default) == []
  rule = selection.RankRule(ratio=0.5, project_dense=True)
  ranks = selection.select(rule, model, variables, shape, table=t)
  assert lrpet_jax.core.ranks.Ranks.of_tree(ranks) == {"att/out/kernel": 4,
                                                  "head/kernel": 1}
  dense = {"params": lrpet_jax.project_params(variables["params"], ranks)}
  small = lrpet_jax.Factorized(model, ranks)
  np.testing.assert_allclose(small.apply(lrpet_jax.factorize(dense, ranks), x),
                             model.apply(dense, x), rtol=1e-4, atol=1e-5)


def test_grouped_conv_is_left_unranked_and_a_rank_for_it_refused(tmp_path):
  model, x, variables, shape = setup("depthwise")
  t = tracing.table(tracing.eval_apply(model), variables, shape)
  dw = t.layer("dw/kernel")
  assert (dw.kind, dw.groups, dw.rankable) == ("grouped_conv", 8, False)
  assert dw.macs == 6 * 6 * 9 * 1 * 8  # one input channel per output
  rule = selection.RankRule(ratio=0.5)
  ranks = selection.select(rule, model, variables, shape, table=t)
  assert lrpet_jax.core.ranks.Ranks.of_tree(ranks) == {"stem/kernel": 4}
  assert "grouped" in selection.unranked(rule, t)["dw/kernel"]
  path = tmp_path / "ranks.json"
  path.write_text('{"dw/kernel": 2}')
  with pytest.raises(ValueError, match=r"^ranks_file: dw/kernel cannot have a"
                     r" rank: grouped convolution \(8 groups\)"):
    selection.select(selection.RankRule(ratio=0.0,
                                                  ranks_file=str(path)),
                          model, variables, shape, table=t)


def test_layer_norm_leaves_its_conv_unpaired():
  t = table("layer_norm")
  assert t.pairs == {"c1/kernel": "bn", "d/kernel": "bn_d"}
  assert t.unpaired == {"c0/kernel": "feeds no BatchNorm"}


def test_three_dimensional_conv_macs_by_hand():
  model = nn.Conv(2, (3, 3, 3), use_bias=False)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 5, 6, 3)))
  (layer,) = tracing.layers(model.apply, variables, (4, 5, 6, 3))
  assert layer.macs == 4 * 5 * 6 * 27 * 3 * 2 and layer.rankable


def test_broken_fold_fails_the_export_check(tmp_path):
  """One wrong bias in the folded model: the check refuses the artifact
  and moves it aside."""
  model, x, variables, shape = setup("strided_up")
  pairing = tracing.bn_pairs(tracing.eval_apply(model), variables, shape)
  ranks = selection.select(selection.RankRule(ratio=0.5), model,
                                variables, shape)
  dense = {**variables, "params": lrpet_jax.project_params(
      variables["params"], ranks)}
  small = lrpet_jax.Factorized(model, ranks)
  small_vars = lrpet_jax.factorize(dense, ranks)
  folded = folding.fold(small_vars, pairing)
  norm = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
  stages = dict(reference=(model, dense), compact=(small, small_vars))
  images = export_check.sample_images(shape, count=8)
  good = lrpet_jax.deploy.serving.write(tmp_path / "good", small, folded,
                                 input_shape=shape, mean=norm[0], std=norm[1],
                                 description={})
  passed = compact.checked(tmp_path / "good", images, norm, shape,
                           folded=(small, folded), serving_file=good, **stages)
  assert max(passed[k] for k in ("compact", "folded", "serving")) < 1e-5
  broken = jax.tree.map(np.array, folded)
  broken[folding.BIAS]["up"]["bias"][3] += 0.5
  bad = lrpet_jax.deploy.serving.write(tmp_path / "serving", small, broken,
                                input_shape=shape, mean=norm[0], std=norm[1],
                                description={})
  with pytest.raises(export_check.ExportCheckError,
                     match=r"^export check: the folded model differs from"
                           r" the trained dense model by"):
    compact.checked(tmp_path / "serving", images, norm, shape,
                    folded=(small, broken), serving_file=bad, **stages)
  assert not (tmp_path / "serving").exists()
  assert (tmp_path / "serving.rejected" / "model.jax_export").is_file()


def test_flags_default_from_the_signature():
  assert tracing.eval_flags(sequential()) == {}
  assert tracing.eval_flags(SharedConv()) == {}
  assert tracing.eval_flags(lrpet_jax.models.create("resnet8")) == {
      "train": False}


class Tricky(nn.Module):
  """The patterns that once shipped a wrong artifact, in one model: a conv
  called twice with a BatchNorm after each call, a depthwise conv, a
  BatchNorm with its own ε."""

  num_classes: int = 4
  dtype: object = None

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, dtype=self.dtype)
    x = nn.relu(norm(epsilon=1e-3)(nn.Conv(8, (3, 3), dtype=self.dtype)(x)))
    shared = nn.Conv(8, (3, 3), use_bias=False, dtype=self.dtype)
    x = nn.relu(norm()(shared(x)))
    x = nn.relu(norm()(shared(x)))
    x = nn.Conv(8, (3, 3), feature_group_count=8, dtype=self.dtype)(x)
    x = nn.relu(norm()(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x.mean((1, 2)))


def tricky(num_classes, dtype=None):
  return Tricky(num_classes, dtype)


@pytest.mark.slow
def test_pipeline_ships_a_checked_artifact_of_a_tricky_model(tiny_config,
                                                              tmp_path):
  workdir = tmp_path / "w"
  summary = train.train_and_evaluate(
      tiny_config(model="test_layer_table:tricky"), str(workdir))
  check = summary["export_check"]
  assert check["reference"] == "dense" and check["images"] == 16
  assert max(check[k] for k in ("compact", "folded", "serving")) <= 1e-4
  assert summary["dense_accuracy"] == summary["compact_accuracy"]
  pairs = json.loads((workdir / "bn_pairs.json").read_text())
  assert pairs["folded"] == {"Conv_0/kernel": "BatchNorm_0",
                             "Conv_2/kernel": "BatchNorm_3"}
  assert pairs["not_folded"] == {
      "BatchNorm_1": "Conv_1/kernel runs 2 times",
      "BatchNorm_2": "Conv_1/kernel's first call feeds another BatchNorm"}
  layers = json.loads((workdir / "layers.json").read_text())
  assert set(layers["unranked"]) == {"Conv_2/kernel"}
  assert set(json.loads((workdir / "ranks.json").read_text())) == {
      "Conv_0/kernel", "Conv_1/kernel"}


def test_a_layers_input_shape_is_its_modules_not_the_padded_ops():
  """CIRCULAR padding pads before the conv: tuning times the layer on the
  module's own input (6, 6, 3), not the op's (8, 8, 3)."""
  model = nn.Conv(4, (3, 3), padding="CIRCULAR")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
  (layer,) = tracing.layers(model.apply, variables, (6, 6, 3))
  assert layer.input_shape == (6, 6, 3) and layer.output_shape == (6, 6, 4)
  assert layer.macs == 6 * 6 * 9 * 3 * 4  # padding taps counted
