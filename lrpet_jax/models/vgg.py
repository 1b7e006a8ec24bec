"""CIFAR VGG-16 with BatchNorm, as in the official LRPET code.

Configuration D (13 3×3 convs with bias, each followed by BatchNorm and ReLU,
five 2×2 max-pools) and one Dense 512 → classes: ≈313M MACs, 14.7M params at
32×32.
"""

from typing import Any

import flax.linen as nn

from lrpet_jax.models import layers

CONFIG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
            512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
  num_classes: int = 10
  config: tuple[Any, ...] = CONFIG_D
  dtype: Any = None  # computation dtype; params and BN statistics stay float32

  @nn.compact
  def __call__(self, x, train: bool):
    i = 0
    for width in self.config:
      if width == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      x = layers.conv(width, (3, 3), use_bias=True,
                      kernel_init=layers.kaiming_normal_fan_out,
                      dtype=self.dtype, name=f"conv{i}")(x)
      x = nn.relu(layers.batch_norm(train, f"bn{i}", self.dtype)(x))
      i += 1
    x = x.reshape(x.shape[0], -1)
    return layers.dense(self.num_classes, dtype=self.dtype, name="head")(x)
