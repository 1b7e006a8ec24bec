"""Models: the zoo, and any Flax model a user names by its import path.

``build(spec, num_classes, dtype)`` makes the dense model: ``spec`` is a zoo
name (``NAMES``) or ``package.module:factory``, a function
``factory(num_classes=..., dtype=...) -> nn.Module`` whose ``__call__(x,
<flag>)`` takes a training flag (``train``, or another name: ``check_flag``,
``with_train_flag``). ``create(name, num_classes, ranks)`` is the zoo model,
and with ``ranks`` its compact model: ``factorized.Factorized``, the one
compact form of every model. Which BatchNorm follows which layer is found by
tracing (``tracing.bn_pairs``), whatever the names.

A factory that takes ``rngs`` makes a Flax NNX model:
``factory(num_classes=..., dtype=..., rngs=nnx.Rngs) -> nnx.Module``, called
as ``model(x)``, its modes set by ``train()``/``eval()``; ``build`` returns it
as an ``nnx_models.NnxModel`` (Linen-style ``init``/``apply`` on the same
variables), so both kinds go through one pipeline.
"""

import dataclasses
import functools
import importlib
import inspect
from typing import Any

import flax.linen as nn

from lrpet_jax.analysis import factorized
from lrpet_jax.analysis import nnx_models
from lrpet_jax.models import cifar_resnet
from lrpet_jax.models import imagenet_resnet
from lrpet_jax.models import layers
from lrpet_jax.models import nnx_cifar_resnet
from lrpet_jax.models import vgg
from lrpet_jax.models import vit

# The dtypes a model computes in (``compute_dtype``); float64 is a reference
# precision for checks (needs JAX_ENABLE_X64=1).
COMPUTE_DTYPES = ("float32", "bfloat16", "float64")

_ZOO = {
    # ResNet-8: the smallest of the family, for quick benchmark modes.
    "resnet8": functools.partial(cifar_resnet.CifarResNet, depth=8),
    "resnet20": functools.partial(cifar_resnet.CifarResNet, depth=20),
    "resnet32": functools.partial(cifar_resnet.CifarResNet, depth=32),
    "resnet56": functools.partial(cifar_resnet.CifarResNet, depth=56),
    "resnet110": functools.partial(cifar_resnet.CifarResNet, depth=110),
    # The same ResNets as Flax NNX modules (the same variables).
    "resnet8_nnx": functools.partial(nnx_cifar_resnet.make, depth=8),
    "resnet20_nnx": functools.partial(nnx_cifar_resnet.make, depth=20),
    "vgg16": vgg.VGG,
    # The authors' CIFAR ViT (their VisionTransformer/models/vit.py).
    "vit_cifar": vit.ViT,
    # The same, small (width 32, depth 2, 4 heads of 8): quick modes, tests.
    "vit_tiny": functools.partial(vit.ViT, dim=32, depth=2, heads=4,
                                  dim_head=8),
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


def _factory(spec: str):
  """The function ``spec`` names, or a one-line ValueError naming ``model``."""
  if spec in _ZOO:
    return _ZOO[spec]
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise ValueError(f"model: unknown {spec!r}; valid: {', '.join(NAMES)}, or"
                     " package.module:factory for a model of your own")
  try:
    found = importlib.import_module(module_name)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"model: cannot import {module_name!r} for {spec!r}"
                     f" ({type(e).__name__}: {e})") from None
  factory = getattr(found, attr, None)
  if not callable(factory):
    raise ValueError(f"model: {module_name} has no function {attr!r}")
  return factory


def check_name(spec: str) -> None:
  """``spec`` names a zoo model or an importable factory."""
  _factory(spec)


def build(spec: str, num_classes: int = 10, dtype: Any = None) -> nn.Module:
  """The dense model ``spec`` names (see the module docstring).

  Args:
    spec: a zoo name or ``package.module:factory``.
    num_classes: size of the classifier.
    dtype: computation dtype of its layers (e.g. ``jnp.bfloat16``); None:
      the params' float32. Params and BatchNorm statistics stay float32.
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or (
      num_classes < 1):
    raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
  factory = _factory(spec)
  if _takes_rngs(factory):
    return _nnx_model(spec, factory, num_classes, dtype)
  try:
    module = factory(num_classes=num_classes, dtype=dtype)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"model: {spec}(num_classes={num_classes}, dtype={dtype})"
                     f" failed ({type(e).__name__}: {e})") from None
  if nnx_models.is_nnx_module(module):
    raise ValueError(f"model: {spec} returned an nnx.Module; an NNX factory"
                     " takes rngs: factory(num_classes=, dtype=, rngs=)")
  if not isinstance(module, nn.Module):
    raise ValueError(f"model: {spec} returned a {type(module).__name__}, not a"
                     " flax.linen Module")
  return module


def _takes_rngs(factory) -> bool:
  try:
    return "rngs" in inspect.signature(factory).parameters
  except (TypeError, ValueError):
    return False


def _nnx_model(spec, factory, num_classes, dtype) -> nnx_models.NnxModel:
  """The NNX model ``factory(num_classes=, dtype=, rngs=)`` makes, as an
  ``NnxModel`` (its ``init`` draws from the seed it is given)."""
  build = lambda rngs: factory(num_classes=num_classes, dtype=dtype,
                               rngs=rngs)
  try:
    return nnx_models.NnxModel(build)
  except ValueError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"model: {spec}(num_classes={num_classes},"
                     f" dtype={dtype}, rngs=...) failed"
                     f" ({type(e).__name__}: {e})") from None


def create(name: str, num_classes: int = 10, ranks: Any = None,
           dtype: Any = None):
  """A model (``build``); with a rank tree of its params, its compact model
  (``factorized.Factorized``). ``__call__(x, train: bool)`` on NHWC input for
  the zoo."""
  module = build(name, num_classes, dtype)
  return module if ranks is None else factorized.Factorized(module, ranks)


def check_flag(module: nn.Module, flag: str) -> None:
  """``module.__call__`` takes the training flag ``flag``, or a one-line
  ValueError naming ``model_flag``. An NNX model has no flag (its
  ``train()``/``eval()`` modes are set for it): ``flag`` must be "train"."""
  if isinstance(module, nnx_models.NnxModel):
    if flag != "train":
      raise ValueError(
          f"model_flag: {flag!r} is for Linen models; an NNX model's modes"
          " are set by Module.train()/eval(): leave model_flag unset")
    return
  params = inspect.signature(type(module).__call__).parameters
  if flag not in params:
    names = ", ".join(p for p in params if p != "self")
    if not _flag_candidates(params):
      if flag == "train":
        return  # a model without modes: called as inner(x)
      raise ValueError(
          f"model_flag: {flag!r}: {type(module).__name__}.__call__({names})"
          " takes no training flag; leave model_flag unset (the model is"
          " then called without one)")
    raise ValueError(
        f"model_flag: {flag!r} is not an argument of"
        f" {type(module).__name__}.__call__({names}); set --config.model_flag"
        " to the name of its training flag")


def _flag_candidates(params) -> list[str]:
  """The named arguments of ``__call__`` after the input that could be a
  training flag."""
  named = [p for name, p in params.items() if name != "self" and p.kind in (
      inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
  return [p.name for p in named[1:]]


# Flags that are True in evaluation (flax's ``deterministic``,
# ``use_running_average``): passed as ``not train``.
INVERTED = frozenset({"deterministic", "use_running_average", "eval",
                      "is_eval", "inference"})


@dataclasses.dataclass(frozen=True)
class TrainFlag:
  """``inner`` with Linen's ``init``/``apply`` called as ``(x, train=...)``
  whatever its own flag's name (one of ``INVERTED``, e.g.
  ``deterministic``, gets ``not train``; ``flag=None``: a model without
  modes, called as ``inner(x)``). Not a module around ``inner``: its
  variables and module paths are ``inner``'s own."""

  inner: nn.Module
  flag: str | None

  def _kwargs(self, kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    train = kwargs.pop("train", False)
    if self.flag is not None:
      kwargs[self.flag] = (not train) if self.flag in INVERTED else train
    return kwargs

  def init(self, rngs, x, *args, **kwargs):
    return self.inner.init(rngs, x, *args, **self._kwargs(kwargs))

  def apply(self, variables, x, *args, **kwargs):
    return self.inner.apply(variables, x, *args, **self._kwargs(kwargs))

  def __call__(self, x, train: bool):  # the signature the pipeline reads
    raise TypeError("TrainFlag is called through init/apply")


def with_train_flag(module: nn.Module, flag: str) -> nn.Module:
  """``module`` as a model with a ``train`` flag (itself if it has one; a
  model whose ``__call__`` takes no flag, e.g. ``nn.Sequential``, runs the
  same in training and evaluation)."""
  check_flag(module, flag)
  if isinstance(module, nnx_models.NnxModel):
    return module
  params = inspect.signature(type(module).__call__).parameters
  if flag not in params:
    return TrainFlag(module, None)
  return module if flag == "train" else TrainFlag(module, flag)


__all__ = ["DATASETS", "NAMES", "TrainFlag", "build", "check_flag",
           "check_name", "create", "layers", "with_train_flag"]
