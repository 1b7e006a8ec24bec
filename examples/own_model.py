"""A model of your own, as the pipeline takes it (docs/own-model.md).

    python -m lrpet_jax.main --config=configs/smoke.py --workdir=/tmp/own \
        --config.model=examples.own_model:make --config.model_flag=training

Flax's default names (``Conv_0``, ``BatchNorm_0``, …), a stride-2 ``SAME``
convolution and a flag called ``training``: nothing here follows the zoo's
conventions, and nothing has to. ``make`` is the factory the pipeline calls.
"""

from typing import Any

import flax.linen as nn


class OwnNet(nn.Module):
  num_classes: int = 10
  dtype: Any = None  # computation dtype (the pipeline's compute_dtype)

  @nn.compact
  def __call__(self, x, training: bool):
    for features, strides in ((16, 2), (32, 1)):
      x = nn.Conv(features, (3, 3), strides=strides, padding="SAME",
                  use_bias=False, dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not training, dtype=self.dtype)(x)
      x = nn.relu(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x.mean((1, 2)))


def make(num_classes: int, dtype: Any = None) -> nn.Module:
  return OwnNet(num_classes=num_classes, dtype=dtype)
