"""The zoo's CIFAR ResNets (``cifar_resnet``) as Flax NNX modules.

The same architecture, initializations, BatchNorm settings and variable
names (``conv``, ``bn``, ``stage{s}_block{b}/conv1|bn1|conv2|bn2``,
``head``), so given the Linen model's variables (``nnx_models.NnxModel``
holds them) it computes the same logits: the reference the NNX path is
tested against.
"""

from typing import Any

from flax import nnx
import jax.numpy as jnp

from lrpet_jax.models import cifar_resnet
from lrpet_jax.models import layers


def _conv(c_in, c_out, strides, dtype, rngs) -> nnx.Conv:
  return nnx.Conv(c_in, c_out, (3, 3), strides=strides,
                  padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=layers.kaiming_normal_fan_in, dtype=dtype,
                  rngs=rngs)


def _bn(c, dtype, rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, dtype=dtype,
                       rngs=rngs)


class BasicBlock(nnx.Module):

  def __init__(self, c_in: int, features: int, strides: int, dtype: Any,
               rngs: nnx.Rngs):
    self.strides, self.features = strides, features
    self.conv1 = _conv(c_in, features, strides, dtype, rngs)
    self.bn1 = _bn(features, dtype, rngs)
    self.conv2 = _conv(features, features, 1, dtype, rngs)
    self.bn2 = _bn(features, dtype, rngs)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return nnx.relu(y + cifar_resnet.shortcut(x, self.strides,
                                              self.features).astype(y.dtype))


class CifarResNet(nnx.Module):

  def __init__(self, depth: int = 56, num_classes: int = 10, dtype: Any = None,
               *, rngs: nnx.Rngs):
    if (depth - 2) % 6:
      raise ValueError(f"depth must be 6n + 2, got {depth}")
    self.blocks = []
    self.conv = _conv(3, 16, 1, dtype, rngs)
    self.bn = _bn(16, dtype, rngs)
    c_in = 16
    for stage, width in enumerate((16, 32, 64)):
      for block in range((depth - 2) // 6):
        name = f"stage{stage + 1}_block{block}"
        setattr(self, name, BasicBlock(c_in, width,
                                       2 if stage and not block else 1,
                                       dtype, rngs))
        self.blocks.append(name)
        c_in = width
    self.head = nnx.Linear(64, num_classes,
                           kernel_init=layers.kaiming_normal_fan_in,
                           bias_init=nnx.initializers.zeros, dtype=dtype,
                           rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    for name in self.blocks:
      x = getattr(self, name)(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


def make(num_classes: int = 10, dtype: Any = None, *, rngs: nnx.Rngs,
         depth: int = 20) -> CifarResNet:
  return CifarResNet(depth, num_classes, dtype, rngs=rngs)
