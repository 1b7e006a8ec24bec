"""Public Flax models written by other people, at test sizes.

Each is installed from the package registry at the version pinned in
``tests/requirements-models.txt`` (``pip install --no-deps``: their metadata
asks for nothing the project does not pin); none is copied here. Each entry
is a factory ``(num_classes=, dtype=) -> nn.Module`` as the pipeline takes
models (``--config.model=public_models:NAME``, the training flag in
``FLAGS``), built small enough for the tests.
"""

import flax.linen as nn


def jax_resnet18(num_classes=10, dtype=None):
  """jax-resnet 0.0.4 ``ResNet18``: an ``nn.Sequential``-like model with no
  training flag (its BatchNorms follow ``mutable``), nn.BatchNorm through a
  ``partial``, max pooling."""
  del dtype
  import jax_resnet  # pylint: disable=g-import-not-at-top
  return jax_resnet.ResNet18(n_classes=num_classes,
                             hidden_sizes=(8, 16, 16, 32))


def jax_resnext50(num_classes=10, dtype=None):
  """jax-resnet 0.0.4 ``ResNeXt50``: bottlenecks with 32-group convs."""
  del dtype
  import jax_resnet  # pylint: disable=g-import-not-at-top
  return jax_resnet.ResNeXt50(n_classes=num_classes,
                              hidden_sizes=(32, 32, 32, 32))


def flaxmodels_resnet18(num_classes=10, dtype=None):
  """flaxmodels 0.1.3 ``ResNet18`` (no pretrained weights): its own
  ``BatchNorm`` class (flax's math, another class), flag ``train``."""
  del dtype
  import flaxmodels  # pylint: disable=g-import-not-at-top
  return flaxmodels.ResNet18(output="logits", pretrained=None,
                             num_classes=num_classes)


def convnext(num_classes=10, dtype=None):
  """jax-models 0.0.5 ``ConvNeXt``: depthwise (grouped) 7x7 convs,
  LayerNorm, Dense MLPs, layer scale, DropPath drawing from a "drop_path"
  RNG stream; flag ``deterministic``."""
  del dtype
  from jax_models.models import convnext as m  # pylint: disable=g-import-not-at-top
  return m.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 16, 32), drop_path=0.1,
                    attach_head=True, num_classes=num_classes)


def mlp_mixer(num_classes=10, dtype=None):
  """jax-models 0.0.5 ``MLPMixer``: token- and channel-mixing Dense layers,
  dropout; flag ``deterministic``."""
  del dtype
  from jax_models.models import mlp_mixer as m  # pylint: disable=g-import-not-at-top
  return m.MLPMixer(patch_size=8, num_mixers_layers=2, hidden_size=32,
                    channels_dim=48, tokens_dim=24, dropout=0.1,
                    attach_head=True, num_classes=num_classes)


def conv_mixer(num_classes=10, dtype=None):
  """jax-models 0.0.5 ``ConvMixer``: a patch-embedding conv, depthwise and
  pointwise convs, BatchNorm after GELU; flag ``deterministic``."""
  del dtype
  from jax_models.models import conv_mixer as m  # pylint: disable=g-import-not-at-top
  return m.ConvMixer(features=16, patch_size=4, num_mixer_layers=2,
                     filter_size=3, attach_head=True, num_classes=num_classes)


def poolformer(num_classes=10, dtype=None):
  """jax-models 0.0.5 PoolFormer ``S12``: strided convs between stages,
  pooling token mixers, Dense MLPs, GroupNorm; flag ``deterministic``."""
  del dtype
  from jax_models.models import poolformer as m  # pylint: disable=g-import-not-at-top
  return m.S12(attach_head=True, num_classes=num_classes)


FLAGS = {"jax_resnet18": "train", "jax_resnext50": "train",
         "flaxmodels_resnet18": "train",
         "mlp_mixer": "deterministic", "conv_mixer": "deterministic",
         "poolformer": "deterministic"}
# Their input (H, W, C): CIFAR-sized.
INPUT = (32, 32, 3)


def cait(num_classes=10, dtype=None):
  """jax-models 0.0.5 ``CaiT``: a ViT with talking-heads attention, class
  attention layers, LayerScale and a class token; flag ``deterministic``."""
  del dtype
  from jax_models.models import cait as m  # pylint: disable=g-import-not-at-top
  return m.CaiT(patch_size=8, embed_dim=32, depth=2, num_heads=2,
                depth_token_only=1, attach_head=True, num_classes=num_classes)


FLAGS["cait"] = "deterministic"


def van(num_classes=10, dtype=None):
  """jax-models 0.0.5 ``VAN``: large-kernel attention from depthwise and
  dilated depthwise convs, BatchNorm after overlapping patch convs, a
  drop_path stream; flag ``deterministic``."""
  del dtype
  from jax_models.models import van as m  # pylint: disable=g-import-not-at-top
  return m.VAN(embed_dims=(8, 16, 16, 32), mlp_ratios=(2, 2, 2, 2),
               depths=(1, 1, 1, 1), drop_path=0.1, attach_head=True,
               num_classes=num_classes)


# Refused: it calls .item() on jnp.linspace inside its __call__, which no
# jax.jit can trace.
REFUSED = {"van": "deterministic"}



def jax_resnetd18(num_classes=10, dtype=None):
  """jax-resnet 0.0.4 ``ResNetD18`` (ResNet-D): a three-conv stem and
  average-pooled skip connections; no training flag."""
  del dtype
  import jax_resnet  # pylint: disable=g-import-not-at-top
  return jax_resnet.ResNetD18(n_classes=num_classes,
                              hidden_sizes=(8, 16, 16, 32))


FLAGS["jax_resnetd18"] = "train"
