"""Flax NNX models as the pure functions the rest of the package takes.

An ``nnx.Module`` holds its variables; the analysis, the compact model and
the pipeline work on pure functions of variables, as Linen's ``init`` and
``apply`` are. ``NnxModel(build)`` is such a pair for the NNX model
``build(rngs)`` returns, its variables in Linen's layout:

    {"params": <every nnx.Param>, "batch_stats": <every nnx.BatchStat>}

as nested dicts keyed by the modules' attribute names (list items by their
index): an NNX model whose names are a Linen model's has the same variables,
so ranks, BatchNorm pairs, checkpoints and ``compact.factorize`` are shared.

- ``init(rng, x, train=False)`` builds the model with ``nnx.Rngs(rng)`` and
  returns its variables (``x`` is not needed: an NNX model knows its shapes).
- ``apply(variables, x, train=False, mutable=(), rngs=None)`` runs it: in
  training mode (``Module.train()``: BatchNorm on batch statistics, dropout
  on) or evaluation mode (``Module.eval()``); with ``mutable`` containing
  "batch_stats" it returns ``(outputs, {"batch_stats": new})``; ``rngs``
  (e.g. ``{"dropout": key}``) reseeds the model's RNG streams of those names
  (``nnx.reseed``), so dropout masks depend on the key alone; a model whose
  ``__call__`` takes ``rngs`` is also given ``nnx.Rngs`` of those keys.
- ``module(variables)``: the ``nnx.Module`` holding ``variables``.

A model with variables of any other kind (``nnx.Cache``, ``nnx.Intermediate``,
a custom ``nnx.Variable``) is refused in one line: their updates would be
lost between calls. ``intercept_calls`` lets the layer table see every
module call with its path, as Linen's method interception does.
"""

from collections.abc import Callable, Iterator
import contextlib
import inspect
import threading
from typing import Any

from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp

from lrpet_jax.core import _trees

_KINDS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}
_hook = threading.local()


def is_nnx_module(x: Any) -> bool:
  return isinstance(x, nnx.Module)


def _check_variables(module: nnx.Module) -> None:
  allowed = (nnx.Param, nnx.BatchStat, nnx.RngState)
  for path, var in nnx.iter_graph(module):
    if isinstance(var, nnx.Variable) and not isinstance(var, allowed):
      where = "/".join(str(p) for p in path)
      raise ValueError(
          f"model: the NNX model's variable {where} is an"
          f" nnx.{type(var).__name__}; only nnx.Param, nnx.BatchStat and RNG"
          " state are supported (other variables' updates would be lost)")


class NnxModel:
  """The NNX model ``build(rngs)`` as Linen-style ``init``/``apply``
  (module docstring).

  Args:
    build: ``build(rngs: nnx.Rngs) -> nnx.Module``, the same architecture
      on every call.
  """

  def __init__(self, build: Callable[[nnx.Rngs], nnx.Module]):
    self.build = build
    abstract = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    if not is_nnx_module(abstract):
      raise ValueError(f"model: the factory returned a"
                       f" {type(abstract).__name__}, not an nnx.Module")
    _check_variables(abstract)
    self.module_type = type(abstract)
    abstract.train()
    self._train_graph = nnx.graphdef(abstract)
    abstract.eval()
    self._eval_graph = nnx.graphdef(abstract)
    _, self._params, self._stats, self._rest = nnx.split(
        abstract, nnx.Param, nnx.BatchStat, ...)
    self._streams = sorted({v.tag for _, v in nnx.iter_graph(abstract)
                            if isinstance(v, nnx.RngKey)})
    self._call_takes_rngs = _takes(type(abstract).__call__, "rngs")

  @classmethod
  def of(cls, module: nnx.Module) -> "NnxModel":
    """A built ``module`` (copied: later changes to it are not seen); its
    ``init`` returns the module's own values, whatever the key."""
    return cls(lambda rngs: nnx.clone(module))

  def __repr__(self):
    return f"NnxModel({self.module_type.__name__})"

  def kernel_shapes(self) -> dict:
    """{kernel path tuple: shape} of the model's ``kernel`` params."""
    return {k: tuple(x.shape) for k, x in
            _trees.leaves_by_path(self._params).items() if k[-1] == "kernel"}

  def with_split_layers(self, ranks: dict) -> "NnxModel":
    """The model with the layer at each path of ``ranks`` ({layer path
    tuple: rank}) as its ``SplitLayer``."""
    build = self.build
    return NnxModel(lambda rngs: split_layers(build(rngs), ranks, rngs))

  def init(self, rng, *args, train: bool = False, **kwargs) -> dict:
    del args, train, kwargs
    return variables(self.build(nnx.Rngs(rng)))

  def module(self, variables_: dict, *, train: bool = False,
             partial: bool = False) -> nnx.Module:
    """The ``nnx.Module`` holding ``variables_`` (in ``train`` mode or
    evaluation mode); with ``partial``, variables missing from ``variables_``
    are zeros (e.g. those of BatchNorms ``folding`` removed, never called)."""
    params = _filled(self._params, variables_["params"], "params", partial)
    stats = _filled(self._stats, variables_.get("batch_stats", {}),
                    "batch_stats", partial)
    rest = jax.tree.map(  # keys of RNG streams stacked by nnx.vmap too
        lambda x: (jax.random.split(jax.random.key(0), x.shape)
                   if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                   else jnp.zeros(x.shape, x.dtype)), self._rest)
    graph = self._train_graph if train else self._eval_graph
    return nnx.merge(graph, params, stats, rest)

  def apply(self, variables_: dict, x, *args, train: bool = False,
            mutable: Any = (), rngs: dict | None = None,
            partial: bool = False, **kwargs):
    model = self.module(variables_, train=train, partial=partial)
    if rngs and self._streams:
      nnx.reseed(model, **_stream_keys(self._streams, rngs))
    if rngs and self._call_takes_rngs and "rngs" not in kwargs:
      # a model whose Dropout takes its key in the call
      first = rngs[sorted(rngs)[0]]
      kwargs = {**kwargs, "rngs": nnx.Rngs(jax.random.fold_in(first, 7),
                                            **rngs)}
    out = _call(model, x, *args, **kwargs)
    if mutable in (True, "batch_stats") or (
        isinstance(mutable, (list, tuple)) and "batch_stats" in mutable):
      return out, {"batch_stats": _pure(nnx.state(model, nnx.BatchStat))}
    return out


def _takes(fn, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _pure(state) -> dict:
  """An ``nnx.State`` as nested dicts of arrays with string keys."""
  return traverse_util.unflatten_dict(_trees.leaves_by_path(state))


def _filled(template, values: dict, name: str, partial: bool = False):
  """``template`` (a State of abstract Variables) holding ``values`` (nested
  dicts by name); with ``partial``, zeros where ``values`` has no leaf."""
  given = _trees.leaves_by_path(values)

  def value(path, leaf):
    key = _trees.path_tuple(path)
    if key in given:
      return given[key]
    if partial:
      return jnp.zeros(leaf.shape, leaf.dtype)
    raise ValueError(f"variables[{name!r}] has no {'/'.join(key)}")

  out = jax.tree_util.tree_map_with_path(value, template)
  if not set(given) <= {_trees.path_tuple(p) for p, _ in
                        jax.tree_util.tree_leaves_with_path(template)}:
    raise ValueError(f"variables[{name!r}] has leaves the NNX model lacks")
  return out


def _stream_keys(streams, rngs: dict) -> dict:
  """A key for each RNG stream of the model: the one ``rngs`` names, else
  one folded from the first given key (e.g. a ``Dropout`` built from
  ``nnx.Rngs(0)`` draws from the "default" stream, the pipeline passes
  ``{"dropout": key}``)."""
  first = rngs[sorted(rngs)[0]]
  return {tag: rngs[tag] if tag in rngs else jax.random.fold_in(first, i)
          for i, tag in enumerate(streams)}


def variables(module: nnx.Module) -> dict:
  """``module``'s variables in Linen's layout (module docstring)."""
  out = {}
  for name, kind in _KINDS.items():
    state = _pure(nnx.state(module, kind))
    if state or name == "params":
      out[name] = state
  return out


# ---------------------------------------------------------- interception


@contextlib.contextmanager
def intercept_calls(fn: Callable[..., Any]) -> Iterator[None]:
  """While active, every module call inside ``NnxModel.apply`` goes through
  ``fn(module, path, call, args, kwargs)`` (``path``: the module's tuple of
  names, None for a module that is not in the model's graph as given: one an
  NNX transform such as ``nnx.remat`` re-created, or one made during the
  call; ``call(*args, **kwargs)`` runs it)."""
  previous = getattr(_hook, "fn", None)
  _hook.fn = fn
  try:
    yield
  finally:
    _hook.fn = previous


def _call(model: nnx.Module, x, *args, **kwargs):
  fn = getattr(_hook, "fn", None)
  if fn is None:
    return model(x, *args, **kwargs)
  paths = {id(m): tuple(str(p) for p in path)
           for path, m in nnx.iter_modules(model)}
  inside = set()
  patched = {}

  def wrap(original):
    def call(self, *a, **k):
      key = id(self)
      if key in inside:
        return original(self, *a, **k)
      inside.add(key)
      try:
        return fn(self, paths.get(key), lambda *a2, **k2: original(
            self, *a2, **k2), a, k)
      finally:
        inside.discard(key)
    return call

  for m in {type(m) for _, m in nnx.iter_modules(model)}:
    for cls in m.__mro__:
      if "__call__" in vars(cls) and cls not in patched and issubclass(
          cls, nnx.Module):
        patched[cls] = vars(cls)["__call__"]
  try:
    for cls, original in patched.items():
      cls.__call__ = wrap(original)
    return model(x, *args, **kwargs)
  finally:
    for cls, original in patched.items():
      cls.__call__ = original


# ---------------------------------------------------------- the compact model

_SPLITTABLE = (nnx.Conv, nnx.ConvTranspose, nnx.Linear)


def split_reason(module: nnx.Module) -> str | None:
  """Why the layer ``module`` has no two-layer form here, or None."""
  if type(module) not in _SPLITTABLE:
    return (f"its module ({type(module).__name__}) is not an nnx.Conv,"
            " nnx.ConvTranspose or nnx.Linear: not factorized here")
  if getattr(module, "mask", None) is not None:
    return "a masked convolution: not factorized here"
  return None


class SplitLayer(nnx.Module):
  """A layer of ``_SPLITTABLE`` as its exact two-layer factorization:

      x → the same layer with r outputs and no bias (``first_kernel``,
          (..., r)) → 1×1 conv / matmul over features (``second_kernel``,
          (1, …, 1, r, c_out)) + the layer's ``bias``

  the variables ``compact.factorize`` gives a Linen model's split layer.
  """

  def __init__(self, layer: nnx.Module, rank: int, *, rngs: nnx.Rngs):
    shape = tuple(layer.kernel.shape)
    init = getattr(layer, "kernel_init", nnx.initializers.lecun_normal())
    dtype = layer.param_dtype
    self.rank, self.out_features = rank, shape[-1]
    self.precision = layer.precision
    self.first_kernel = nnx.Param(init(rngs.params(), shape[:-1] + (rank,),
                                       dtype))
    self.second_kernel = nnx.Param(init(
        rngs.params(), (1,) * (len(shape) - 2) + (rank, shape[-1]), dtype))
    self.bias = nnx.Param(layer.bias[...]) if layer.use_bias else None
    half = nnx.clone(layer)
    half.out_features = rank
    if hasattr(half, "kernel_shape"):
      half.kernel_shape = tuple(half.kernel_shape[:-1]) + (rank,)
    half.use_bias, half.bias = False, None
    half.kernel = nnx.Param(self.first_kernel[...])
    self.half = nnx.static(nnx.graphdef(half))

  def __call__(self, x, *args, **kwargs):
    half = nnx.merge(self.half, nnx.State(
        {"kernel": nnx.Param(self.first_kernel[...])}))
    y = half(x, *args, **kwargs)
    second = self.second_kernel[...].reshape(self.rank, self.out_features)
    y = jnp.dot(y, second.astype(y.dtype), precision=self.precision)
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


def split_layers(module: nnx.Module, ranks: dict, rngs: nnx.Rngs
                 ) -> nnx.Module:
  """``module`` with the layer at each path of ``ranks`` ({layer path tuple:
  rank}) replaced, in place, by its ``SplitLayer``; returns ``module``."""
  found = {tuple(str(p) for p in path): (path, m)
           for path, m in nnx.iter_modules(module)}
  for key, rank in ranks.items():
    if key not in found:
      raise ValueError(f"ranks name {'/'.join(key)}/kernel, which is not a"
                       " layer of the NNX model")
    path, layer = found[key]
    why = split_reason(layer)
    if why:
      raise ValueError(f"{'/'.join(key)}: {why}; leave its kernel unranked")
    parent = module
    for p in path[:-1]:
      parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    new = SplitLayer(layer, rank, rngs=rngs)
    if isinstance(path[-1], int):
      parent[path[-1]] = new
    else:
      setattr(parent, path[-1], new)
  return module
