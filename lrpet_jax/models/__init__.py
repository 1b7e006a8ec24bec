"""Model zoo: ``create(name, num_classes, ranks)`` and ``bn_pairs(params)``.

``ranks=None`` builds the dense model; a rank pytree for the dense model's
params (``uniform_ranks``, ``ranks_for_budget``) builds the compact model, whose
variables ``factorize`` produces from the dense ones.
"""

import functools
import re
from typing import Any

import flax.linen as nn
import jax

from lrpet_jax import _trees
from lrpet_jax.models import cifar_resnet
from lrpet_jax.models import imagenet_resnet
from lrpet_jax.models import layers
from lrpet_jax.models import vgg
from lrpet_jax.models.layers import LowRankConv, LowRankDense, is_factorized

_ZOO = {
    # ResNet-8: the smallest of the family, for quick benchmark modes.
    "resnet8": functools.partial(cifar_resnet.CifarResNet, depth=8),
    "resnet20": functools.partial(cifar_resnet.CifarResNet, depth=20),
    "resnet32": functools.partial(cifar_resnet.CifarResNet, depth=32),
    "resnet56": functools.partial(cifar_resnet.CifarResNet, depth=56),
    "resnet110": functools.partial(cifar_resnet.CifarResNet, depth=110),
    "vgg16": vgg.VGG,
    "resnet18": functools.partial(imagenet_resnet.ImageNetResNet,
                                  stage_sizes=(2, 2, 2, 2),
                                  block=imagenet_resnet.BasicBlock),
    "resnet34": functools.partial(imagenet_resnet.ImageNetResNet,
                                  stage_sizes=(3, 4, 6, 3),
                                  block=imagenet_resnet.BasicBlock),
    "resnet50": functools.partial(imagenet_resnet.ImageNetResNet,
                                  stage_sizes=(3, 4, 6, 3),
                                  block=imagenet_resnet.Bottleneck),
}
NAMES = tuple(_ZOO)
# The data set each zoo model is built for (its input size and normalization).
DATASETS = {name: "imagenet2012" if name in ("resnet18", "resnet34", "resnet50")
            else "cifar10" for name in NAMES}


def _freeze(ranks: Any) -> Any:
  """Nested dicts of ranks with their ``None`` leaves kept (module attributes)."""
  if ranks is None:
    return None
  return jax.tree.map(lambda r: r, ranks, is_leaf=lambda r: r is None)


def check_name(name: str) -> None:
  if name not in _ZOO:
    raise ValueError(
        f"model: unknown {name!r}; valid: {', '.join(NAMES)}")


def create(name: str, num_classes: int = 10, ranks: Any = None,
           dtype: Any = None) -> nn.Module:
  """A zoo model; ``__call__(x, train: bool)`` on NHWC input.

  Args:
    name: one of ``NAMES``.
    num_classes: size of the Dense head.
    ranks: None for the dense model, or a rank pytree of the dense model's
      params for the compact model.
    dtype: computation dtype of convolutions, dense layers and BatchNorm
      outputs (e.g. ``jnp.bfloat16``); None: the params' float32. Params and
      BatchNorm statistics are float32 either way.
  """
  check_name(name)
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or (
      num_classes < 1):
    raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
  return _ZOO[name](num_classes=num_classes, ranks=_freeze(ranks), dtype=dtype)


def bn_pairs(params: Any) -> dict[str, str]:
  """{kernel path: BatchNorm path} for a model built from ``layers``.

  Convention: the BatchNorm fed by layer ``.../<name>`` (``name`` containing
  ``conv``) is its sibling ``.../<name with conv → bn>``: conv1 → bn1,
  conv → bn, downsample/conv → downsample/bn. Kernels with no such sibling
  (the Dense head) are not paired.
  """
  leaves = _trees.leaves_by_path(params)
  pairs = {}
  for path in leaves:
    if len(path) < 2 or path[-1] != "kernel" or "conv" not in path[-2]:
      continue
    bn = path[:-2] + (re.sub("conv", "bn", path[-2], count=1),)
    if bn + ("scale",) in leaves:
      pairs["/".join(path)] = "/".join(bn)
  return pairs


__all__ = ["DATASETS", "NAMES", "LowRankConv", "LowRankDense", "bn_pairs", "check_name",
           "create", "is_factorized", "layers"]
