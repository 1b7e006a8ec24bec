"""What one traced forward pass says about a model, whatever its names.

The model's layers, their BatchNorm pairs and folds all come from one
layer table (``layer_table.build``; its docstring states the rules):

- ``table``: the layer table itself;
- ``layers``: its rows, every kernel as the model uses it, in call order;
- ``bn_pairs``: which BatchNorm normalizes which layer's output (the
  normalization, of any class, whose input *is* that layer's output, its own
  bias included, acting on its output features), for any names and nesting,
  with
  each BatchNorm's own epsilon; the kernels no BatchNorm rectifies, and
  why; which BatchNorms fold into their layer, and why the others stay.

``apply_fn(variables, x)`` runs the model in evaluation mode
(``eval_apply``). ``input_shape`` is one example's shape, without the batch
axis.
"""

from collections.abc import Callable
import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp

from lrpet_jax.analysis import layer_table
from lrpet_jax.analysis import nnx_models

Layer = layer_table.Layer
example = layer_table.example


def eval_flags(model) -> dict:
  """``{"train": False}`` if the model's ``__call__`` takes ``train``, else
  no flags (a model whose BatchNorms are set to eval mode at construction,
  ``nn.Sequential``). ``Factorized`` models: their module's."""
  inner = getattr(model, "module", model)
  if isinstance(inner, nnx_models.NnxModel):
    return {"train": False}
  try:
    params = inspect.signature(type(inner).__call__).parameters
  except (TypeError, ValueError):
    return {}
  return {"train": False} if "train" in params else {}


def abstract_variables(model, input_shape) -> Any:
  """The variables of ``model`` (called as ``(x, train=...)``, as the
  pipeline's models are) as ``ShapeDtypeStruct``s: a ``train=False`` init on
  one example of ``input_shape``, nothing computed."""
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1,) + tuple(input_shape)), train=False))


def eval_apply(model, **flags) -> Callable:
  """``apply_fn`` of ``model`` in evaluation mode: ``flags`` (e.g.
  ``training=False``), by default ``eval_flags(model)``. An ``nnx.Module``
  runs as ``nnx_models.NnxModel.of(model)`` (on Linen-layout variables)."""
  if nnx_models.is_nnx_module(model):
    model = nnx_models.NnxModel.of(model)
  flags = flags or eval_flags(model)
  return lambda variables, x: model.apply(variables, x, **flags)


def table(apply_fn, variables, input_shape) -> layer_table.LayerTable:
  """The layer table of the model ``apply_fn`` runs."""
  return layer_table.build(apply_fn, variables, input_shape)


def layers(apply_fn, variables, input_shape) -> list[Layer]:
  """Every kernel's layer as ``apply_fn`` runs it on one example of
  ``input_shape``, in call order."""
  return list(table(apply_fn, variables, input_shape).layers)


@dataclasses.dataclass(frozen=True)
class Pairing:
  """BatchNorm pairs and folds of a model.

  Attributes:
    pairs: {kernel path: BatchNorm path} ('/'-joined; the values carry their
      module's ``epsilon``): the BatchNorm that rectifies each kernel
      (``bn_out_scales``).
    unpaired: kernel paths no BatchNorm rectifies.
    reasons: {unpaired kernel path: why}.
    folds: {kernel path: BatchNorm path} folded into the layer for
      inference (``folding.fold``).
    fold_axes: {kernel path: the kernel axis of its output features}.
    kept: {BatchNorm path: why it stays in the folded graph}.
  """

  pairs: dict[str, str]
  unpaired: tuple[str, ...]
  reasons: dict[str, str] = dataclasses.field(default_factory=dict)
  folds: dict[str, str] = dataclasses.field(default_factory=dict)
  fold_axes: dict[str, int] = dataclasses.field(default_factory=dict)
  kept: dict[str, str] = dataclasses.field(default_factory=dict)

  @classmethod
  def of(cls, t: layer_table.LayerTable) -> "Pairing":
    return cls(
        pairs=dict(t.pairs), unpaired=tuple(t.unpaired),
        reasons=dict(t.unpaired), folds=dict(t.folds),
        fold_axes={k: t.layer(k).cols[0] for k in t.folds},
        kept=dict(t.kept_norms))

  def to_json(self) -> dict:
    return {"pairs": self.pairs, "unpaired": list(self.unpaired),
            "unpaired_reasons": self.reasons, "folded": self.folds,
            "not_folded": self.kept}


def bn_pairs(apply_fn, variables, input_shape) -> Pairing:
  """Which BatchNorm normalizes each layer's output (see the module
  docstring); a layer called twice is paired by its first call."""
  return Pairing.of(table(apply_fn, variables, input_shape))
