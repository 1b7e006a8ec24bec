"""The authors' ViT augmentations, on the device, keyed by the step's key.

Their ``VisionTransformer/baseline.py`` trains on: flip + crop (``datasets.augment``),
AutoAugment's CIFAR-10 policy on the uint8 image, ``Normalize``, random
erasing, then CutMix or Mixup of the normalized batch. Each function here is
one of those, a pure function of (images, key), so a step's batch is a
function of (seed, step) at any steps per call, device count or resume.

- ``auto_augment``: per image, one of the 25 sub-policies of
  ``CIFAR10_POLICY`` (Cubuk et al.; the table of the AutoAugment port they
  import), each two (probability, operation, magnitude index) slots, with
  the PIL semantics of that port: uint8 arithmetic, fill colour 128,
  bicubic shears, nearest-neighbour translations and rotation, a random
  sign for every signed operation but the rotation.
- ``random_erasing``: with probability p, one rectangle of area fraction
  U(0.02, 0.4) and aspect U(0.3, 1/0.3) (the first of 100 tries that fits)
  set to the data set's *mean* in normalized units, as their
  ``RandomErasing(mean=stat[0])`` applied after ``Normalize`` does.
- ``mix``: with probability ``prob`` per batch, CutMix or Mixup (even odds),
  λ ~ Beta(α, α) and one permutation of the batch; the loss is
  λ·CE(labels) + (1 − λ)·CE(labels[perm]) (their ``mixup_criterion``), with
  CutMix's λ the kept area fraction of its clipped box.
"""

import dataclasses

import jax
from jax import numpy as jnp
import numpy as np

from lrpet_jax.data import datasets

_FILL = 128.0  # the port's fillcolor

OPERATIONS = ("shearX", "shearY", "translateX", "translateY", "rotate",
              "color", "posterize", "solarize", "contrast", "sharpness",
              "brightness", "autocontrast", "equalize", "invert")
# Magnitude index (0..9) → magnitude, per operation.
MAGNITUDES = {
    "shearX": np.linspace(0, 0.3, 10), "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10),
    "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10), "color": np.linspace(0.0, 0.9, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0),
    "solarize": np.linspace(256, 0, 10), "contrast": np.linspace(0.0, 0.9, 10),
    "sharpness": np.linspace(0.0, 0.9, 10),
    "brightness": np.linspace(0.0, 0.9, 10),
    "autocontrast": np.zeros(10), "equalize": np.zeros(10),
    "invert": np.zeros(10)}
# (p1, operation 1, magnitude index 1, p2, operation 2, magnitude index 2).
CIFAR10_POLICY = (
    (0.1, "invert", 7, 0.2, "contrast", 6),
    (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3),
    (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2),
    (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7),
    (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1),
    (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8),
    (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6),
    (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3),
    (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.8, "equalize", 4),
    (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8),
    (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3),
    (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3),
    (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
)
POLICIES = {"cifar10": CIFAR10_POLICY}


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """The step's augmentations after crop + flip (config fields of the same
  names; all off by default)."""

  auto_augment: str = ""  # "" or a key of POLICIES
  random_erasing: float = 0.0  # probability per image
  mix_prob: float = 0.0  # probability per batch of CutMix or Mixup
  mixup_alpha: float = 1.0
  cutmix_beta: float = 1.0

  @property
  def mixes(self) -> bool:
    return self.mix_prob > 0


# --- AutoAugment: images are float32 (H, W, 3) holding integers 0..255. ---

def _affine(image, matrix, bicubic: bool):
  """PIL's ``Image.transform(AFFINE, matrix)``: output pixel (x, y) reads the
  input at (a·x' + b·y' + c, d·x' + e·y' + f), x' = x + ½, y' = y + ½; a
  point outside the image reads the fill colour."""
  h, w, _ = image.shape
  a, b, c, d, e, f = matrix
  yy, xx = jnp.meshgrid(jnp.arange(h) + 0.5, jnp.arange(w) + 0.5,
                        indexing="ij")
  sx, sy = a * xx + b * yy + c, d * xx + e * yy + f
  inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
  if not bicubic:
    px = jnp.clip(jnp.floor(sx).astype(jnp.int32), 0, w - 1)
    py = jnp.clip(jnp.floor(sy).astype(jnp.int32), 0, h - 1)
    out = image[py, px]
  else:
    out = _bicubic(image, sx - 0.5, sy - 0.5)
  return jnp.where(inside[..., None], out, _FILL)


def _cubic_weights(t):
  """PIL's bicubic weights (cubic convolution, a = −1) at offsets −1, 0, 1,
  2 from the floor, for a fractional position t."""
  t2, t3 = t * t, t * t * t
  return jnp.stack([-t + 2 * t2 - t3, 1 - 2 * t2 + t3, t + t2 - t3, t3 - t2],
                   -1)


def _bicubic(image, x, y):
  """PIL's ``bicubic_filter8``: neighbours clamped to the image, the result
  clipped to 0..255 and truncated."""
  h, w, _ = image.shape
  x0, y0 = jnp.floor(x), jnp.floor(y)
  wx, wy = _cubic_weights(x - x0), _cubic_weights(y - y0)
  offsets = jnp.arange(-1, 3)
  cols = jnp.clip(x0.astype(jnp.int32)[..., None] + offsets, 0, w - 1)
  rows = jnp.clip(y0.astype(jnp.int32)[..., None] + offsets, 0, h - 1)
  patch = image[rows[:, :, :, None], cols[:, :, None, :]]  # (H, W, 4, 4, 3)
  v = jnp.einsum("hwi,hwj,hwijc->hwc", wy, wx, patch)
  # + 1e-3: float32 round-off below an integer the double sum reaches.
  return jnp.floor(jnp.clip(v + 1e-3, 0, 255))


def _luma(image):
  """PIL's RGB → L: (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  return jnp.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def _blend(degenerate, image, factor):
  """PIL's ``Image.blend(degenerate, image, factor)`` on uint8."""
  return jnp.floor(jnp.clip(degenerate + factor * (image - degenerate), 0,
                            255))


def _smooth(image):
  """PIL's ``ImageFilter.SMOOTH`` (3×3 [[1,1,1],[1,5,1],[1,1,1]]/13); the
  border pixels are kept."""
  h, w, _ = image.shape
  p = jnp.pad(image, ((1, 1), (1, 1), (0, 0)))
  s = sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3))
  s = (s + 4 * image) / 13
  s = jnp.clip(jnp.floor(s + 0.5), 0, 255)
  border = jnp.zeros((h, w), bool).at[[0, -1], :].set(True).at[:, [0, -1]].set(
      True)
  return jnp.where(border[..., None], image, s)


def _autocontrast(image):
  lo = image.min((0, 1))
  hi = image.max((0, 1))
  scale = 255 / jnp.maximum(hi - lo, 1)
  out = jnp.clip(jnp.floor((image - lo) * scale + 1e-4), 0, 255)
  return jnp.where(hi > lo, out, image)


def _equalize_channel(x):
  """PIL's ``ImageOps.equalize`` of one band (H, W)."""
  index = x.astype(jnp.int32).ravel()
  hist = jnp.zeros(256, jnp.int32).at[index].add(1)
  step = (index.size - hist[index.max()]) // 255
  before = jnp.cumsum(hist) - hist
  lut = jnp.minimum((step // 2 + before) // jnp.maximum(step, 1), 255)
  return jnp.where(step > 0, lut[index].reshape(x.shape).astype(x.dtype), x)


def _rotate_matrix(degrees, h, w):
  """PIL's ``Image.rotate(degrees)`` (counter-clockwise, about the centre)."""
  a = -jnp.deg2rad(degrees)
  cos, sin = jnp.cos(a), jnp.sin(a)
  cx, cy = w / 2.0, h / 2.0
  return (cos, sin, cos * -cx + sin * -cy + cx,
          -sin, cos, -sin * -cx + cos * -cy + cy)


def apply_operation(name: str, image, magnitude, sign):
  """One AutoAugment operation of the port, on one image (H, W, 3) float32."""
  h, w, _ = image.shape
  m = magnitude * sign
  if name == "shearX":
    return _affine(image, (1, m, 0, 0, 1, 0), bicubic=True)
  if name == "shearY":
    return _affine(image, (1, 0, 0, m, 1, 0), bicubic=True)
  if name == "translateX":
    return _affine(image, (1, 0, m * w, 0, 1, 0), bicubic=False)
  if name == "translateY":
    return _affine(image, (1, 0, 0, 0, 1, m * h), bicubic=False)
  if name == "rotate":  # the port rotates by +magnitude only
    return _affine(image, _rotate_matrix(magnitude, h, w), bicubic=False)
  if name == "color":
    return _blend(_luma(image)[..., None], image, 1 + m)
  if name == "posterize":
    q = 2.0 ** (8 - magnitude)
    return jnp.floor(image / q) * q
  if name == "solarize":
    return jnp.where(image < magnitude, image, 255 - image)
  if name == "contrast":
    mean = jnp.floor(_luma(image).mean() + 0.5)
    return _blend(mean, image, 1 + m)
  if name == "sharpness":
    return _blend(_smooth(image), image, 1 + m)
  if name == "brightness":
    return _blend(0.0, image, 1 + m)
  if name == "autocontrast":
    return _autocontrast(image)
  if name == "equalize":
    return jnp.stack([_equalize_channel(image[..., c]) for c in range(3)], -1)
  if name == "invert":
    return 255 - image
  raise ValueError(f"auto_augment: unknown operation {name!r}")


def policy_draws(key, batch: int, policy=CIFAR10_POLICY):
  """Each image's (sub-policy index (B,), applied (B, 2), sign (B, 2))."""
  k_pol, k_apply, k_sign = jax.random.split(key, 3)
  index = jax.random.randint(k_pol, (batch,), 0, len(policy))
  probs = jnp.asarray([[p[0], p[3]] for p in policy], jnp.float32)
  applied = jax.random.uniform(k_apply, (batch, 2)) < probs[index]
  sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (batch, 2)), 1.0, -1.0)
  return index, applied, sign


def auto_augment(images: jax.Array, key: jax.Array,
                 policy=CIFAR10_POLICY) -> jax.Array:
  """AutoAugment of a uint8 batch (B, H, W, 3) → uint8, one sub-policy each."""
  index, applied, sign = policy_draws(key, images.shape[0], policy)
  branches = [lambda im, m, s, name=name: apply_operation(name, im, m, s)
              for name in OPERATIONS]
  ops = jnp.asarray([[OPERATIONS.index(p[1]), OPERATIONS.index(p[4])]
                     for p in policy], jnp.int32)
  mags = jnp.asarray([[MAGNITUDES[p[1]][p[2]], MAGNITUDES[p[4]][p[5]]]
                      for p in policy], jnp.float32)

  def one(image, i, applied, sign):
    for slot in range(2):
      out = jax.lax.switch(ops[i, slot], branches, image, mags[i, slot],
                           sign[slot])
      image = jnp.where(applied[slot], out, image)
    return image

  out = jax.vmap(one)(images.astype(jnp.float32), index, applied, sign)
  return out.astype(jnp.uint8)


# --- Random erasing, on normalized images (B, H, W, C). ---

def erasing_boxes(key, batch: int, h: int, w: int, probability: float,
                  tries: int = 100):
  """Each image's box (top, left, height, width), all 0 where none is erased."""
  k_do, k_area, k_aspect, k_top, k_left = jax.random.split(key, 5)
  area = jax.random.uniform(k_area, (batch, tries), minval=0.02,
                            maxval=0.4) * (h * w)
  aspect = jax.random.uniform(k_aspect, (batch, tries), minval=0.3,
                              maxval=1 / 0.3)
  bh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  bw = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (bw < w) & (bh < h)
  first = jnp.argmax(fits, axis=1)
  pick = lambda v: jnp.take_along_axis(v, first[:, None], 1)[:, 0]
  bh, bw = pick(bh), pick(bw)
  erase = (jax.random.uniform(k_do, (batch,)) < probability) & fits.any(1)
  # Top-left corner uniform over the positions where the box fits.
  top = jnp.floor(jax.random.uniform(k_top, (batch,)) * (h - bh + 1))
  left = jnp.floor(jax.random.uniform(k_left, (batch,)) * (w - bw + 1))
  zero = jnp.zeros_like(bh)
  return (jnp.where(erase, top.astype(jnp.int32), zero),
          jnp.where(erase, left.astype(jnp.int32), zero),
          jnp.where(erase, bh, zero), jnp.where(erase, bw, zero))


def random_erasing(images, key, probability: float, fill):
  """Sets each image's box of ``erasing_boxes`` to ``fill`` (C,)."""
  b, h, w, _ = images.shape
  top, left, bh, bw = erasing_boxes(key, b, h, w, probability)
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < (top + bh)[:, None, None])
            & (cols >= left[:, None, None]) & (cols < (left + bw)[:, None, None]))
  return jnp.where(inside[..., None], jnp.asarray(fill, images.dtype), images)


# --- CutMix / Mixup of a normalized batch. ---

def mix_draws(key, batch: int, h: int, w: int, prob: float, alpha: float,
              beta: float):
  """The batch's (mixed, cutmix, λ, permutation, box (x1, y1, x2, y2)).

  The box of their ``rand_bbox``: side ⌊H·√(1−λ)⌋ by ⌊W·√(1−λ)⌋ about a
  uniform centre, clipped to the image; x runs over rows, y over columns.
  """
  k_do, k_which, k_mixup, k_cutmix, k_perm, k_cx, k_cy = jax.random.split(key,
                                                                          7)
  mixed = jax.random.uniform(k_do) < prob
  cutmix = jax.random.uniform(k_which) < 0.5
  lam_mixup = jax.random.beta(k_mixup, alpha, alpha)
  lam_cut = jax.random.beta(k_cutmix, beta, beta)
  perm = jax.random.permutation(k_perm, batch)
  ratio = jnp.sqrt(1.0 - lam_cut)
  cut_h = jnp.floor(h * ratio).astype(jnp.int32)
  cut_w = jnp.floor(w * ratio).astype(jnp.int32)
  cx = jax.random.randint(k_cx, (), 0, h)
  cy = jax.random.randint(k_cy, (), 0, w)
  box = (jnp.clip(cx - cut_h // 2, 0, h), jnp.clip(cy - cut_w // 2, 0, w),
         jnp.clip(cx + cut_h // 2, 0, h), jnp.clip(cy + cut_w // 2, 0, w))
  kept = 1.0 - ((box[2] - box[0]) * (box[3] - box[1])) / (h * w)
  lam = jnp.where(mixed, jnp.where(cutmix, kept, lam_mixup), 1.0)
  return mixed, cutmix, lam, perm, box


def mix(images, key, prob: float, alpha: float, beta: float):
  """(images, λ, permutation): the loss is λ·CE(y) + (1 − λ)·CE(y[perm])."""
  b, h, w, _ = images.shape
  mixed, cutmix, lam, perm, (x1, y1, x2, y2) = mix_draws(
      key, b, h, w, prob, alpha, beta)
  lam = lam.astype(images.dtype)
  other = images[perm]
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  box = (rows >= x1) & (rows < x2) & (cols >= y1) & (cols < y2)
  cut = jnp.where(box[None, :, :, None], other, images)
  blended = lam * images + (1 - lam) * other
  out = jnp.where(mixed, jnp.where(cutmix, cut, blended), images)
  return out, lam, perm


def train_batch(images, key, normalization, augmentation: Augmentation):
  """(normalized images, λ, permutation) of a uint8 training batch: crop +
  flip (``datasets.augment``), then ``augmentation``'s steps in their
  recipe's order, each from its own fold of the step's key (crop + flip keep
  the key itself, as before these existed); λ and the permutation are None
  without CutMix/Mixup."""
  images = datasets.augment(images, key)
  if augmentation.auto_augment:
    images = auto_augment(images, jax.random.fold_in(key, 2),
                          POLICIES[augmentation.auto_augment])
  x = datasets.normalize(images, normalization)
  if augmentation.random_erasing:
    x = random_erasing(x, jax.random.fold_in(key, 3),
                       augmentation.random_erasing, normalization.mean)
  if not augmentation.mixes:
    return x, None, None
  return mix(x, jax.random.fold_in(key, 4), augmentation.mix_prob,
             augmentation.mixup_alpha, augmentation.cutmix_beta)
