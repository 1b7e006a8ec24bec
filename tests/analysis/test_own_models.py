"""A user's own Flax models, end to end: pairs by tracing, the compact model,
folding, costs, tuning, serving and the pipeline, on three models with other
names, paddings and flags than the zoo's."""

import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpet_jax
from lrpet_jax import models
from lrpet_jax.analysis import folding
from lrpet_jax.analysis import tracing
from lrpet_jax.deploy import tuning
from lrpet_jax.pipeline import config_check
from lrpet_jax.pipeline import train
from reference import randomized_bn
from reference import rel_err

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "configs"))
from examples import own_model  # pylint: disable=g-import-not-at-top,wrong-import-position
import smoke  # pylint: disable=g-import-not-at-top,wrong-import-position


class Block(nn.Module):
  """conv "proj" (with bias, explicit padding) → BatchNorm "norm" → relu."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(self.features, (3, 3), strides=self.strides,
                padding=((1, 1), (1, 1)), name="proj")(x)
    return nn.relu(nn.BatchNorm(use_running_average=not train, name="norm")(x))


class Named(nn.Module):
  """The issue's model: blocks stem, body_0 (stride 2), body_1, a head."""

  @nn.compact
  def __call__(self, x, train):
    for name, features, strides in (("stem", 8, 1), ("body_0", 16, 2),
                                    ("body_1", 16, 1)):
      x = Block(features, strides, name=name)(x, train)
    return nn.Dense(5, name="head")(x.mean((1, 2)))


class Odd(nn.Module):
  """Flag ``is_training``; a CIRCULAR dilated conv with bias; a 1x1 conv that
  feeds no BatchNorm; a Dense → BatchNorm in the middle."""

  @nn.compact
  def __call__(self, x, is_training):
    bn = lambda: nn.BatchNorm(use_running_average=not is_training)
    x = nn.Conv(12, (3, 3), padding="CIRCULAR", kernel_dilation=2,
                name="circular")(x)
    x = nn.relu(bn()(x))
    x = nn.Conv(12, (1, 1), padding="VALID", use_bias=False, name="mix")(x)
    x = nn.relu(x).mean((1, 2))
    x = nn.relu(bn()(nn.Dense(24, name="hidden")(x)))
    return nn.Dense(5, name="out")(x)


MODELS = {
    # (model, its flag, expected pairs, expected unpaired kernels)
    "flax_defaults": (own_model.OwnNet(num_classes=5), "training",
                      {"Conv_0/kernel": "BatchNorm_0",
                       "Conv_1/kernel": "BatchNorm_1"}, ("Dense_0/kernel",)),
    "named": (Named(), "train",
              {"stem/proj/kernel": "stem/norm",
               "body_0/proj/kernel": "body_0/norm",
               "body_1/proj/kernel": "body_1/norm"}, ("head/kernel",)),
    "odd": (Odd(), "is_training",
            {"circular/kernel": "BatchNorm_0", "hidden/kernel": "BatchNorm_1"},
            ("mix/kernel", "out/kernel")),
}
SHAPE = (12, 12, 3)


def setup(name):
  """(model, flags, variables projected at ratio 0.5 with BN rectification
  on every kernel, Dense included, ranks, traced pairs, input)."""
  model, flag, _, _ = MODELS[name]
  flags = {flag: False}
  x = jax.random.normal(jax.random.key(1), (3,) + SHAPE)
  variables = randomized_bn(model.init(jax.random.key(0), x, **flags), 2)
  pairs = tracing.bn_pairs(tracing.eval_apply(model, **flags), variables,
                           SHAPE).pairs
  ranks = lrpet_jax.uniform_ranks(variables["params"], 0.5,
                                  include=lrpet_jax.core.ranks.is_kernel)
  scales = lrpet_jax.bn_out_scales(variables["params"],
                                   variables["batch_stats"], pairs)
  variables = {**variables, "params": lrpet_jax.project_params(
      variables["params"], ranks, out_scales=scales)}
  return model, flags, variables, ranks, pairs, x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pairs_are_found_by_tracing(name):
  model, flag, pairs, unpaired = MODELS[name]
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1,) + SHAPE), **{flag: False}))
  apply_fn = tracing.eval_apply(model, **{flag: False})
  got = tracing.bn_pairs(apply_fn, variables, SHAPE)
  assert got.pairs == pairs and got.unpaired == unpaired
  # Traced again with the same function (jax caches traces by function):
  # the same answer, not an empty one.
  assert tracing.bn_pairs(apply_fn, variables, SHAPE) == got
  assert len(tracing.layers(apply_fn, variables, SHAPE)) == len(
      tracing.layers(apply_fn, variables, SHAPE)) > 0


@pytest.mark.slow  # over 6 s: the fast tier stays near 2 minutes
@pytest.mark.parametrize("name", sorted(MODELS))
def test_compact_model_is_the_projected_dense_model(name):
  model, flags, variables, ranks, pairs, x = setup(name)
  small = lrpet_jax.Factorized(model, ranks)
  small_vars = lrpet_jax.factorize(variables, ranks)
  want = model.apply(variables, x, **flags)
  assert rel_err(small.apply(small_vars, x, **flags), want) <= 1e-4
  # Its own init makes the same variables (to train it from scratch).
  init = small.init(jax.random.key(0), x, **flags)
  assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, small_vars)
  # Folded (each layer's bias, its own or the BatchNorm's): the same logits.
  for m, v in ((model, variables), (small, small_vars)):
    folded = folding.fold(v, pairs)
    assert rel_err(folding.folded_apply(m, folded, x, **flags), want) <= 1e-4


def numpy_conv(x, w, strides, padding, dilation=1):
  """Float64 NHWC/HWIO convolution; ``padding``: ((lo, hi), (lo, hi)), or
  'SAME' (TensorFlow's: the extra pixel after), or 'CIRCULAR' (wrap by
  ((k_eff − 1) // 2, k_eff // 2))."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  kh, kw, _, c_out = w.shape
  eff = [(k - 1) * dilation + 1 for k in (kh, kw)]
  mode = "constant"
  if padding == "SAME":
    pads = []
    for size, k in zip(x.shape[1:3], eff):
      total = max((-(-size // strides) - 1) * strides + k - size, 0)
      pads.append((total // 2, total - total // 2))
  elif padding == "CIRCULAR":
    pads, mode = [((k - 1) // 2, k // 2) for k in eff], "wrap"
  else:
    pads = padding
  x = np.pad(x, ((0, 0), *pads, (0, 0)), mode=mode)
  out_h = (x.shape[1] - eff[0]) // strides + 1
  out_w = (x.shape[2] - eff[1]) // strides + 1
  y = np.zeros((x.shape[0], out_h, out_w, c_out))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i * dilation:, j * dilation:][
          :, :out_h * strides:strides, :out_w * strides:strides]
      y += patch @ w[i, j]
  return y


@pytest.mark.parametrize("conv, padding, dilation", [
    (nn.Conv(6, (3, 3), strides=2, padding="SAME", use_bias=False), "SAME",
     1),
    (nn.Conv(6, (3, 3), padding="CIRCULAR", kernel_dilation=2), "CIRCULAR",
     2),
    (nn.Conv(6, (3, 3), strides=2, padding=((0, 2), (1, 0))),
     ((0, 2), (1, 0)), 1),
])
@pytest.mark.slow  # over 6 s: the fast tier stays near 2 minutes
def test_factorized_conv_against_numpy(conv, padding, dilation):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
  variables = conv.init(jax.random.key(1), x)
  params = jax.tree.map(lambda a: a + 0.1, variables["params"])  # a bias ≠ 0
  ranks = {"kernel": 3, **({"bias": None} if "bias" in params else {})}
  params = lrpet_jax.project_params(params, ranks)
  small = lrpet_jax.Factorized(conv, ranks)
  got = small.apply(lrpet_jax.factorize({"params": params}, ranks), x)
  want = numpy_conv(x, params["kernel"], conv.strides, padding, dilation)
  want = want + np.asarray(params.get("bias", 0.0))
  assert rel_err(got, want) <= 1e-5
  assert np.linalg.matrix_rank(np.asarray(params["kernel"]).reshape(
      -1, 6).astype(np.float64), tol=1e-4) == 3


def test_macs_hand_counted_and_budget_with_another_flag():
  # OwnNet at 32x32: Conv_0 3x3x3→16 stride 2 (16x16 out) 256·432; Conv_1
  # 3x3x16→32 (16x16) 256·4608; Dense 32→10: 320. At ratio 0.5, ranks 8 and
  # 16: 256·8·(27 + 16) and 256·16·(144 + 32); the Dense head is not ranked.
  model = own_model.OwnNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         training=False)
  evaluate = tracing.eval_apply(model, training=False)
  dense = lrpet_jax.cost(model, variables, (32, 32, 3), apply_fn=evaluate)
  assert dense["macs"] == 256 * 432 + 256 * 4608 + 320 == 1_290_560
  ranks = lrpet_jax.uniform_ranks(variables["params"], 0.5)
  small = lrpet_jax.Factorized(model, ranks)
  small_vars = lrpet_jax.factorize(variables, ranks)
  got = lrpet_jax.cost(small, small_vars, (32, 32, 3),
                       apply_fn=tracing.eval_apply(small, training=False))
  assert got["macs"] == 256 * 8 * 43 + 256 * 16 * 176 + 320 == 809_280
  # Kernels, the head's kernel and bias, each BatchNorm's scale and bias.
  assert got["params"] == 8 * 43 + 16 * 176 + 32 * 10 + 10 + 2 * (16 + 32)
  budget = lrpet_jax.ranks_for_budget(model, variables, (32, 32, 3),
                                      macs_reduction=0.3, apply_fn=evaluate)
  cut = 1 - lrpet_jax.cost(
      lrpet_jax.Factorized(model, budget), lrpet_jax.factorize(
          variables, budget), (32, 32, 3), apply_fn=tracing.eval_apply(
              lrpet_jax.Factorized(model, budget), training=False))["macs"] / (
                  dense["macs"])
  assert abs(cut - 0.3) < 0.05


@pytest.mark.slow  # over 6 s: the fast tier stays near 2 minutes
def test_tuned_forms_of_an_own_model_are_exact():
  model, flags, variables, ranks, pairs, x = setup("named")
  tuned, report = tuning.tune(model, variables, ranks, pairs,
                              input_shape=SHAPE, batch=2, repeats=1, **flags)
  assert [row["layer"] for row in report["layers"]] == [
      "stem/proj", "body_0/proj", "body_1/proj", "head"]
  small = lrpet_jax.Factorized(model, tuned)
  folded = folding.fold(lrpet_jax.factorize(variables, tuned), pairs)
  assert rel_err(folding.folded_apply(small, folded, x, **flags),
                 model.apply(variables, x, **flags)) <= 1e-4


def test_api_errors_say_what_to_do():
  model, flags, variables, ranks, _, x = setup("flax_defaults")
  tx = lrpet_jax.low_rank_projection(ranks, every=1)
  state = tx.init(variables["params"])
  with pytest.raises(ValueError, match="needs the params: call"
                     r" tx.update\(updates, state, params\)"):
    tx.update(variables["params"], state)
  with pytest.raises(ValueError, match=r"apply_fn must return \(outputs,"
                     " {'batch_stats': ...}\\): run the model in training mode"
                     " with mutable=\\['batch_stats'\\]"):
    lrpet_jax.recompute_batch_stats(
        functools.partial(model.apply, **flags), variables, [x])
  grouped = nn.Conv(8, (3, 3), feature_group_count=2, name="g")
  v = grouped.init(jax.random.key(0), jnp.zeros((1, 6, 6, 4)))
  r = lrpet_jax.uniform_ranks(v["params"], 0.5)
  with pytest.raises(ValueError, match="grouped convolution"):
    lrpet_jax.Factorized(grouped, r).apply(lrpet_jax.factorize(v, r),
                                          jnp.zeros((1, 6, 6, 4)))


@pytest.mark.slow  # over 6 s: the fast tier stays near 2 minutes
def test_readme_own_model_block_runs_and_serves_without_lrpet_jax(
    tmp_path, monkeypatch):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its mkdtemp()
  import docs  # pylint: disable=g-import-not-at-top
  ns = {}
  exec(docs.block("docs/own-model.md", "class OwnNet"), ns)  # pylint: disable=exec-used
  assert ns["pairs"] == MODELS["flax_defaults"][2]
  assert (ns["macs"], ns["small_macs"]) == (1_290_560, 809_280)
  pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  np.save(tmp_path / "pixels.npy", pixels)
  script = (
      "import sys, numpy as np\n"
      "sys.modules['lrpet_jax'] = None  # not importable here\n"
      "import jax\n"
      f"fn = jax.export.deserialize(open({str(ns['out'] / 'model.jax_export')!r}, 'rb').read())\n"
      f"np.save({str(tmp_path / 'logits.npy')!r}, fn.call(np.load({str(tmp_path / 'pixels.npy')!r})))\n")
  done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  x = ((pixels / 255 - 0.5) / 0.25).astype(np.float32)
  want = ns["small"].apply(ns["small_vars"], x, training=False)
  assert rel_err(np.load(tmp_path / "logits.npy"), want) <= 1e-4


@pytest.mark.parametrize("overrides, message", [
    (dict(model="no_such_package.models:make"),
     "model: cannot import 'no_such_package.models'"),
    (dict(model="examples.own_model:missing"),
     "model: examples.own_model has no function 'missing'"),
    (dict(model="resnet57"), "model: unknown 'resnet57'"),
    (dict(model="examples.own_model:make"),
     "model_flag: 'train' is not an argument of OwnNet.__call__(x, training)"),
    (dict(model="json:dumps", model_flag="training"),
     "model: json:dumps(num_classes=10, dtype=None) failed (TypeError"),
])
def test_bad_model_is_one_line_config_error(overrides, message):
  config = smoke.get_config()
  config.update(overrides)
  with pytest.raises(config_check.ConfigError) as e:
    config_check.check(config)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.slow
def test_pipeline_trains_and_exports_an_own_model(tiny_config, tmp_path):
  workdir = tmp_path / "w"
  summary = train.train_and_evaluate(
      tiny_config(model="examples.own_model:make", model_flag="training"),
      str(workdir))
  assert summary["dense_accuracy"] == summary["compact_accuracy"]
  assert json.loads((workdir / "bn_pairs.json").read_text()) == {
      "pairs": MODELS["flax_defaults"][2], "unpaired": ["Dense_0/kernel"],
      "unpaired_reasons": {"Dense_0/kernel": "feeds no BatchNorm"},
      "folded": MODELS["flax_defaults"][2], "not_folded": {},
      "unrectified": []}
  assert max(summary["export_check"][k] for k in (
      "compact", "folded", "serving")) <= 1e-5
  # The serving artifact is the compact model, from raw pixels.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  model = models.with_train_flag(own_model.make(4), "training")
  dense_params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))["params"]
  ranks = lrpet_jax.core.ranks.Ranks.read(workdir / "ranks.json").tree(
      dense_params)
  small = lrpet_jax.Factorized(model, ranks)
  small_vars = ocp.StandardCheckpointer().restore(workdir / "compact")
  pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), np.uint8)
  served = jax.export.deserialize(
      (workdir / "serving" / "model.jax_export").read_bytes())
  config = json.loads((workdir / "config.json").read_text())
  x = (pixels / 255 - np.array(config["mean"])) / np.array(config["std"])
  assert rel_err(served.call(pixels), small.apply(
      small_vars, x.astype(np.float32), train=False)) <= 1e-4
  # The export command takes the same model by its import path.
  out = tmp_path / "export"
  done = subprocess.run(
      [sys.executable, "-m", "lrpet_jax.export",
       f"--variables={workdir / 'dense_final'}", f"--workdir={out}",
       "--model=examples.own_model:make", "--model_flag=training",
       "--num_classes=4", "--image_size=16", "--dataset=cifar10",
       f"--ranks_file={workdir / 'ranks.json'}"], cwd=ROOT, capture_output=True,
      text=True, timeout=300, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((out / "compact_report.json").read_text())
  assert report["compact"]["macs"] == summary["compact_macs"]
  assert report["model"] == "examples.own_model:make"
