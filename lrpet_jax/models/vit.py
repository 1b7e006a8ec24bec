"""The authors' CIFAR Vision Transformer (canyyang/LRPET,
``ImageClassification/VisionTransformer/models/vit.py``), in Flax.

Patches of 4×4 pixels flattened (pixel-major, channels last) and embedded by
a Dense layer; a class token and learned position embeddings; ``depth``
pre-norm blocks, each

    x = x + drop_path(attention(LayerNorm(x)))
    x = x + drop_path(feed_forward(LayerNorm(x)))

with ``attention`` a Dense ``to_qkv`` (no bias) to q, k, v of ``heads`` heads
of ``dim_head``, softmax(q·kᵀ/√dim_head)·v, and a Dense ``to_out``;
``feed_forward`` Dense ``fc1`` (dim → mlp_ratio·dim), exact GELU, Dense
``fc2`` back; the class token's LayerNorm, then the Dense ``head``. Stochastic
depth drops a whole residual branch per example with the same probability in
every block (their ``DropPath``), in training only. Linear weights are
Xavier-normal with zero biases, the embeddings standard normal, as theirs.

At width 192, depth 9, 12 heads of 16, MLP ratio 2 and 10 classes it has
2,692,426 parameters (their 2.69M; ``tests/models/test_vit.py`` counts their
layers by hand). Every kernel is an ``nn.Dense``, so each can be split into
two Dense layers of rank r (``factorized.Factorized``).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_xavier = nn.initializers.xavier_normal()


def _dense(features, name, dtype, use_bias=True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=_xavier,
                  dtype=dtype, name=name)


class DropPath(nn.Module):
  """Drops the whole input of an example with probability ``rate`` (and
  scales the kept ones by 1/(1 − rate)); the identity when
  ``deterministic``. Draws from the "dropout" RNG stream."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Attention(nn.Module):
  heads: int
  dim_head: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    b, n, dim = x.shape
    inner = self.heads * self.dim_head
    qkv = _dense(3 * inner, "to_qkv", self.dtype, use_bias=False)(x)
    q, k, v = (t.reshape(b, n, self.heads, self.dim_head)
               for t in jnp.split(qkv, 3, axis=-1))
    dots = jnp.einsum("bihd,bjhd->bhij", q, k) * self.dim_head ** -0.5
    out = jnp.einsum("bhij,bjhd->bihd", jax.nn.softmax(dots, axis=-1), v)
    return _dense(dim, "to_out", self.dtype)(out.reshape(b, n, inner))


class FeedForward(nn.Module):
  hidden: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    y = nn.gelu(_dense(self.hidden, "fc1", self.dtype)(x), approximate=False)
    return _dense(x.shape[-1], "fc2", self.dtype)(y)


class Block(nn.Module):
  heads: int
  dim_head: int
  mlp_ratio: int
  drop_path: float
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype,
                                     name=name)
    drop = DropPath(self.drop_path)
    x = x + drop(Attention(self.heads, self.dim_head, self.dtype,
                           name="attention")(norm("attention_norm")(x)),
                 not train)
    return x + drop(FeedForward(self.mlp_ratio * x.shape[-1], self.dtype,
                                name="feed_forward")(norm("mlp_norm")(x)),
                    not train)


class ViT(nn.Module):
  """``__call__(x, train)`` on NHWC images whose sides divide by
  ``patch``."""

  num_classes: int = 10
  patch: int = 4
  dim: int = 192
  depth: int = 9
  heads: int = 12
  dim_head: int = 16
  mlp_ratio: int = 2
  drop_path: float = 0.1
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    b, h, w, c = x.shape
    p = self.patch
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = _dense(self.dim, "patch_embedding", self.dtype)(
        x.reshape(b, (h // p) * (w // p), p * p * c))
    n = x.shape[1]
    normal = nn.initializers.normal(1.0)
    cls = self.param("cls_token", normal, (1, 1, self.dim))
    pos = self.param("pos_embedding", normal, (1, n + 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)).astype(
        x.dtype), x], axis=1) + pos.astype(x.dtype)
    for i in range(self.depth):
      x = Block(self.heads, self.dim_head, self.mlp_ratio, self.drop_path,
                self.dtype, name=f"block{i}")(x, train)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="head_norm")(x[:, 0])
    return _dense(self.num_classes, "head", self.dtype)(x)
