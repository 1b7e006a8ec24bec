"""The model zoo: its ranks, BatchNorm pairs and compact models (their cost
accounting: ``tests/analysis/test_accounting.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpet_jax
from lrpet_jax import models
from lrpet_jax.analysis import folding
from lrpet_jax.analysis import tracing
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.pipeline import config_check
from lrpet_jax.ranking import selection
from reference import randomized_bn
from reference import rel_err

CIFAR = ("resnet20", "resnet32", "resnet56", "resnet110", "vgg16")
IMAGENET = ("resnet18", "resnet34", "resnet50")


def abstract_variables(model, size):
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def test_unknown_model_lists_names():
  with pytest.raises(ValueError, match="resnet56.*vgg16"):
    models.create("resnet57")


def pipeline_config(name):
  """The config the command line would run for zoo model ``name``."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  config_file = "imagenet" if name in IMAGENET else (
      "vgg16" if name == "vgg16" else "cifar")
  path = pathlib.Path(__file__).parents[2] / "configs" / f"{config_file}.py"
  spec = importlib.util.spec_from_file_location(config_file, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model = name
  return config


def select_ranks(config, model, abstract, input_shape):
  """The ranks the pipeline chooses under ``config``."""
  return selection.select(config_check.part(selection.RankRule, config),
                               model, abstract, input_shape)


@pytest.mark.parametrize("name", CIFAR + IMAGENET)
def test_pipeline_ranks_every_conv_and_no_classifier(name):
  config = pipeline_config(name)
  model = models.create(name, config.num_classes)
  size = 64 if name in IMAGENET else 32
  abstract = abstract_variables(model, size)
  ranks = select_ranks(config, model, abstract, (size, size, 3))
  ranked = ranks_lib.Ranks.of_tree(ranks).to_json()
  kernels = {"/".join(k.key for k in p): x.ndim for p, x in
             jax.tree_util.tree_leaves_with_path(abstract["params"])
             if p[-1].key == "kernel"}
  assert set(ranked) == {k for k, ndim in kernels.items() if ndim == 4}
  assert "head/kernel" in kernels and kernels["head/kernel"] == 2
  # The option: the classifier too.
  config.project_dense = True
  with_head = ranks_lib.Ranks.of_tree(
      select_ranks(config, model, abstract, (size, size, 3))).to_json()
  assert set(with_head) == set(kernels)


def test_vgg16_config_has_the_authors_rank_floors():
  config = pipeline_config("vgg16")
  model = models.create("vgg16")
  abstract = abstract_variables(model, 32)
  ranks = ranks_lib.Ranks.of_tree(
      select_ranks(config, model, abstract, (32, 32, 3))).to_json()
  # Ratio 0.54: conv0 (27x64) int(27 - 14.58) = 12 -> floor 18; conv1
  # (576x64) int(64 - 34.56) = 29 -> floor 43; a 512-wide layer
  # int(512 - 276.48) = 235, above the floor.
  assert ranks["conv0/kernel"] == 18
  assert ranks["conv1/kernel"] == 43
  assert ranks["conv12/kernel"] == 235
  assert "head/kernel" not in ranks


def traced_pairs(model, variables, size):
  return tracing.bn_pairs(tracing.eval_apply(model), variables,
                          (size, size, 3)).pairs


def naming_rule_pairs(params):
  """The zoo's pairs by its naming rule (the sibling of ``.../<x>conv<y>`` is
  ``.../<x>bn<y>``): the reference that tracing must reproduce."""
  leaves = {tuple(k.key for k in p) for p, _ in
            jax.tree_util.tree_leaves_with_path(params)}
  pairs = {}
  for path in leaves:
    if path[-1] == "kernel" and "conv" in path[-2]:
      bn = path[:-2] + (path[-2].replace("conv", "bn", 1),)
      if bn + ("scale",) in leaves:
        pairs["/".join(path)] = "/".join(bn)
  return pairs


@pytest.mark.parametrize("name", CIFAR + IMAGENET)
def test_traced_pairs_are_the_zoo_pairs(name):
  size = 64 if name in IMAGENET else 32
  model = models.create(name)
  variables = abstract_variables(model, size)
  pairing = tracing.bn_pairs(tracing.eval_apply(model), variables,
                             (size, size, 3))
  assert pairing.pairs == naming_rule_pairs(variables["params"])
  assert pairing.unpaired == ("head/kernel",)  # the Dense head
  if name == "resnet50":
    assert pairing.pairs["stage2_block0/downsample/conv/kernel"] == (
        "stage2_block0/downsample/bn")
    assert pairing.pairs["stage1_block0/conv3/kernel"] == "stage1_block0/bn3"


# One model of each architecture the zoo builds (a basic-block CIFAR ResNet
# at two depths, VGG, a basic- and a bottleneck-block ImageNet ResNet):
# ResNet-32, -110 and -34 are the same code at other depths, and cost 5-20 s
# each on 2 cores alone, 2 minutes beside the multi-process tests. Slow tier.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16", "resnet18",
                                  "resnet50"])
def test_compact_model_matches_projected_dense(name):
  size = 32  # the ImageNet ResNets too (1x1 after their last stage)
  dense = models.create(name)
  x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  # Compiled whole, not op by op: 2.5x faster for ResNet-34 on this CPU.
  variables = randomized_bn(jax.jit(
      lambda: dense.init(jax.random.key(0), x, train=False))(), 2)
  ranks = lrpet_jax.uniform_ranks(variables["params"], 0.54)
  pairs = traced_pairs(dense, variables, size)
  scales = lrpet_jax.bn_out_scales(variables["params"],
                                   variables["batch_stats"], pairs)
  variables = {**variables, "params": jax.jit(
      lambda p, s: lrpet_jax.project_params(p, ranks, out_scales=s))(
          variables["params"], scales)}
  compact = models.create(name, ranks=ranks)
  compact_vars = lrpet_jax.factorize(variables, ranks)
  want = dense.apply(variables, x, train=False)
  got = compact.apply(compact_vars, x, train=False)
  assert rel_err(got, want) <= 1e-4
  # BatchNorm folded into each layer: the same logits, dense and compact.
  for model, v, logits in ((dense, variables, want),
                           (compact, compact_vars, got)):
    folded = folding.fold(v, pairs)
    assert "batch_stats" not in folded and not any(
        "bn" in jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(folded["params"]))
    assert rel_err(folding.folded_apply(model, folded, x), logits) <= 1e-4
  # Its cost is what the analytic accounting predicts.
  costs = lrpet_jax.cost(compact, compact_vars, (size, size, 3))
  from lrpet_jax.analysis import accounting as cost_lib  # pylint: disable=g-import-not-at-top
  predicted = cost_lib.compact_cost(
      cost_lib.layer_costs(dense, variables, (size, size, 3)),
      sum(v.size for v in jax.tree.leaves(variables["params"])), ranks)
  assert costs["macs"] == predicted["macs"]
  assert costs["params"] == predicted["params"]
  assert costs["matmul_flops"] == 2 * costs["macs"]


def test_factorized_kernel_shapes():
  dense = models.create("resnet20")
  variables = dense.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  ranks = lrpet_jax.uniform_ranks(variables["params"], 0.5,
                                  include=ranks_lib.is_kernel)
  compact = lrpet_jax.factorize(variables, ranks)["params"]
  conv = compact["stage2_block0"]["conv1"]
  assert conv["first_kernel"].shape == (3, 3, 16, 16)
  assert conv["second_kernel"].shape == (1, 1, 16, 32)
  head = compact["head"]  # rank 5: 5·(64 + 10) = 370 < 640 weights
  assert head["first_kernel"].shape == (64, 5)
  assert head["second_kernel"].shape == (5, 10) and "kernel" not in head
  w = np.asarray(variables["params"]["stage1_block0"]["conv1"]["kernel"])
  first = compact["stage1_block0"]["conv1"]["first_kernel"].reshape(-1, 8)
  second = compact["stage1_block0"]["conv1"]["second_kernel"].reshape(8, 16)
  u, s, vt = np.linalg.svd(w.reshape(-1, 16).astype(np.float64))
  np.testing.assert_allclose(first @ second, (u[:, :8] * s[:8]) @ vt[:8],
                             rtol=1e-4, atol=1e-6)
