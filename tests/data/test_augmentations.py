"""The ViT recipe's augmentations against references: each AutoAugment
operation against PIL running the port's own calls; a batch's policy,
random erasing and CutMix/Mixup on a fixed key against NumPy code written
from the authors' (``utils/autoaug.py``, ``RandomErasing``, ``utils/mix.py``);
repeated augmentation's epochs; the step's mixed loss by hand."""

import jax
from jax import numpy as jnp
import numpy as np
import pytest

from lrpet_jax.data import augmentations as aug
from lrpet_jax.data import datasets as data_lib

Image = pytest.importorskip("PIL.Image")
from PIL import ImageEnhance, ImageOps  # pylint: disable=g-import-not-at-top,wrong-import-position


def pil_operation(name, image, magnitude, sign):
  """The port's SubPolicy function ``name`` (fillcolor 128) on a uint8 image."""
  img, fill, m = Image.fromarray(image), (128, 128, 128), magnitude * sign
  size = img.size
  if name == "shearX":
    return img.transform(size, Image.AFFINE, (1, m, 0, 0, 1, 0),
                         Image.BICUBIC, fillcolor=fill)
  if name == "shearY":
    return img.transform(size, Image.AFFINE, (1, 0, 0, m, 1, 0),
                         Image.BICUBIC, fillcolor=fill)
  if name == "translateX":
    return img.transform(size, Image.AFFINE, (1, 0, m * size[0], 0, 1, 0),
                         fillcolor=fill)
  if name == "translateY":
    return img.transform(size, Image.AFFINE, (1, 0, 0, 0, 1, m * size[1]),
                         fillcolor=fill)
  if name == "rotate":
    rot = img.convert("RGBA").rotate(magnitude)
    return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4),
                           rot).convert(img.mode)
  enhance = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
             "sharpness": ImageEnhance.Sharpness,
             "brightness": ImageEnhance.Brightness}
  if name in enhance:
    return enhance[name](img).enhance(1 + m)
  if name == "posterize":
    return ImageOps.posterize(img, int(magnitude))
  if name == "solarize":
    return ImageOps.solarize(img, magnitude)
  return {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize,
          "invert": ImageOps.invert}[name](img)


def images(count=3):
  """Random noise, smooth ramps, and a low-contrast image (uint8, 32×32)."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:32, :32]
  ramps = np.stack([xx * 8 % 256, yy * 7 % 256, (xx + yy) * 3 % 256], -1)
  noise = rng.integers(0, 256, (32, 32, 3))
  return [a.astype(np.uint8) for a in
          (noise, ramps, noise // 4 + 60)][:count]


# Where float32 arithmetic may land one grey level from PIL's doubles: the
# bicubic shears and autocontrast's scale (at most 1 level, at most 5 % of
# values), nearest-neighbour rotation at a pixel boundary (at most 0.2 %).
CLOSE = {"shearX": (1, 0.05), "shearY": (1, 0.05), "autocontrast": (1, 0.05),
         "rotate": (255, 0.002)}


def assert_like_pil(ours, ref, name):
  diff = np.abs(np.asarray(ours, int) - np.asarray(ref, int))
  level, fraction = CLOSE.get(name, (0, 0))
  assert diff.max() <= level and np.mean(diff > 0) <= fraction, (
      name, diff.max(), np.mean(diff > 0))


@pytest.mark.parametrize("name", aug.OPERATIONS)
def test_each_operation_matches_pil(name):
  magnitudes = aug.MAGNITUDES[name][[1, 5, 9]]
  for image in images():
    for magnitude in magnitudes:
      for sign in (1.0, -1.0):
        ours = aug.apply_operation(name, jnp.asarray(image, jnp.float32),
                                   magnitude, sign)
        assert_like_pil(ours, pil_operation(name, image, magnitude, sign),
                        name)


@pytest.mark.slow  # over 10 s: compiles the 14-way switch for a batch
def test_policy_on_a_batch_matches_pil_per_image():
  """Each image gets the sub-policy, coin flips and signs its key drew,
  applied in order with PIL."""
  key = jax.random.key(3)
  batch = np.stack(images() * 6)  # 18 images
  out = np.asarray(aug.auto_augment(jnp.asarray(batch), key))
  index, applied, sign = map(np.asarray, aug.policy_draws(key, len(batch)))
  assert len(set(index)) > 8  # the batch covers many sub-policies
  for i, image in enumerate(batch):
    p = aug.CIFAR10_POLICY[index[i]]
    ref, names = image, []
    for slot, (name, m_index) in enumerate(((p[1], p[2]), (p[4], p[5]))):
      if applied[i, slot]:
        ref = np.asarray(pil_operation(name, ref, aug.MAGNITUDES[name][m_index],
                                       sign[i, slot]))
        names.append(name)
    # A shear followed by another operation may carry its one-level
    # difference on; compare with the looser of the two tolerances.
    loosest = max(names, key=lambda n: CLOSE.get(n, (0, 0)), default="invert")
    assert_like_pil(out[i], ref, loosest)


def test_policy_draws_follow_the_table():
  index, applied, sign = map(np.asarray,
                             aug.policy_draws(jax.random.key(0), 50_000))
  assert np.bincount(index, minlength=25).min() > 1700  # ~2000 each
  probs = np.asarray([[p[0], p[3]] for p in aug.CIFAR10_POLICY])[index]
  assert np.abs(applied.mean(0) - probs.mean(0)).max() < 0.01
  assert not applied[probs == 0].any()
  assert abs((sign > 0).mean() - 0.5) < 0.01


def erasing_reference(uniforms, h, w, probability):
  """Zhong et al.'s loop on given uniforms: (do, areas, aspects, top, left)."""
  do, areas, aspects, top_u, left_u = uniforms
  if do >= probability:
    return None
  for area, aspect in zip(areas, aspects):
    target = (0.02 + (0.4 - 0.02) * area) * h * w
    ratio = 0.3 + (1 / 0.3 - 0.3) * aspect
    bh = int(round(np.sqrt(target * ratio)))
    bw = int(round(np.sqrt(target / ratio)))
    if bw < w and bh < h:
      return (int(top_u * (h - bh + 1)), int(left_u * (w - bw + 1)), bh, bw)
  return None


def test_random_erasing_matches_the_loop_on_a_fixed_key():
  key, (b, h, w) = jax.random.key(7), (64, 32, 32)
  x = jax.random.normal(jax.random.key(1), (b, h, w, 3))
  fill = (0.4914, 0.4822, 0.4465)
  out = np.asarray(aug.random_erasing(x, key, 0.5, fill))
  k_do, k_area, k_aspect, k_top, k_left = jax.random.split(key, 5)
  u = [np.asarray(jax.random.uniform(k_do, (b,))),
       np.asarray(jax.random.uniform(k_area, (b, 100))),
       np.asarray(jax.random.uniform(k_aspect, (b, 100))),
       np.asarray(jax.random.uniform(k_top, (b,))),
       np.asarray(jax.random.uniform(k_left, (b,)))]
  erased = 0
  for i in range(b):
    ref = np.array(x[i])
    box = erasing_reference([v[i] for v in u], h, w, 0.5)
    if box:
      top, left, bh, bw = box
      ref[top:top + bh, left:left + bw] = fill
      erased += 1
    np.testing.assert_allclose(out[i], ref, atol=1e-6)
  assert 20 <= erased <= 44  # p = 0.5 of 64


def mix_reference(x, labels, draws, prob):
  """Their train loop's mixing of one batch (NumPy, NCHW as theirs)."""
  do, which, lam_mixup, lam_cut, perm, cx, cy = draws
  if do >= prob:
    return x, 1.0, labels
  x = x.transpose(0, 3, 1, 2).copy()
  if which < 0.5:  # cutmix_data + rand_bbox
    size = x.shape
    big_w, big_h = size[2], size[3]
    cut_rat = np.sqrt(1. - lam_cut)
    cut_w, cut_h = np.int32(big_w * cut_rat), np.int32(big_h * cut_rat)
    bbx1, bby1 = np.clip(cx - cut_w // 2, 0, big_w), np.clip(cy - cut_h // 2, 0,
                                                             big_h)
    bbx2, bby2 = np.clip(cx + cut_w // 2, 0, big_w), np.clip(cy + cut_h // 2, 0,
                                                             big_h)
    x[:, :, bbx1:bbx2, bby1:bby2] = x[perm, :, bbx1:bbx2, bby1:bby2]
    lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (size[-1] * size[-2]))
  else:  # mixup_data
    lam = lam_mixup
    x = lam * x + (1 - lam) * x[perm]
  return x.transpose(0, 2, 3, 1), lam, labels[perm]


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_and_mixup_match_their_code_on_a_fixed_key(seed):
  key, (b, h, w) = jax.random.key(seed), (16, 32, 32)
  x = np.asarray(jax.random.normal(jax.random.key(99), (b, h, w, 3)))
  labels = np.arange(b)
  out, lam, perm = aug.mix(jnp.asarray(x), key, 0.7, 1.0, 1.0)
  keys = jax.random.split(key, 7)
  draws = (float(jax.random.uniform(keys[0])),
           float(jax.random.uniform(keys[1])),
           float(jax.random.beta(keys[2], 1.0, 1.0)),
           float(jax.random.beta(keys[3], 1.0, 1.0)),
           np.asarray(jax.random.permutation(keys[4], b)),
           int(jax.random.randint(keys[5], (), 0, h)),
           int(jax.random.randint(keys[6], (), 0, w)))
  ref, ref_lam, ref_other = mix_reference(x, labels, draws, 0.7)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-6)
  assert float(lam) == pytest.approx(ref_lam, abs=1e-6)
  if ref_lam != 1.0:
    np.testing.assert_array_equal(labels[np.asarray(perm)], ref_other)


def test_mixing_draws_cover_both_kinds_at_their_odds():
  kinds = {"none": 0, "cutmix": 0, "mixup": 0}
  for s in range(400):
    mixed, cutmix, *_ = aug.mix_draws(jax.random.key(s), 8, 32, 32, 0.5, 1.0,
                                      1.0)
    kinds["none" if not mixed else "cutmix" if cutmix else "mixup"] += 1
  assert 160 <= kinds["none"] <= 240  # 200 expected
  assert 60 <= kinds["cutmix"] <= 140 and 60 <= kinds["mixup"] <= 140


def test_repeated_augmentation_epochs_are_passes_in_new_orders():
  n, batch, passes = 20, 6, 3
  per_epoch = n * passes // batch  # 10
  for epoch in range(2):
    seen = np.concatenate([data_lib.batch_indices(0, epoch * per_epoch + i, n,
                                                  batch, passes)
                           for i in range(per_epoch)])
    np.testing.assert_array_equal(np.bincount(seen, minlength=n), [3] * n)
    passes_ = seen.reshape(passes, n)
    assert len({tuple(p) for p in passes_}) == passes  # new order each pass
    # The first pass is the one-pass order of the same epoch.
    np.testing.assert_array_equal(passes_[0],
                                  data_lib.epoch_permutation(0, epoch, n))
  np.testing.assert_array_equal(data_lib.batch_indices(4, 7, n, 5),
                                data_lib.batch_indices(4, 7, n, 5, 1))


def test_mixed_step_loss_is_their_mixup_criterion():
  """The training step's loss with mix_prob=1 equals λ·CE(y) + (1−λ)·CE(y[perm])
  computed in NumPy from the model's logits on the mixed batch."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from lrpet_jax.pipeline import methods, steps  # pylint: disable=g-import-not-at-top

  model = nn.Sequential([lambda x: x.reshape(x.shape[0], -1), nn.Dense(10)])
  images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), np.uint8)
  labels = np.arange(8, dtype=np.int32)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  normalization = data_lib.Normalization((0.5,) * 3, (0.25,) * 3)
  method = methods.method_for("dense", methods.Setting(
      build_model=lambda ranks=None, dtype=None: _Train(model), dtype=None,
      dense_abstract=None, ranks=None, pairing=None, learning_rate=1e-3,
      momentum=0.0, weight_decay=0.0, nesterov=False, project_every=1,
      energy_transfer=True, residual_scale=0.0, bn_rectification=False,
      label_smoothing=0.1))
  augmentation = aug.Augmentation(mix_prob=1.0)
  body = steps.make_step_body(method, 5, normalization,
                              augmentation=augmentation)
  state = steps.TrainState(step=jnp.asarray(3, jnp.int32),
                           params=variables["params"], batch_stats={},
                           opt_state=method.tx.init(variables["params"]))
  _, window, _ = body(state, steps.empty_window(), jnp.asarray(images),
                      jnp.asarray(labels))
  key = jax.random.fold_in(jax.random.key(5), 3)
  x = data_lib.normalize(data_lib.augment(jnp.asarray(images), key),
                         normalization)
  mixed, lam, perm = aug.mix(x, jax.random.fold_in(key, 4), 1.0, 1.0, 1.0)
  logits = np.asarray(model.apply(variables, mixed), np.float64)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))

  def smoothed_ce(y):
    target = np.full((8, 10), 0.1 / 10)
    target[np.arange(8), y] += 0.9
    return -(target * logp).sum(1).mean()

  lam, perm = float(lam), np.asarray(perm)
  assert 0 < lam < 1
  expected = lam * smoothed_ce(labels) + (1 - lam) * smoothed_ce(labels[perm])
  assert float(window["loss"]) == pytest.approx(expected, rel=1e-5)


class _Train:
  """A Linen model without BatchNorm as the step calls it."""

  def __init__(self, model):
    self._model = model

  def apply(self, variables, x, train, mutable, rngs):
    del train, mutable, rngs
    return self._model.apply({"params": variables["params"]}, x), {}
