"""The authors' CIFAR ViT: its size counted by hand from their layers, each
layer's role in the layer table, and compact models equal to the projected
dense one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpet_jax
from lrpet_jax import models
from lrpet_jax.analysis import tracing
from lrpet_jax.core.ranks import Ranks
from lrpet_jax.models import vit
from reference import rel_err


def test_parameter_count_is_theirs_counted_by_hand():
  """Their models/vit.py at dim 192, depth 9, 12 heads of 16, MLP ratio 2,
  patch 4, 10 classes, layer by layer."""
  dim, depth, inner, hidden, patches = 192, 9, 12 * 16, 2 * 192, 64
  embedding = (4 * 4 * 3) * dim + dim          # Linear(48, 192)
  tokens = (patches + 1) * dim + dim           # pos_embedding, cls_token
  block = (2 * dim                             # LayerNorm before attention
           + dim * 3 * inner                   # to_qkv, no bias
           + inner * dim + dim                 # to_out
           + 2 * dim                           # LayerNorm before the MLP
           + dim * hidden + hidden             # Linear(192, 384)
           + hidden * dim + dim)               # Linear(384, 192)
  head = 2 * dim + dim * 10 + 10               # LayerNorm, Linear(192, 10)
  want = embedding + tokens + depth * block + head
  assert want == 2_692_426  # their README: 2.69M
  model = models.build("vit_cifar")
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert sum(x.size for x in jax.tree.leaves(variables)) == want


@pytest.fixture(scope="module")
def small_vit():
  model = vit.ViT(dim=32, depth=2, heads=4, dim_head=8, drop_path=0.1)
  x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  return model, variables, x


def test_roles_of_the_vit_layers(small_vit):
  model, variables, _ = small_vit
  table = tracing.table(tracing.eval_apply(model), variables, (32, 32, 3))
  roles = {l.name: l.role for l in table.layers}
  want = {"patch_embedding/kernel": "embedding", "head/kernel": "classifier"}
  for b in (0, 1):
    want.update({f"block{b}/attention/to_qkv/kernel": "attention",
                 f"block{b}/attention/to_out/kernel": "attention",
                 f"block{b}/feed_forward/fc1/kernel": "mlp",
                 f"block{b}/feed_forward/fc2/kernel": "mlp"})
  assert roles == want
  assert all(l.rankable for l in table.layers)
  assert table.pairs == {}  # LayerNorm only: nothing to rectify


@pytest.mark.parametrize("selected", ["mlp", "mlp+attention"])
def test_compact_vit_is_the_projected_vit(small_vit, selected):
  model, variables, x = small_vit
  table = tracing.table(tracing.eval_apply(model), variables, (32, 32, 3))
  roles = selected.split("+")
  ranks = Ranks({l.name: 3 for l in table.layers if l.role in roles})
  assert len(ranks) == 4 * len(roles)
  projected = {"params": lrpet_jax.project_params(variables["params"],
                                                  ranks)}
  compact = lrpet_jax.Factorized(model, ranks)
  compact_vars = lrpet_jax.factorize(projected, ranks)
  assert compact_vars["params"]["block0"]["feed_forward"]["fc1"][
      "first_kernel"].shape == (32, 3)
  dense_logits = model.apply(projected, x, train=False)
  assert rel_err(compact.apply(compact_vars, x, train=False),
                 dense_logits) < 1e-4
  macs = lambda m, v: lrpet_jax.cost(m, v, (32, 32, 3))["macs"]
  assert macs(compact, compact_vars) < macs(model, projected)


def test_stochastic_depth_drops_whole_branches_in_training_only(small_vit):
  model, variables, x = small_vit
  assert np.array_equal(model.apply(variables, x, train=False),
                        model.apply(variables, x, train=False))
  outs = [model.apply(variables, x, train=True,
                      rngs={"dropout": jax.random.key(k)}) for k in (0, 1)]
  assert not np.allclose(outs[0], outs[1])
  mask = vit.DropPath(0.5).apply({}, jnp.ones((64, 3, 2)), False,
                                 rngs={"dropout": jax.random.key(0)})
  kept = np.asarray(mask[:, 0, 0])
  assert set(np.unique(kept)) <= {0.0, 2.0}  # whole examples, scaled 1/keep
  assert (np.asarray(mask) == kept[:, None, None]).all()
  assert 16 < (kept > 0).sum() < 48


def test_project_layers_selects_by_role_or_regex_and_refuses_in_one_line(
    small_vit):
  from lrpet_jax.ranking import selection  # pylint: disable=g-import-not-at-top
  model, variables, _ = small_vit
  table = tracing.table(tracing.eval_apply(model), variables, (32, 32, 3))
  pick = lambda spec: [l.name for l in selection.RankRule(
      0.5, project_layers=spec).chosen(table)]
  mlp = [f"block{b}/feed_forward/{fc}/kernel" for b in (0, 1)
         for fc in ("fc1", "fc2")]
  assert pick("mlp") == mlp
  assert pick("mlp, attention") == [
      f"block{b}/{m}/kernel" for b in (0, 1) for m in (
          "attention/to_qkv", "attention/to_out", "feed_forward/fc1",
          "feed_forward/fc2")]
  assert pick("classifier") == ["head/kernel"]
  assert pick(r"re:block1/.*/(fc2|to_out)/kernel") == [
      "block1/attention/to_out/kernel", "block1/feed_forward/fc2/kernel"]
  ranks = selection.select(selection.RankRule(0.5, project_layers="mlp"),
                           model, variables, (32, 32, 3), table=table)
  assert sorted(Ranks.of_tree(ranks)) == sorted(mlp)
  for spec, message in (
      ("mlp,ffn", r"^project_layers: unknown role 'ffn'; give roles from"),
      ("re:block(", r"^project_layers: 're:block\(' is not a regular"),
      ("conv", r"^project_layers: 'conv' selects no layer that can be"
               r" ranked \(this model's rankable layers are: attention,"
               r" classifier, embedding, mlp\)"),
      ("re:nothing", r"^project_layers: 're:nothing' selects no layer")):
    with pytest.raises(ValueError, match=message):
      selection.RankRule(0.5, project_layers=spec).chosen(table)
  with pytest.raises(ValueError, match=r"^project_layers: give it or"
                     r" project_dense, not both"):
    selection.RankRule(0.5, project_layers="mlp", project_dense=True)


def test_vit_config_ranks_give_the_readme_sizes():
  """configs/vit.py's rule on vit_cifar (abstract: nothing computed): rank
  58 of 192 in every MLP layer, the README's compact sizes."""
  import vit as vit_config  # configs/vit.py  pylint: disable=g-import-not-at-top
  from lrpet_jax.analysis import accounting  # pylint: disable=g-import-not-at-top
  from lrpet_jax.pipeline import config_check  # pylint: disable=g-import-not-at-top
  from lrpet_jax.ranking import selection  # pylint: disable=g-import-not-at-top
  config = vit_config.get_config()
  model = models.build(config.model)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  table = tracing.table(tracing.eval_apply(model), variables, (32, 32, 3))
  rule = config_check.part(selection.RankRule, config)
  ranks = Ranks.of_tree(selection.select(rule, model, variables, (32, 32, 3),
                                         table=table))
  assert len(ranks) == 18 and set(ranks.values()) == {58}
  assert table.dense_macs == 173_115_264
  compact = accounting.compact_cost(list(table.layers), 2_692_426,
                                    ranks.tree(variables["params"]))
  assert compact == {"macs": 125_940_864, "params": 1_966_666}


@pytest.mark.slow  # over 10 s: two policies traced and costed
def test_energy_and_budget_policies_rank_only_the_selected_mlp_layers(
    small_vit):
  """The in-training policies on the ViT's MLP layers (no BatchNorm: no
  factors): energy ranks against a float64 NumPy SVD of each kernel; the
  budget policy meets its MACs cut of the layers' MACs (as macs_reduction
  counts them: attention's two activation products are not layers), from
  the jaxpr counts of the dense and compact models."""
  from lrpet_jax.ranking import selection  # pylint: disable=g-import-not-at-top
  model, variables, _ = small_vit
  mlp = sorted(f"block{b}/feed_forward/{fc}/kernel" for b in (0, 1)
               for fc in ("fc1", "fc2"))
  params = variables["params"]
  for fields in (dict(rank_policy="energy", rank_energy=0.8),
                 dict(rank_policy="budget", budget_macs_reduction=0.05)):
    rule = selection.RankRule(ratio=0.5, project_layers="mlp", **fields)
    full = selection.select(rule, model, variables, (32, 32, 3))
    assert sorted(Ranks.of_tree(full)) == mlp  # full rank until the decision
    plan = selection.deferred(rule, model, variables, (32, 32, 3), step=4)
    tree, record = selection.decide(plan, params, full)
    ranks = Ranks.of_tree(tree)
    assert sorted(ranks) == mlp
    if "rank_energy" in fields:  # the energy policy
      for name, rank in ranks.items():
        block, _, fc, _ = name.split("/")
        s = np.linalg.svd(np.asarray(params[block]["feed_forward"][fc]
                                     ["kernel"], np.float64),
                          compute_uv=False)
        kept = np.cumsum(s ** 2) / (s ** 2).sum()
        assert rank == int(np.argmax(kept >= 0.8)) + 1, name
    else:
      compact = lrpet_jax.cost(lrpet_jax.Factorized(model, tree),
                               lrpet_jax.factorize(
                                   {"params": lrpet_jax.project_params(
                                       params, tree)}, tree), (32, 32, 3))
      dense = lrpet_jax.cost(model, variables, (32, 32, 3))
      table = tracing.table(tracing.eval_apply(model), variables, (32, 32, 3))
      products = dense["macs"] - table.dense_macs  # q·kᵀ and attn·v
      # 2 blocks × 4 heads × 65² × 8, twice: by hand.
      assert products == 2 * 2 * 4 * 65 * 65 * 8
      layer_cut = 1 - (compact["macs"] - products) / table.dense_macs
      assert layer_cut >= 0.05
      assert record["macs_reduction"] == pytest.approx(layer_cut)
