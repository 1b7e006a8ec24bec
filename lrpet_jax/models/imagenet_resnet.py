"""ImageNet ResNet-18/34/50 in torchvision's layout (v1.5: stride on the 3×3).

7×7/2 stem conv → BN → ReLU → 3×3/2 max-pool, four stages (64, 128, 256, 512
base widths; bottleneck expansion 4), a 1×1 conv + BN downsample where the
shape changes, global average pooling and a Dense head. ResNet-50: 25.6M
params, ≈4.1G MACs at 224×224.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lrpet_jax.models import layers


def _conv(features, k, s, name, dtype):
  return layers.conv(features, (k, k), strides=s,
                     kernel_init=layers.kaiming_normal_fan_out, dtype=dtype,
                     name=name)


class Downsample(nn.Module):
  """Projection shortcut of the residual: 1×1 conv (stride s) → BN."""

  features: int
  strides: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = _conv(self.features, 1, self.strides, "conv", self.dtype)(x)
    return layers.batch_norm(train, "bn", self.dtype)(x)


def _shortcut(x, features, strides, train, dtype):
  """Identity, or the Downsample projection when the shape changes.

  Called inside a block's compact ``__call__``, so the Downsample module is
  named ``downsample`` in that block's scope.
  """
  if strides == 1 and x.shape[-1] == features:
    return x
  return Downsample(features, strides, dtype, name="downsample")(x, train)


class BasicBlock(nn.Module):
  features: int
  strides: int = 1
  dtype: Any = None
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: layers.batch_norm(train, name, self.dtype)
    y = _conv(self.features, 3, self.strides, "conv1", self.dtype)(x)
    y = nn.relu(bn("bn1")(y))
    y = _conv(self.features, 3, 1, "conv2", self.dtype)(y)
    y = bn("bn2")(y)
    return nn.relu(y + _shortcut(x, self.features, self.strides, train,
                                 self.dtype))


class Bottleneck(nn.Module):
  features: int
  strides: int = 1
  dtype: Any = None
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    out = self.features * 4
    bn = lambda name: layers.batch_norm(train, name, self.dtype)
    y = _conv(self.features, 1, 1, "conv1", self.dtype)(x)
    y = nn.relu(bn("bn1")(y))
    y = _conv(self.features, 3, self.strides, "conv2", self.dtype)(y)
    y = nn.relu(bn("bn2")(y))
    y = _conv(out, 1, 1, "conv3", self.dtype)(y)
    y = bn("bn3")(y)
    return nn.relu(y + _shortcut(x, out, self.strides, train, self.dtype))


class ImageNetResNet(nn.Module):
  stage_sizes: tuple[int, ...]
  block: Any
  num_classes: int = 1000
  dtype: Any = None  # computation dtype; params and BN statistics stay float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = _conv(64, 7, 2, "conv", self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, "bn", self.dtype)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        name = f"stage{stage + 1}_block{block}"
        x = self.block(64 * 2**stage, 2 if stage and not block else 1,
                       self.dtype, name=name)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return layers.dense(self.num_classes, dtype=self.dtype, name="head")(x)
