"""The zoo's building blocks: PyTorch's layer conventions as Flax modules.

The zoo is made of plain ``nn.Conv``, ``nn.Dense`` and ``nn.BatchNorm``, as a
user's own model would be; these helpers only fix the conventions of the
authors' PyTorch code (symmetric padding k // 2, Kaiming initializations,
BatchNorm momentum 0.1 and eps 1e-5). Nothing here knows about ranks: the
compact model of any model, the zoo's included, is ``factorized.Factorized``.
"""

from typing import Any

import flax.linen as nn

Initializer = Any
# PyTorch's kaiming_normal_ (gain √2, fan_in): the official CIFAR code's init.
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# torchvision's ResNet/VGG init (mode="fan_out").
kaiming_normal_fan_out = nn.initializers.variance_scaling(
    2.0, "fan_out", "normal")
# PyTorch's default nn.Linear weight init (kaiming_uniform_, a=√5).
torch_linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def conv(features: int, kernel_size: tuple[int, int] = (3, 3), *,
         strides: int = 1, use_bias: bool = False,
         kernel_init: Initializer = kaiming_normal_fan_in, dtype: Any = None,
         name: str | None = None) -> nn.Conv:
  """``torch.nn.Conv2d(padding=k // 2)``: an ``nn.Conv`` (NHWC, HWIO kernel)
  padded symmetrically. ``dtype``: the computation dtype (e.g. bfloat16);
  params stay float32."""
  kh, kw = kernel_size
  return nn.Conv(features, kernel_size, strides=strides,
                 padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
                 use_bias=use_bias, kernel_init=kernel_init, dtype=dtype,
                 name=name)


def dense(features: int, *, kernel_init: Initializer = torch_linear_init,
          dtype: Any = None, name: str | None = None) -> nn.Dense:
  """``torch.nn.Linear`` (with bias) as an ``nn.Dense``."""
  return nn.Dense(features, kernel_init=kernel_init, dtype=dtype, name=name)


def batch_norm(train: bool, name: str, dtype: Any = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there = 0.9 in Flax, eps 1e-5).

  With a computation ``dtype`` (bfloat16) the output is in that dtype; the
  statistics are reduced in float32 and kept, with scale and bias, in float32.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, name=name)
