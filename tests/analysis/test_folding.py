"""BatchNorm folding by hand (every zoo model, dense and compact, is checked
against its unfolded logits in test_models.py)."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lrpet_jax import models
from lrpet_jax.analysis import folding

def test_fold_by_hand():
  # One 1x1 conv (2 -> 2 channels) and its BatchNorm, computed by hand.
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = nn.Conv(2, (1, 1), use_bias=False, name="conv")(x)
      return models.layers.batch_norm(train, "bn")(x)

  w = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
  variables = {
      "params": {"conv": {"kernel": w.reshape(1, 1, 2, 2)},
                 "bn": {"scale": np.array([2.0, 0.5], np.float32),
                        "bias": np.array([1.0, -1.0], np.float32)}},
      "batch_stats": {"bn": {"mean": np.array([0.5, 1.0], np.float32),
                             "var": np.array([3.0, 15.0], np.float32)}}}
  folded = folding.fold(variables, {"conv/kernel": "bn"}, eps=1.0)
  a = np.array([2.0 / 2.0, 0.5 / 4.0])  # gamma / sqrt(var + eps)
  np.testing.assert_allclose(folded["params"]["conv"]["kernel"][0, 0], w * a)
  np.testing.assert_allclose(folded[folding.BIAS]["conv"]["bias"],
                             [(0 - 0.5) * 1.0 + 1.0, (0 - 1.0) * 0.125 - 1.0])
  assert "bn" not in folded["params"]
  x = jnp.array([[[[1.0, 1.0]]]])
  # conv: [1 + 3, 2 - 1] = [4, 1]; BN with eps=1: [(4-.5)*1+1, (1-1)*.125-1]
  got = folding.folded_apply(Net(), folded, x)
  np.testing.assert_allclose(np.asarray(got).ravel(), [4.5, -1.0], rtol=1e-6)
