"""CIFAR ResNets (He et al. 2016, §4.2) with option-A shortcuts.

The variant the official LRPET code uses (Idelbayev's ``resnet.py``): a 3×3
stem conv to 16 channels, three stages of n basic blocks (16, 32, 64
channels, depth = 6n + 2), identity shortcuts that subsample and zero-pad
channels when the shape changes, global average pooling, one Dense layer.
ResNet-56: 0.85M params, 125.49M MACs at 32×32.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lrpet_jax.models import layers


class BasicBlock(nn.Module):
  features: int
  strides: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda name, s: layers.conv(self.features, (3, 3), strides=s,
                                       dtype=self.dtype, name=name)
    y = conv("conv1", self.strides)(x)
    y = nn.relu(layers.batch_norm(train, "bn1", self.dtype)(y))
    y = conv("conv2", 1)(y)
    y = layers.batch_norm(train, "bn2", self.dtype)(y)
    return nn.relu(y + shortcut(x, self.strides, self.features).astype(
        y.dtype))


def shortcut(x, strides: int, features: int):
  """Option A: the identity, or where the shape changes x subsampled and its
  new channels zero-padded on both sides."""
  if strides == 1 and x.shape[-1] == features:
    return x
  x = x[:, ::strides, ::strides, :]
  extra = features - x.shape[-1]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class CifarResNet(nn.Module):
  depth: int = 56
  num_classes: int = 10
  dtype: Any = None  # computation dtype; params and BN statistics stay float32

  @nn.compact
  def __call__(self, x, train: bool):
    if (self.depth - 2) % 6:
      raise ValueError(f"depth must be 6n + 2, got {self.depth}")
    n = (self.depth - 2) // 6
    x = layers.conv(16, (3, 3), dtype=self.dtype, name="conv")(x)
    x = nn.relu(layers.batch_norm(train, "bn", self.dtype)(x))
    for stage, width in enumerate((16, 32, 64)):
      for block in range(n):
        name = f"stage{stage + 1}_block{block}"
        x = BasicBlock(width, 2 if stage and not block else 1,
                       dtype=self.dtype, name=name)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return layers.dense(self.num_classes,
                        kernel_init=layers.kaiming_normal_fan_in,
                        dtype=self.dtype, name="head")(x)
