"""The transformer recipe's pieces: AdamW, warm-up + cosine, label
smoothing, against hand-computed values and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpet_jax.pipeline import methods
from lrpet_jax.pipeline import steps
from lrpet_jax.pipeline import train

import cifar


def test_warmup_then_cosine_by_hand():
  config = cifar.get_config()
  config.update(dict(lr_schedule="cosine", learning_rate=1e-3,
                     warmup_epochs=2, num_epochs=10, lr_boundaries_epochs=()))
  lr = train.learning_rate_schedule(config, steps_per_epoch=5)
  # 10 warm-up steps from 0, then a cosine over the 40 left, to 0 at 50.
  expected = {0: 0.0, 5: 5e-4, 10: 1e-3, 30: 5e-4, 50: 0.0,
              20: 1e-3 * (1 + np.cos(np.pi * 10 / 40)) / 2}
  for step, value in expected.items():
    assert float(lr(step)) == pytest.approx(value, abs=1e-9), step


def test_label_smoothing_loss_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 10))
  labels = np.array([0, 3, 9, 3])
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  s = 0.1
  targets = np.full((4, 10), s / 10) + (1 - s) * np.eye(10)[labels]
  want = -(targets * log_p).sum(-1).mean()
  got = steps._loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), s)  # pylint: disable=protected-access
  assert float(got) == pytest.approx(want, rel=1e-5)
  plain = steps._loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels),  # pylint: disable=protected-access
                      0.0)
  assert float(plain) == pytest.approx(
      -log_p[np.arange(4), labels].mean(), rel=1e-5)


def test_adamw_decays_every_weight_decoupled_from_the_gradient():
  """One AdamW step with zero gradients moves each weight by −lr·wd·w
  (PyTorch's AdamW: decay decoupled, on every parameter)."""
  class Stub(methods.Method):
    NAME = "stub"
    FINAL_PHASES = ()

    def __init__(self, setting):  # no model: only the optimizer
      self.setting = setting

  fields = dict(learning_rate=0.01, momentum=0.9, weight_decay=0.05,
                nesterov=False, optimizer="adamw")
  stub = Stub(type("S", (), fields)())
  tx = stub._base_optimizer()  # pylint: disable=protected-access
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params),
                         tx.init(params), params)
  for name in params:
    np.testing.assert_allclose(updates[name], -0.01 * 0.05 * params[name],
                               rtol=1e-6)
