"""A Flax NNX model of your own, as the pipeline takes it (docs/nnx.md).

    python -m lrpet_jax.main --config=configs/smoke.py --workdir=/tmp/own_nnx \
        --config.model=examples.own_nnx_model:make

Its own names (``stem``, ``norms``, ``body``), layers in ``nnx.List``s, a
stride-2 convolution and a BatchNorm in a list beside its convolution:
nothing here follows the zoo's conventions, and nothing has to. ``make`` is
the factory the pipeline calls: it takes ``rngs``, so it is an NNX factory.
"""

from typing import Any

from flax import nnx


class OwnNnxNet(nnx.Module):

  def __init__(self, num_classes: int, dtype: Any, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, 16, (3, 3), strides=2, use_bias=False,
                         dtype=dtype, rngs=rngs)
    self.body = nnx.List([nnx.Conv(16, 32, (3, 3), use_bias=False,
                                   dtype=dtype, rngs=rngs)])
    self.norms = nnx.List([nnx.BatchNorm(n, dtype=dtype, rngs=rngs)
                           for n in (16, 32)])
    self.head = nnx.Linear(32, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.norms[0](self.stem(x)))
    x = nnx.relu(self.norms[1](self.body[0](x)))
    return self.head(x.mean((1, 2)))


def make(num_classes: int, dtype: Any = None, *, rngs: nnx.Rngs
         ) -> nnx.Module:
  return OwnNnxNet(num_classes, dtype, rngs)
