"""deploy/compact on its own: the split kernels multiply back to the
projected kernel (a float64 NumPy reference), the compact model computes
the projected dense model's logits, and ``write`` leaves its files with the
report's MACs counted by hand."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import lrpet_jax
from lrpet_jax.analysis import tracing
from lrpet_jax.deploy import compact
from reference import rel_err

SHAPE = (8, 8, 3)


class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(16, (3, 3), use_bias=False, name="conv0")(x))
    x = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))
    return nn.Dense(10, name="head")(x.mean((1, 2)))


def _projected(ratio=0.5):
  model = Net()
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE))
  ranks = lrpet_jax.uniform_ranks(variables["params"], ratio)
  params = lrpet_jax.project_params(variables["params"], ranks)
  return model, {**variables, "params": params}, ranks


def test_split_kernels_multiply_back_to_the_projected_kernel():
  _, variables, ranks = _projected()
  small = compact.factorize(variables, ranks)["params"]["conv1"]
  first, second = small["first_kernel"], small["second_kernel"]
  assert first.shape == (3, 3, 16, 16) and second.shape == (1, 1, 16, 32)
  w = np.asarray(variables["params"]["conv1"]["kernel"], np.float64)
  product = first.reshape(-1, 16).astype(np.float64) @ second.reshape(16, 32)
  assert rel_err(product, w.reshape(-1, 32)) <= 1e-5
  assert "kernel" not in small and "bias" in small  # the bias stays whole


def test_the_compact_model_computes_the_projected_dense_models_logits():
  model, variables, ranks = _projected()
  small = lrpet_jax.Factorized(model, ranks)
  x = np.random.default_rng(0).normal(size=(2,) + SHAPE).astype(np.float32)
  assert rel_err(small.apply(compact.factorize(variables, ranks), x),
                 model.apply(variables, x)) <= 1e-5


def test_write_leaves_the_compact_model_its_ranks_and_a_report(tmp_path):
  model, variables, ranks = _projected()
  pairs = tracing.Pairing.of(tracing.table(tracing.eval_apply(model),
                                           variables, SHAPE))
  report, _ = compact.write(tmp_path, model, ranks, pairs, input_shape=SHAPE,
                            description={"model": "net"},
                            dense_variables=variables)
  assert json.loads((tmp_path / "ranks.json").read_text()) == {
      "conv0/kernel": 8, "conv1/kernel": 16}
  assert (tmp_path / "compact").is_dir()
  assert json.loads((tmp_path / "compact_report.json").read_text()) == report
  # MACs by hand (8×8 'SAME' outputs): conv0 64·27·16, conv1 64·144·32
  # (3·3·16 → 32), head 32·10; compact: r·(m + n) per output position.
  dense = 64 * 27 * 16 + 64 * 144 * 32 + 320
  small = 64 * 8 * (27 + 16) + 64 * 16 * (144 + 32) + 320
  assert report["dense"]["macs"] == dense
  assert report["compact"]["macs"] == small
  assert "net: MACs" in (tmp_path / "compact_report.txt").read_text()
