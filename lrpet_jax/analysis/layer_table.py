"""The layer table: one traced description of a model's layers.

``build(apply_fn, variables, input_shape)`` runs the model's eval-mode
forward pass once, abstractly (``jax.make_jaxpr``: nothing is computed), with
every variable an input of the jaxpr, and Flax method interception (for NNX
models run by ``nnx_models.NnxModel``, its call interception) marking
module boundaries with an identity primitive (``lrpet_tag``): the output of
every module call that owns a ``kernel``, and the input and output of every
module call that owns non-trainable variables. Calls of ``jit``, ``remat``
and custom-derivative functions are inlined; an ``nn.scan`` body counts
``length`` times, its stacked kernels sliced per iteration. A model that
``jit`` cannot trace is refused in one line. Only ops whose results reach
the output count.

BatchNorms are found by what the graph computes, whatever their class: a
per-channel (x − mean)·rsqrt(var + ε) [·scale] [+ bias] (or ÷ sqrt(var + ε))
with mean and var non-trainable variables, scale and bias trainable ones
(``_norm_at``); ε is the literal in the graph. Such a normalization is
``named`` when its variables are ``mean``/``var``/``scale``/``bias`` of one
module (rectified and folded as those), ``exact`` when that module's call
computes it and nothing else (folding skips the call).

Then, for every ``kernel`` leaf:

- the operations that use it, reached only through dtype casts, transposes,
  flips and scan slices: ``conv_general_dilated`` (its dimension numbers,
  feature groups, lhs dilation) or ``dot_general`` (its contracting axes);
  a kernel computed on by ops that read no activation (weight
  standardization) is followed to its contraction, counted and refused;
  anything else is a use of another kind;
- its kind (``KINDS``) and matrix view: ``rows``, the leaf axes the op
  contracts, and ``cols``, the leaf axes of its output features; a ranked
  kernel is the matrix (prod(rows), prod(cols)) with ``cols`` the trailing
  axes (``projection.matrix_shape``);
- its MACs per example over all its calls (scan iterations included):
  output size × contraction depth; a transposed (lhs-dilated) convolution
  counts input size × taps × c_out/groups, without the inserted zeros
  (fvcore's convention);
- each call's output consumers, and the BatchNorm that normalizes it (whose
  input *is* the layer's output, its own bias included), with that module's
  epsilon, ``use_scale``/``use_bias`` and axis;
- whether it can be ranked (``rankable``, else ``reason``): an exact
  two-layer factorization exists here only for a convolution, transposed
  convolution or dense layer of one of these classes themselves (``nn.Conv``,
  ``nn.ConvTranspose``, ``nn.Dense``, ``nn.DenseGeneral``; in NNX
  ``nnx.Conv``, ``nnx.ConvTranspose``, ``nnx.Linear``) with one group,
  its output features on the kernel's last axis, not stacked by ``nn.scan``,
  used by nothing else;
- whether its BatchNorm can be folded into it (``LayerTable.folds``): only
  where the layer runs once and the BatchNorm is the sole consumer of its
  output, for every call of that BatchNorm; otherwise the BatchNorm stays in
  the folded graph (``LayerTable.kept_norms`` says why).

``apply_fn(variables, x)`` runs the model in evaluation mode
(``tracing.eval_apply``). ``input_shape`` is one example's shape, without
the batch axis ((H, W, C) for images, (L, C) for sequences).
"""

from collections import defaultdict
from collections.abc import Callable
import dataclasses
import math
from typing import Any

from flax import nnx
import flax.linen as nn
import jax
from jax.extend import core as jcore
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp
import numpy as np

from lrpet_jax.analysis import factorized
from lrpet_jax.analysis import nnx_models
from lrpet_jax.core import _trees

KINDS = ("conv", "transposed_conv", "grouped_conv", "dense", "other", "unused")
# What a layer does, from the graph around it (``_role``): a convolution of
# any kind; a dense layer whose output meets another activation in a batched
# matrix product, or whose input comes from one, before any other layer
# (attention's projections: q, k, v, out); whose output is the model's
# output with no layer after it (the classifier); whose input is the model's
# input with no layer before it (a patch or token embedding); any other
# dense layer (the feed-forward/MLP layers); or none of these.
ROLES = ("conv", "attention", "classifier", "embedding", "mlp", "other")
FACTORIZABLE_KINDS = ("conv", "transposed_conv", "dense")
CONV_KINDS = ("conv", "transposed_conv", "grouped_conv")

# An identity that survives tracing: marks a module boundary in the jaxpr.
_tag_p = jcore.Primitive("lrpet_tag")
_tag_p.def_impl(lambda x, *, label: x)
_tag_p.def_abstract_eval(lambda x, *, label: x)
batching.primitive_batchers[_tag_p] = (
    lambda args, dims, *, label: (_tag_p.bind(args[0], label=label), dims[0]))
mlir.register_lowering(_tag_p, lambda ctx, x, *, label: [x])

# Ops a kernel may pass through on its way to its convolution or matmul.
_PASS = frozenset({"convert_element_type", "copy", "copy_p", "rev",
                   "reduce_precision", "lrpet_tag"})


def example(input_shape) -> jax.ShapeDtypeStruct:
  """A batch of one float32 example of ``input_shape`` (no batch axis)."""
  return jax.ShapeDtypeStruct((1,) + tuple(int(d) for d in input_shape),
                              jnp.float32)


# ---------------------------------------------------------------- the graph


@dataclasses.dataclass
class _Op:
  prim: str
  params: dict
  ins: list  # node ids (None: a literal)
  outs: list
  in_avals: list
  out_avals: list
  times: int  # executions per forward pass (scan bodies: × length)
  literals: tuple = ()  # the value of each literal operand (None: a node)


class _Graph:
  """The forward pass as ops on numbered values, sub-jaxprs inlined."""

  def __init__(self):
    self.ops: list[_Op] = []
    self.users: dict[int, list[tuple[_Op, int]]] = defaultdict(list)
    self.producer: dict[int, _Op] = {}
    self.input_node: int | None = None  # the model's input x
    self._count = 0

  def new(self) -> int:
    self._count += 1
    return self._count

  def add(self, prim, params, ins, in_avals, out_avals, times,
          literals=()) -> list[int]:
    op = _Op(prim, params, ins, [self.new() for _ in out_avals], in_avals,
             out_avals, times, tuple(literals))
    self.ops.append(op)
    for n in op.outs:
      self.producer[n] = op
    for k, n in enumerate(ins):
      if n is not None:
        self.users[n].append((op, k))
    return op.outs

  def walk(self, jaxpr, env: dict, times: int) -> None:
    read = lambda v: None if isinstance(v, jcore.Literal) else env.get(v)
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      in_avals = [v.aval for v in eqn.invars]
      out_avals = [v.aval for v in eqn.outvars]
      name = eqn.primitive.name
      subs = [s.jaxpr if isinstance(s, jcore.ClosedJaxpr) else s
              for s in eqn.params.values()
              if isinstance(s, (jcore.ClosedJaxpr, jcore.Jaxpr))]
      if name == "scan":
        outs = self._scan(eqn, ins, times)
      elif (name not in ("while", "cond") and len(subs) == 1
            and len(subs[0].invars) == len(ins)
            and len(subs[0].outvars) == len(eqn.outvars)):
        sub = subs[0]
        inner = dict(zip(sub.invars, ins))
        inner.update({v: self.new() for v in sub.constvars})
        self.walk(sub, inner, times)
        outs = [None if isinstance(v, jcore.Literal) else inner.get(v)
                for v in sub.outvars]
      else:
        outs = self.add(name, dict(eqn.params), ins, in_avals, out_avals,
                        times, [v.val if isinstance(v, jcore.Literal) else None
                                for v in eqn.invars])
      for v, n in zip(eqn.outvars, outs):
        env[v] = n

  def _scan(self, eqn, ins, times) -> list[int]:
    p = eqn.params
    body = p["jaxpr"].jaxpr
    consts, carry = p["num_consts"], p["num_carry"]
    inner = {v: self.new() for v in body.constvars}
    carried = self.add(
        "scan_carry", {}, ins[consts:consts + carry],
        [v.aval for v in eqn.invars[consts:consts + carry]],
        [v.aval for v in body.invars[consts:consts + carry]], times)
    for i, (v, n) in enumerate(zip(body.invars, ins)):
      if i < consts:
        inner[v] = n
      elif i < consts + carry:
        inner[v] = carried[i - consts]
      else:  # one slice of a stacked input per iteration
        inner[v] = self.add("scan_slice", {}, [n], [eqn.invars[i].aval],
                            [v.aval], times)[0]
    self.walk(body, inner, times * p["length"])
    outs = [None if isinstance(v, jcore.Literal) else inner.get(v)
            for v in body.outvars]
    return self.add("scan_out", {}, outs, [v.aval for v in body.outvars],
                    [v.aval for v in eqn.outvars], times)


# ---------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Norm:
  """A BatchNorm module as the model calls it."""

  path: tuple[str, ...]
  epsilon: float
  use_scale: bool
  use_bias: bool
  axis: int  # normalized feature axis, counted from the end (-1: last)
  # Its statistics are ``mean``/``var`` (and ``scale``/``bias``) of the
  # module at ``path``, as ``bn_out_scales`` and ``folding`` read them.
  named: bool = True
  # One module call computes exactly the normalization (it can be skipped).
  exact: bool = True


class NormPath(str):
  """A BatchNorm path ('/'-joined) that carries its module's ``epsilon``:
  the values of ``Pairing.pairs``, read by ``bn_out_scales`` and ``fold``."""

  epsilon: float

  def __new__(cls, path: str, epsilon: float):
    out = super().__new__(cls, path)
    out.epsilon = float(epsilon)
    return out

  def __reduce__(self):
    return (NormPath, (str(self), self.epsilon))


@dataclasses.dataclass(frozen=True)
class Layer:
  """One kernel and the layer that uses it (shapes per example)."""

  path: tuple[str, ...]  # the module's path; the kernel is path + ("kernel",)
  kernel_shape: tuple[int, ...]
  kind: str  # one of KINDS
  rows: tuple[int, ...]  # leaf axes the op contracts
  cols: tuple[int, ...]  # leaf axes of the output features
  stacked: tuple[int, ...]  # leaf axes nn.scan slices
  calls: int  # executions per forward pass
  macs: int  # per example, all calls
  out_positions: int  # output positions per example, all calls
  input_shape: tuple[int, ...]  # the module's, first call, without the batch
  output_shape: tuple[int, ...]
  module: Any  # the module as called (bound during the trace)
  rankable: bool
  reason: str | None  # why not rankable
  consumers: tuple[tuple[str, ...], ...]  # per call: who reads its output
  groups: int = 1
  channel_last: bool = True  # its output features are its output's last axis
  role: str = ""  # one of ROLES: what the layer does in the model

  @property
  def kernel(self) -> tuple[str, ...]:
    return self.path + ("kernel",)

  @property
  def name(self) -> str:
    return "/".join(self.kernel)

  @property
  def kernel_shapes(self) -> tuple[tuple[int, ...], ...]:
    return (self.kernel_shape,)

  @property
  def weights(self) -> int:
    """Weights in one (unstacked) kernel."""
    return math.prod(self.kernel_shape[a] for a in self.rows + self.cols)

  @property
  def positions(self) -> int:
    """MACs per kernel weight: ``macs = positions · weights``."""
    return self.macs // self.weights

  def to_json(self) -> dict:
    return {"kernel": self.name, "kind": self.kind,
            "shape": list(self.kernel_shape), "calls": self.calls,
            "macs": self.macs, "rankable": self.rankable,
            **({"reason": self.reason} if self.reason else {})}


@dataclasses.dataclass(frozen=True)
class LayerTable:
  """Every kernel of a model (``layers``, in call order), its BatchNorm
  pairs and folds (see the module docstring)."""

  layers: tuple[Layer, ...]
  norms: dict  # {BatchNorm path tuple: Norm}
  pairs: dict  # {kernel name: NormPath}
  unpaired: dict  # {kernel name: why no BatchNorm rectifies it}
  folds: dict  # {kernel name: BatchNorm path}: folded into the layer
  kept_norms: dict  # {BatchNorm name: why it stays in the folded graph}
  # Named axes of cross-device statistics (pmap-era BatchNorm(axis_name=)).
  axis_names: frozenset = frozenset()

  def layer(self, kernel) -> Layer:
    key = _trees.path_tuple(kernel)
    for layer in self.layers:
      if layer.kernel == key:
        return layer
    raise KeyError(_trees.path_str(key))

  def get(self, kernel) -> Layer | None:
    try:
      return self.layer(kernel)
    except KeyError:
      return None

  def selected(self, kinds=("conv", "transposed_conv")) -> list[Layer]:
    """The rankable layers of ``kinds``."""
    return [l for l in self.layers if l.rankable and l.kind in kinds]

  def skipped(self, kinds=("conv", "transposed_conv")) -> list[Layer]:
    """Layers of ``kinds`` (or of no factorizable kind) left unranked."""
    return [l for l in self.layers if not l.rankable and (
        l.kind in kinds or l.kind in ("grouped_conv", "other"))]

  @property
  def dense_macs(self) -> int:
    return sum(l.macs for l in self.layers)


_CONTRACTIONS = frozenset({"conv_general_dilated", "dot_general"})


def _uses(graph: _Graph, node, axes, stacked=(), act=frozenset(), via=()):
  """(op, operand index, leaf axes of the operand, stacked leaf axes, via)
  for each op that reads the kernel at ``node`` (axes: the leaf axis of each
  axis of the value at ``node``). A kernel computed on before its
  contraction by ops that read no activation (``act``: the nodes that depend
  on the model's input), e.g. weight standardization, is followed to that
  contraction; ``via`` names those ops (and ``axes`` is None)."""
  for op, k in graph.users.get(node, ()):
    if via or op.prim in _CONTRACTIONS:
      yield op, k, (None if via else axes), stacked, via
    elif op.prim in _PASS:
      yield from _uses(graph, op.outs[0], axes, stacked, act)
    elif op.prim == "transpose":
      perm = op.params["permutation"]
      yield from _uses(graph, op.outs[0], tuple(axes[p] for p in perm),
                       stacked, act)
    elif op.prim == "scan_slice":
      yield from _uses(graph, op.outs[0], axes[1:], stacked + axes[:1], act)
    elif op.outs and not any(o in act for o in op.outs):
      yield from _transformed(graph, op, stacked, act, (op.prim,))
    else:
      yield op, k, axes, stacked, via


def _transformed(graph, op, stacked, act, via, seen=None):
  """``_uses`` past ``op``, an op on the kernel alone: the first op on each
  path that reads an activation or contracts, once each."""
  seen = set() if seen is None else seen
  for node in op.outs:
    for user, k in graph.users.get(node, ()):
      if id(user) in seen:
        continue
      seen.add(id(user))
      if user.prim in _CONTRACTIONS or any(o in act for o in user.outs) or (
          not user.outs):
        yield user, k, None, stacked, via
      else:
        yield from _transformed(graph, user, stacked, act,
                                via + (user.prim,), seen)


@dataclasses.dataclass(frozen=True)
class _Use:
  kind: str
  rows: tuple[int, ...]
  cols: tuple[int, ...]
  macs: int
  out_positions: int
  channel_last: bool  # output features on the op output's last axis
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  groups: int = 1
  reason: str | None = None


def _conv_use(op: _Op, k: int, axes) -> _Use:
  dn = op.params["dimension_numbers"]
  lhs, rhs, out = op.in_avals[0], op.in_avals[1], op.out_avals[0]
  o_dim, i_dim = dn.rhs_spec[0], dn.rhs_spec[1]
  groups = op.params["feature_group_count"] * op.params["batch_group_count"]
  taps = math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
  n = rhs.shape[o_dim]
  transposed = any(d != 1 for d in op.params["lhs_dilation"])
  if transposed:  # input size × taps × c_out/groups: no inserted zeros
    macs = math.prod(lhs.shape) * taps * n // groups
  else:
    macs = math.prod(out.shape) * taps * rhs.shape[i_dim]
  kind = ("grouped_conv" if groups != 1 else
          "transposed_conv" if transposed else "conv")
  if k != 1:
    return _Use("other", (), (), macs * op.times, 0, False, (), (),
                reason="used as a convolution's input, not its kernel")
  return _Use(
      kind, tuple(axes[d] for d in (i_dim,) + tuple(dn.rhs_spec[2:])),
      (axes[o_dim],), macs * op.times, math.prod(out.shape) // n * op.times,
      dn.out_spec[1] == len(out.shape) - 1, tuple(lhs.shape[1:]),
      tuple(out.shape[1:]), groups,
      reason=(f"grouped convolution ({groups} groups): no two-layer"
              " factorized form" if groups != 1 else None))


def _dot_use(op: _Op, k: int, axes) -> _Use:
  (lc, rc), (lb, rb) = op.params["dimension_numbers"]
  contract, batch = (lc, lb) if k == 0 else (rc, rb)
  kernel, other = op.in_avals[k], op.in_avals[1 - k]
  out = op.out_avals[0]
  depth = math.prod(kernel.shape[d] for d in contract)
  if batch:  # e.g. nn.ConvLocal: one kernel per output position
    return _Use("other", (), (), math.prod(out.shape) * depth * op.times, 0,
                False, (), (), reason="a batched matrix product uses it")
  free = [d for d in range(len(kernel.shape)) if d not in contract]
  other_free = len(other.shape) - len(lc if k == 1 else rc) - len(batch)
  n = math.prod(kernel.shape[d] for d in free)
  return _Use(
      "dense", tuple(axes[d] for d in contract), tuple(axes[d] for d in free),
      math.prod(out.shape) * depth * op.times,
      math.prod(out.shape) // max(n, 1) * op.times,
      len(free) == 1 and (k == 1 or other_free == 0),
      tuple(other.shape[1:]), tuple(out.shape[1:]))


def _use(op, k, axes, via=()) -> _Use:
  if via:
    steps = ", ".join(dict.fromkeys(via))
    if op.prim not in _CONTRACTIONS:
      return _Use("other", (), (), 0, 0, False, (), (),
                  reason=f"used by {op.prim} after {steps}")
    use = _use(op, k, tuple(range(len(op.in_avals[k].shape))))
    return dataclasses.replace(use, rows=(), cols=(), reason=(
        f"its kernel is computed on before use ({steps}): e.g. weight"
        " standardization or normalization, which has no exact two-layer"
        " form"))
  if op.prim == "conv_general_dilated":
    return _conv_use(op, k, axes)
  if op.prim == "dot_general":
    return _dot_use(op, k, axes)
  return _Use("other", (), (), 0, 0, False, (), (),
              reason=f"used by {op.prim} (not a convolution or matrix"
                     " product)")


def _rankable(kernel_shape, use: _Use, stacked, module) -> str | None:
  """Why a kernel with this use cannot be ranked, or None."""
  ndim = len(kernel_shape)
  if use.reason:
    return use.reason
  if stacked:
    return ("stacked by nn.scan (one kernel per iteration): not factorized"
            " here")
  if use.cols != (ndim - 1,) or tuple(sorted(use.rows)) != tuple(
      range(ndim - 1)):
    return (f"its output features are on kernel axes {list(use.cols)}, not"
            " the last axis alone (e.g. ConvTranspose(transpose_kernel=True)"
            " or DenseGeneral with several output axes): not factorized"
            " here")
  if isinstance(module, nnx.Module):
    return nnx_models.split_reason(module)
  if type(module) not in factorized.SPLITTABLE:
    return (f"its module ({type(module).__name__}) is not an nn.Conv,"
            " nn.ConvTranspose, nn.Dense or nn.DenseGeneral, whose call the"
            " compact model clones with r outputs: not factorized here")
  return None


def _consumer_name(op: _Op, norm_at: dict) -> str:
  if id(op) in norm_at:
    return f"BatchNorm {'/'.join(norm_at[id(op)])}"
  if op.prim == "lrpet_tag":
    return f"module {'/'.join(op.params['label'][1])}"
  return op.prim


def _owns_stats(module) -> bool:
  """The module holds non-trainable variables of its own (BatchNorm-like
  statistics), not only in its submodules."""
  if isinstance(module, nnx.Module):
    return any(isinstance(v, nnx.BatchStat) for v in vars(module).values())
  return any(not hasattr(v, "items")
             for name, tree in module.variables.items() if name != "params"
             for v in tree.values())


def _owns_kernel(module) -> bool:
  if isinstance(module, nnx.Module):
    return isinstance(getattr(module, "kernel", None), nnx.Param)
  return "kernel" in module.variables.get("params", {})


def _axis_names(module) -> set:
  """The named axes a module reduces its statistics over (pmap-era
  ``BatchNorm(axis_name=...)``)."""
  name = getattr(module, "axis_name", None)
  if name is None:
    return set()
  return set(name) if isinstance(name, (tuple, list)) else {name}


def _trace(apply_fn, variables, input_shape):
  """(graph, {variable path: node}, {module path: (first module seen, its
  input shape without the batch)}, axis names of cross-device statistics)."""
  modules, axis_names = {}, set()

  def on_call(module, path, call, args, kwargs):
    if path is None:  # an NNX module outside the model's graph as given
      if _owns_stats(module) or _owns_kernel(module):
        raise ValueError(
            f"model: an nnx.{type(module).__name__} ran as a module the layer"
            " table cannot name (re-created by an NNX transform such as"
            " nnx.remat or nnx.scan, or made during the call): its pairs and"
            " MACs would be wrong; call such layers outside NNX transforms")
      return call(*args, **kwargs)
    if _owns_stats(module) and args and hasattr(args[0], "ndim"):
      axis_names.update(_axis_names(module))
      args = (_tag_p.bind(args[0], label=("stats_in", path)),) + tuple(
          args[1:])
      out = call(*args, **kwargs)
      return (_tag_p.bind(out, label=("stats_out", path))
              if hasattr(out, "ndim") else out)
    out = call(*args, **kwargs)
    if _owns_kernel(module) and hasattr(out, "ndim"):
      modules.setdefault(path, (module, tuple(getattr(
          args[0], "shape", (0,))[1:]) if args else ()))
      out = _tag_p.bind(out, label=("out", path))
    return out

  def intercept(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    return on_call(context.module, tuple(context.module.path), next_fun,
                   args, kwargs)

  with nn.intercept_methods(intercept), nnx_models.intercept_calls(on_call):
    try:
      closed = jax.make_jaxpr(lambda v, x: apply_fn(v, x))(
          variables, example(input_shape))
    except jax.errors.JAXTypeError as e:  # e.g. .item() on a traced value
      first = str(e).strip().splitlines()[0]
      raise ValueError(
          f"model: its forward pass cannot be traced by jax.jit, so it cannot"
          f" be compiled or analysed ({type(e).__name__}: {first})") from None
  graph = _Graph()
  jaxpr = closed.jaxpr
  env = {v: graph.new() for v in jaxpr.invars + jaxpr.constvars}
  graph.input_node = env[jaxpr.invars[-1]]
  graph.walk(jaxpr, env, 1)
  graph.add("output", {}, [None if isinstance(v, jcore.Literal) else env[v]
                           for v in jaxpr.outvars],
            [v.aval for v in jaxpr.outvars], [], 1)
  leaves = [_trees.path_tuple(p) for p, _ in
            jax.tree_util.tree_leaves_with_path(variables)]
  nodes = dict(zip(leaves, (env[v] for v in jaxpr.invars)))
  return graph, nodes, modules, frozenset(axis_names)


def _layer(graph, node, kernel_path, shape, module, outs, act, live,
           norm_at) -> Layer:
  """The table row of the kernel at ``node``; ``outs``: its module's tagged
  output ops in order; ``act``: the nodes that depend on the model's input;
  ``live``: the ids of the ops whose results reach the model's output."""
  found = {}
  for op, k, axes, stacked, via in _uses(graph, node,
                                         tuple(range(len(shape))), (), act):
    found.setdefault(id(op), (op, _use(op, k, axes, via), stacked))
  path = kernel_path[:-1]
  consumers = tuple(tuple(_consumer_name(op, norm_at) for op, _ in
                          graph.users.get(t.outs[0], ())) for t in outs)
  calls = sum(t.times for t in outs)
  uses = [(u, s) for op, u, s in found.values() if id(op) in live]
  if not uses:
    why = ("its output never reaches the model's output" if found else
           "no operation of the forward pass uses it")
    return Layer(path, shape, "unused", (), (), (), 0, 0, 0, (), (), module,
                 False, why, consumers)
  first, stacked = uses[0]
  shapes = {(u.kind, u.rows, u.cols, s) for u, s in uses}
  reason = None
  if len(shapes) > 1:
    reason = next((u.reason for u, _ in uses if u.reason),
                  "used by operations that view it differently")
  else:
    reason = _rankable(shape, first, stacked, module)
  kind = first.kind if len(shapes) == 1 else "other"
  return Layer(
      path, shape, kind, first.rows, first.cols, stacked,
      calls or sum(1 for _ in uses), sum(u.macs for u, _ in uses),
      sum(u.out_positions for u, _ in uses), first.input_shape,
      first.output_shape, module, reason is None, reason, consumers,
      first.groups, first.channel_last)


def _reach(graph: _Graph, starts) -> set:
  """The nodes computed from ``starts`` (``starts`` included)."""
  seen, stack = set(), [n for n in starts if n is not None]
  while stack:
    node = stack.pop()
    if node in seen:
      continue
    seen.add(node)
    for op, _ in graph.users.get(node, ()):
      stack.extend(op.outs)
  return seen


def _live(graph: _Graph) -> set:
  """Ids of the ops whose results reach the model's output."""
  live, stack = set(), [op for op in graph.ops if op.prim == "output"]
  while stack:
    op = stack.pop()
    if id(op) in live:
      continue
    live.add(id(op))
    stack.extend(graph.producer[n] for n in op.ins
                 if n is not None and n in graph.producer)
  return live


# ------------------------------------------------- normalization, by math

_SHAPING = frozenset({"broadcast_in_dim", "reshape", "convert_element_type",
                      "copy", "squeeze", "expand_dims"})


@dataclasses.dataclass
class _NormCall:
  path: tuple[str, ...]
  norm: Norm
  x: int  # the node it normalizes
  sub: _Op  # x − mean
  fed: _Op  # the first op that reads x on the way (what a layer's output feeds)


def _leaf(graph, node, leaf_at):
  """The variable leaf the value at ``node`` is, up to broadcasts, reshapes
  and casts, or None."""
  while node is not None and node not in leaf_at:
    op = graph.producer.get(node)
    if op is None or op.prim not in _SHAPING:
      return None
    node = op.ins[0]
  return leaf_at.get(node)


def _factors(graph, node, act) -> list:
  """The factors of a product computed without activations."""
  op = graph.producer.get(node)
  if op is not None and op.prim == "mul" and all(
      n is not None and n not in act for n in op.ins):
    return _factors(graph, op.ins[0], act) + _factors(graph, op.ins[1], act)
  return [node]


def _var_plus_eps(graph, node, leaf_at, fn):
  """(var leaf, ε) if ``node`` is fn(var + ε), ε a literal, else None
  (broadcasts and reshapes allowed on either side of fn)."""
  op = graph.producer.get(node)
  while op is not None and op.prim in _SHAPING:
    op = graph.producer.get(op.ins[0])
  if op is None or op.prim != fn:
    return None
  add = graph.producer.get(op.ins[0])
  if add is None or add.prim != "add" or len(add.ins) != 2:
    return None
  for k in (0, 1):
    eps = add.literals[1 - k] if len(add.literals) == 2 else None
    var = _leaf(graph, add.ins[k], leaf_at)
    if eps is not None and var is not None and var[0] != "params":
      return var, float(np.format_float_positional(np.float32(eps),
                                                   unique=True))
  return None


def _norm_at(graph, sub, leaf_at, shapes, act):
  """The ``_NormCall`` whose x − mean is ``sub``, or None: a per-channel
  (x − mean)·rsqrt(var + ε) [·scale] [+ bias] (or ÷ sqrt(var + ε)) with mean
  and var non-trainable variables and scale, bias trainable ones, whatever
  module computes it."""
  x, m = sub.ins
  if x is None or m is None or x not in act or m in act:
    return None
  mean = _leaf(graph, m, leaf_at)
  if mean is None or mean[0] == "params" or len(shapes[mean]) != 1:
    return None
  c = shapes[mean][0]
  found = {"mean": mean}
  chain = sub.outs[0]
  while True:
    users = graph.users.get(chain, ())
    if len(users) != 1 or len(users[0][0].ins) != 2:
      break
    op, k = users[0]
    other = op.ins[1 - k]
    if other is None or other in act:
      break
    if op.prim == "mul" or (op.prim == "div" and k == 0):
      fn = "rsqrt" if op.prim == "mul" else "sqrt"
      parts = []
      for f in _factors(graph, other, act):
        ve = _var_plus_eps(graph, f, leaf_at, fn)
        leaf = _leaf(graph, f, leaf_at)
        if ve and "var" not in found:
          parts.append(("var", ve))
        elif (op.prim == "mul" and leaf and leaf[0] == "params"
              and "scale" not in found):
          parts.append(("scale", leaf))
        else:
          parts = None
          break
      if not parts:
        break
      found.update(parts)
    elif op.prim == "add" and "var" in found and "bias" not in found:
      leaf = _leaf(graph, other, leaf_at)
      if leaf is None or leaf[0] != "params":
        break
      found["bias"] = leaf
    else:
      break
    chain = op.outs[0]
  if "var" not in found:
    return None
  (var, eps) = found["var"]
  leaves = [mean, var] + [found[n] for n in ("scale", "bias") if n in found]
  if any(shapes[l] != (c,) for l in leaves):
    return None
  path = mean[1:-1]
  named = (mean[-1] == "mean" and var == mean[:-1] + ("var",) and all(
      found[n] == ("params",) + path + (n,) for n in ("scale", "bias")
      if n in found))
  # x as the layer before produced it: back through casts and the
  # normalizing module's own input tag
  fed, entered = sub, False
  while True:
    op = graph.producer.get(x)
    if op is None or not (op.prim in ("convert_element_type", "copy") or (
        op.prim == "lrpet_tag" and op.params["label"][0] == "stats_in")):
      break
    entered |= op.prim == "lrpet_tag" and op.params["label"][1] == path
    fed, x = op, op.ins[0]
  exact = entered and any(op.params["label"] == ("stats_out", path)
                          for op, _ in graph.users.get(chain, ())
                          if op.prim == "lrpet_tag")
  dims = [d for d, n in enumerate(sub.in_avals[1].shape) if n == c]
  axis = (dims[-1] - len(sub.in_avals[1].shape)) if c != 1 and dims else -1
  norm = Norm(path, eps, "scale" in found, "bias" in found, axis, named,
              exact)
  return _NormCall(path, norm, x, sub, fed)


def _norm_calls(graph, leaf_at, shapes, act) -> list:
  return [call for call in (_norm_at(graph, op, leaf_at, shapes, act)
                            for op in graph.ops if op.prim == "sub")
          if call is not None]


def _link(layer: Layer, norm: Norm) -> str | None:
  """Why ``norm``, which reads ``layer``'s output, does not act on one
  output feature of ``layer`` per channel, or None."""
  if not norm.named:
    return (f"its normalization's variables are not the mean and var"
            f" (scale, bias) of one module {'/'.join(norm.path)}: not"
            " rectified")
  if len(layer.cols) != 1 or not layer.channel_last:
    return "its output features are not its output's last axis"
  if norm.axis != -1:
    return (f"its BatchNorm {'/'.join(norm.path)} normalizes axis"
            f" {norm.axis}, not the output features")
  return None


def _nnx_or_refused(apply_fn, variables):
  """(apply_fn, variables) of an ``nnx.Module`` given as ``apply_fn`` (its
  own variables); a one-line ValueError for variables whose kernels are not
  in a ``params`` collection (they would be analysed as no layers)."""
  if isinstance(apply_fn, nnx.Module):
    model = nnx_models.NnxModel.of(apply_fn)
    return (lambda v, x: model.apply(v, x)), nnx_models.variables(apply_fn)
  stray = [k for k in _trees.leaves_by_path(variables)
           if k[-1] == "kernel" and k[0] != "params"]
  if stray:
    raise ValueError(
        f"variables: a kernel outside a 'params' collection"
        f" ({'/'.join(stray[0])}): pass Linen variables ({{'params': ...}});"
        " for a Flax NNX model pass the nnx.Module itself, or"
        " nnx_models.NnxModel and its variables")
  return apply_fn, variables


def build(apply_fn: Callable, variables: Any, input_shape) -> LayerTable:
  """The layer table of the model ``apply_fn`` runs (module docstring);
  ``apply_fn`` may be an ``nnx.Module`` (``variables``: ignored, its own)."""
  apply_fn, variables = _nnx_or_refused(apply_fn, variables)
  graph, nodes, modules, axis_names = _trace(apply_fn, variables,
                                             input_shape)
  shapes = {_trees.path_tuple(p): tuple(x.shape) for p, x in
            jax.tree_util.tree_leaves_with_path(variables)}
  act = _reach(graph, [graph.input_node])
  live = _live(graph)
  leaf_at = {node: path for path, node in nodes.items()}
  calls = [c for c in _norm_calls(graph, leaf_at, shapes, act)
           if id(c.sub) in live]
  norms = {}
  for c in calls:
    norms.setdefault(c.path, c.norm)
  norm_at = {id(c.fed): c.path for c in calls}
  tags = defaultdict(list)  # (kind, module path) → tag ops in order
  for op in graph.ops:
    if op.prim == "lrpet_tag":
      tags[op.params["label"]].append(op)
  order = {}
  layers = []
  for path, node in nodes.items():
    if path[0] != "params" or path[-1] != "kernel":
      continue
    kernel = path[1:]
    module, module_input = modules.get(kernel[:-1], (None, None))
    shape = shapes[path]
    layer = _layer(graph, node, kernel, shape, module,
                   tags.get(("out", kernel[:-1]), []), act, live, norm_at)
    if module_input is not None:  # the op's input may be padded (CIRCULAR)
      layer = dataclasses.replace(layer, input_shape=module_input)
    layers.append(layer)
    order[kernel] = _first_use(graph, node, len(shape), act)
  layers.sort(key=lambda l: order[l.kernel])
  outs = {l.kernel: [t.outs[0] for t in tags.get(("out", l.path), [])]
          for l in layers}
  reads = {}  # input node of a BatchNorm call → that BatchNorm
  norm_inputs = defaultdict(list)  # BatchNorm path → its calls
  for c in calls:
    norm_inputs[c.path].append(c)
    reads.setdefault(c.x, c.path)
  pairs, unpaired, links = {}, {}, {}
  for l in layers:
    bn = reads.get(outs[l.kernel][0]) if outs[l.kernel] else None
    if bn is None:
      unpaired[l.name] = "feeds no BatchNorm"
      continue
    why = _link(l, norms[bn])
    links[l.name] = (bn, why)
    if why is None and l.cols != (len(l.kernel_shape) - 1,):
      why = ("its output features are not the kernel's last axis (BatchNorm"
             " folded, not used for rectification)")
    if why:
      unpaired[l.name] = why
    else:
      pairs[l.name] = NormPath("/".join(bn), norms[bn].epsilon)
  feeds = {node: l for l in layers for node in outs[l.kernel]}
  folds, kept = _folds(graph, norm_inputs, norms, feeds, links, norm_at)
  layer_ops = {l.kernel: [(op, k) for op, k, _, _, _ in _uses(
      graph, nodes[("params",) + l.kernel], tuple(range(len(l.kernel_shape))),
      (), act)] for l in layers}
  every_op = {id(op) for ops in layer_ops.values() for op, _ in ops}
  layers = [dataclasses.replace(l, role=_role(graph, l, layer_ops[l.kernel],
                                              every_op)) for l in layers]
  return LayerTable(tuple(layers), norms, pairs, unpaired, folds, kept,
                    axis_names)


def _batched(op: _Op) -> bool:
  return op.prim == "dot_general" and bool(
      op.params["dimension_numbers"][1][0])


def _meets(graph: _Graph, starts, layer_ops: set, forward: bool) -> set:
  """What the values at ``starts`` reach (``forward``: their users; else
  what they are computed from) before any layer's op: "batched" (a batched
  matrix product of activations), "output", "input" (the model's input)."""
  found, seen, stack = set(), set(), list(starts)
  while stack:
    node = stack.pop()
    if node is None or node in seen:
      continue
    seen.add(node)
    if forward:
      ops = [op for op, _ in graph.users.get(node, ())]
    else:
      if node == graph.input_node:
        found.add("input")
      ops = [graph.producer[node]] if node in graph.producer else []
    for op in ops:
      if id(op) in layer_ops:
        continue
      if _batched(op):
        found.add("batched")
      if op.prim == "output":
        found.add("output")
      stack.extend(op.outs if forward else op.ins)
  return found


def _role(graph: _Graph, layer: Layer, ops: list, layer_ops: set) -> str:
  """The layer's ``ROLES`` entry (see there); ``ops``: (op, kernel operand
  index) of each use of its kernel; ``layer_ops``: ids of every layer's."""
  if layer.kind in CONV_KINDS:
    return "conv"
  if layer.kind != "dense" or not ops:
    return "other"
  after = _meets(graph, [n for op, _ in ops for n in op.outs], layer_ops,
                 True)
  before = _meets(graph, [op.ins[1 - k] for op, k in ops], layer_ops, False)
  if "batched" in after or "batched" in before:
    return "attention"
  if "output" in after:
    return "classifier"
  if "input" in before:
    return "embedding"
  return "mlp"


def _first_use(graph, node, ndim, act) -> int:
  """Position of the first op that reads the kernel (call order)."""
  index = {id(op): i for i, op in enumerate(graph.ops)}
  found = [index[id(op)] for op, _, _, _, _ in _uses(
      graph, node, tuple(range(ndim)), (), act)]
  return min(found, default=len(graph.ops))


def _folds(graph, norm_inputs, norms, feeds, links, norm_at):
  """({kernel name: NormPath} folded, {BatchNorm name: why it is kept})."""
  folds, kept = {}, {}
  for bn, calls in norm_inputs.items():
    name = "/".join(bn)
    fed, why = [], None
    if not norms[bn].named:
      why = ("its statistics are not the mean/var (scale/bias) of the module"
             f" {name}")
    elif not norms[bn].exact:
      why = "no module call of its own computes exactly the normalization"
    for call in calls:
      if why:
        break
      node = call.x
      layer = feeds.get(node)
      if layer is None:
        why = "its input is not a layer's output"
      elif links.get(layer.name, (None,))[0] != bn:
        why = (f"{layer.name}'s first call feeds another BatchNorm")
      elif links[layer.name][1]:
        why = links[layer.name][1]
      elif layer.calls != 1:
        why = f"{layer.name} runs {layer.calls} times"
      elif len(graph.users.get(node, ())) != 1:
        others = [_consumer_name(op, norm_at) for op, _ in graph.users[node]]
        why = (f"{layer.name}'s output is also read by"
               f" {', '.join(o for o in others if o != 'BatchNorm ' + name)}")
      else:
        fed.append(layer)
    if why:
      kept[name] = why
    else:
      folds.update({l.name: NormPath(name, norms[bn].epsilon) for l in fed})
  return folds, kept
