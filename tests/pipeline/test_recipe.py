"""The transformer recipe's pieces: AdamW, warm-up + cosine, label
smoothing, against hand-computed values and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpet_jax.pipeline import methods
from lrpet_jax.pipeline import steps
from lrpet_jax.pipeline import setup

import cifar


def test_warmup_then_cosine_by_hand():
  config = cifar.get_config()
  config.update(dict(lr_schedule="cosine", learning_rate=1e-3,
                     warmup_epochs=2, num_epochs=10, lr_boundaries_epochs=()))
  lr = setup.learning_rate_schedule(config, steps_per_epoch=5)
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


@pytest.mark.slow  # two float64 ViT trainings
def test_vit_recipe_steps_per_call_independent_in_float64():
  """The ViT recipe (AdamW, warm-up + cosine, label smoothing, stochastic
  depth keyed by (seed, step), AutoAugment, random erasing, CutMix/Mixup,
  repeated augmentation, projection of the MLP layers, no BatchNorm): calls
  of 4 steps give single steps' state, in float64."""
  from lrpet_jax.data import augmentations  # pylint: disable=g-import-not-at-top
  from lrpet_jax.analysis import tracing  # pylint: disable=g-import-not-at-top
  from lrpet_jax.core import ranks as ranks_lib  # pylint: disable=g-import-not-at-top
  from lrpet_jax.models import vit  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from test_steps import run_calls, tiny_data  # pylint: disable=g-import-not-at-top

  normalization, data = tiny_data()

  def train(lengths):
    model = vit.ViT(dim=16, depth=2, heads=2, dim_head=8, drop_path=0.2,
                    dtype=jnp.float64)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(
        jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))
    table = tracing.table(tracing.eval_apply(model), variables, (16, 16, 3))
    mlp = [l.kernel for l in table.layers if l.role == "mlp"]
    method = methods.method_for("lrpet", methods.Setting(
        build_model=lambda ranks=None, dtype=None: model, dtype=None,
        dense_abstract=None, ranks=ranks_lib.uniform_ranks(
            variables["params"], 0.5, include=ranks_lib.by_name(mlp)),
        pairing=tracing.Pairing.of(table),
        learning_rate=optax.warmup_cosine_decay_schedule(0.0, 1e-3, 6, 12),
        momentum=0.9, weight_decay=5e-2, nesterov=False, project_every=6,
        energy_transfer=True, residual_scale=0.0, bn_rectification=True,
        optimizer="adamw", label_smoothing=0.1))
    return run_calls(method, variables, data, normalization, lengths,
                     passes=3, augmentation=augmentations.Augmentation(
                         auto_augment="cifar10", random_erasing=0.25,
                         mix_prob=0.5))

  with jax.enable_x64(True):
    single = train([1] * 5 + ["project"] + [1] * 5 + ["project"])
    chunked = train([4, 1, "project", 4, 1, "project"])
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(single[0].params)])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(chunked[0].params)])
  assert a.dtype == np.float64
  assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(a)
  np.testing.assert_allclose(single[1]["loss"], chunked[1]["loss"],
                             rtol=1e-10)
  # The MLP kernels have rank 4 of 8 after the projection at step 12; the
  # attention kernels were not projected.
  params = chunked[0].params
  for b_ in ("block0", "block1"):
    s = np.linalg.svd(np.asarray(params[b_]["feed_forward"]["fc1"]["kernel"]),
                      compute_uv=False)
    assert s[8] <= 1e-9 * s[0]
    s = np.linalg.svd(np.asarray(params[b_]["attention"]["to_out"]["kernel"]),
                      compute_uv=False)
    assert s[-1] > 1e-3 * s[0]
