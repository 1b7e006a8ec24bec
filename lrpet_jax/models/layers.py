"""Layers with a dense/compact switch: the building blocks of the model zoo.

``LowRankConv`` and ``LowRankDense`` hold one kernel named ``kernel`` when
``rank`` is None (the dense model LRPET trains). With an int ``rank`` they
compute the factorized layer of the compact model instead:

    conv:  x → conv_{kh×kw, stride, padding}(x; first_kernel (kh, kw, c_in, r))
             → conv_{1×1}(·; second_kernel (1, 1, r, c_out)) + bias
    dense: x → x @ first_kernel (d_in, r) @ second_kernel (r, d_out) + bias

Break-even guard: a layer is factorized only if that reduces its MACs,
r·(kh·kw·c_in + c_out) < kh·kw·c_in·c_out; otherwise the compact model keeps
the dense kernel (``is_factorized``). Use these layers in your own model, name
the BatchNorm that follows a layer called ``X_conv``/``conv…`` by replacing
``conv`` with ``bn`` (see ``bn_pairs``) and it gets BN rectification and
compact export for free.
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
from jax import lax
import jax.numpy as jnp

Initializer = Any
# PyTorch's kaiming_normal_ (gain √2, fan_in): the official CIFAR code's init.
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# torchvision's ResNet/VGG init (mode="fan_out").
kaiming_normal_fan_out = nn.initializers.variance_scaling(
    2.0, "fan_out", "normal")
# PyTorch's default nn.Linear weight init (kaiming_uniform_, a=√5).
torch_linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def is_factorized(rank: int | None, kernel_shape: Sequence[int]) -> bool:
  """Whether a kernel of ``kernel_shape`` (..., c_out) at ``rank`` is split in two."""
  if rank is None:
    return False
  m, n = math.prod(kernel_shape[:-1]), kernel_shape[-1]
  return rank * (m + n) < m * n


class LowRankConv(nn.Module):
  """2-D convolution (NHWC, HWIO kernel), dense or factorized by ``rank``."""

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  padding: int | None = None  # symmetric, PyTorch-style; default k // 2
  use_bias: bool = False
  rank: int | None = None
  kernel_init: Initializer = kaiming_normal_fan_in
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = None  # computation dtype (e.g. bfloat16); params stay float32

  def _conv(self, x, kernel, strides, pad):
    return lax.conv_general_dilated(
        x, kernel, (strides, strides), [(pad, pad), (pad, pad)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    pad = kh // 2 if self.padding is None else self.padding
    shape = (kh, kw, x.shape[-1], self.features)
    cast = lambda *a: _cast(self.dtype, *a)
    if is_factorized(self.rank, shape):
      first = self.param("first_kernel", self.kernel_init,
                         (kh, kw, x.shape[-1], self.rank))
      second = self.param("second_kernel", self.kernel_init,
                          (1, 1, self.rank, self.features))
      x, first, second = cast(x, first, second)
      # The 1×1 conv as a matmul over channels (measured faster on CPU).
      y = jnp.dot(self._conv(x, first, self.strides, pad), second[0, 0])
    else:
      x, kernel = cast(x, self.param("kernel", self.kernel_init, shape))
      y = self._conv(x, kernel, self.strides, pad)
    if self.use_bias:
      y = y + cast(self.param("bias", self.bias_init, (self.features,)))[0]
    return y


class LowRankDense(nn.Module):
  """Dense layer, dense or factorized by ``rank``."""

  features: int
  use_bias: bool = True
  rank: int | None = None
  kernel_init: Initializer = torch_linear_init
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = None  # computation dtype (e.g. bfloat16); params stay float32

  @nn.compact
  def __call__(self, x):
    shape = (x.shape[-1], self.features)
    cast = lambda *a: _cast(self.dtype, *a)
    if is_factorized(self.rank, shape):
      first = self.param("first_kernel", self.kernel_init,
                         (x.shape[-1], self.rank))
      second = self.param("second_kernel", self.kernel_init,
                          (self.rank, self.features))
      x, first, second = cast(x, first, second)
      y = jnp.dot(jnp.dot(x, first), second)
    else:
      x, kernel = cast(x, self.param("kernel", self.kernel_init, shape))
      y = jnp.dot(x, kernel)
    if self.use_bias:
      y = y + cast(self.param("bias", self.bias_init, (self.features,)))[0]
    return y


def _cast(dtype, *arrays):
  """``arrays`` in the computation ``dtype`` (unchanged when it is None)."""
  if dtype is None:
    return arrays
  return tuple(jnp.asarray(a, dtype) for a in arrays)


def batch_norm(train: bool, name: str, dtype: Any = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there = 0.9 in Flax, eps 1e-5).

  With a computation ``dtype`` (bfloat16) the output is in that dtype; the
  statistics are reduced in float32 and kept, with scale and bias, in float32.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, name=name)


def rank_of(ranks: Any, name: str) -> int | None:
  """The rank of layer ``name``'s kernel in a rank (sub)tree, or None."""
  if ranks is None or name not in ranks:
    return None
  return ranks[name].get("kernel")


def subtree(ranks: Any, name: str) -> Any:
  return None if ranks is None else ranks.get(name)
