"""The compiled training and evaluation steps.

One training step (``make_step_body``): augmentation keyed by (seed, step),
forward and backward pass, the method's optimizer update, and the step's loss and
accuracy added to a *window* of metrics that stays on the device until the
loop reads it at a log, evaluation or checkpoint boundary. The window also
remembers the first step whose loss was not finite.

``Stepper`` compiles calls of ``length`` steps as one fixed-trip-count
``lax.scan`` (no host round-trip between the steps of a call; XLA:GPU reads
the predicate of a ``while`` or ``cond`` on the host, but not a scan's fixed
trip count). Whether a step projects is decided by the loop, statically: a
projecting call is one step with ``project=True`` that also returns the
params before the truncation; every other call runs with ``project=False``
(``None`` for methods without a projection).
"""

from typing import Any

import flax
import jax
from jax import lax
import jax.numpy as jnp
import optax

from lrpet_jax.data import augmentations as augment_lib
from lrpet_jax.data import datasets as data_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def empty_window() -> dict[str, jax.Array]:
  """Sums of ``loss`` and ``accuracy`` over ``steps`` steps; ``bad_step``
  (−1: none) is the first step (1-based) whose loss was not finite."""
  return {"loss": jnp.zeros((), jnp.float32),
          "accuracy": jnp.zeros((), jnp.float32),
          "steps": jnp.zeros((), jnp.int32),
          "bad_step": jnp.full((), -1, jnp.int32),
          "bad_loss": jnp.zeros((), jnp.float32)}


def _add_to_window(window, step, loss, accuracy):
  first_bad = (window["bad_step"] < 0) & ~jnp.isfinite(loss)
  return {"loss": window["loss"] + loss,
          "accuracy": window["accuracy"] + accuracy,
          "steps": window["steps"] + 1,
          "bad_step": jnp.where(first_bad, step, window["bad_step"]),
          "bad_loss": jnp.where(first_bad, loss, window["bad_loss"])}


def _loss(logits, labels, label_smoothing: float):
  """Mean cross-entropy, with targets (1 − s)·one-hot + s/classes."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
      label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def axis_names(method) -> frozenset:
  """The named axes the model's BatchNorms reduce over (pmap-era
  ``axis_name``), from its layer table."""
  return getattr(method.setting.table, "axis_names", frozenset())


def train_apply(model, variables, x, key, axes=()):
  """``model.apply(variables, x, train=True, mutable=["batch_stats"])`` as
  the pipeline runs it: (logits, mutated).

  Every RNG stream draws from ``key`` (the step's): "dropout" from
  fold_in(key, 1), "params" from fold_in(key, 2), and any other stream a
  Linen model asks for (``make_rng("drop_path")``) from the "params" one,
  as Flax falls back; an NNX model's streams are reseeded from these. A
  BatchNorm whose statistics are averaged over a named axis (``axes``,
  e.g. flax's ImageNet example's ``axis_name="batch"``, written for
  ``pmap``) runs under that axis of size one: the batch it sees is the
  whole global batch (jit's arrays are global), so its statistics are the
  global batch's.
  """
  rngs = {"dropout": jax.random.fold_in(key, 1),
          "params": jax.random.fold_in(key, 2)}
  fn = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                rngs=rngs)
  for name in sorted(axes):
    fn = _one_member_axis(fn, name)
  return fn(variables, x)


def _one_member_axis(fn, name):
  def run(variables, x):
    out = jax.vmap(lambda x1: fn(variables, x1), axis_name=name,
                   axis_size=1)(x[None])
    return jax.tree.map(lambda a: a[0], out)
  return run


def make_step_body(method, seed: int, normalization, device_augment=True,
                   project=None, grad_norms=False,
                   augmentation=augment_lib.Augmentation()):
  """(state, window, images uint8 (B, H, W, 3), labels (B,)) -> (state, window, aux).

  ``method`` (``methods.Method``) gives the model and the optimizer update;
  ``project`` is its static projection flag: ``None`` for methods without a
  projection, else a Python bool fixed at trace time. A projecting step's
  ``aux`` holds ``pre_projection_params``, the params after the step's SGD
  update and before its truncation (the model the authors evaluate at the
  end of each epoch), as the projection received them; ``aux`` is empty
  otherwise. With ``grad_norms``, ``aux["grad_norms"]`` is the tree of each
  gradient leaf's Frobenius norm (for experiments on gradient flow).
  ``augmentation`` (``augmentations.Augmentation``) adds to crop + flip when
  ``device_augment``; with CutMix/Mixup the loss is λ·CE(labels) +
  (1 − λ)·CE(labels[perm]), the accuracy against the labels.
  """
  model = method.model

  def body(state, window, images, labels):
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    lam = perm = None
    if device_augment:
      x, lam, perm = augment_lib.train_batch(images, key, normalization,
                                             augmentation)
    else:
      x = data_lib.normalize(images, normalization)
    y, smoothing = labels, method.setting.label_smoothing

    def loss_fn(params):
      # A model with nn.Dropout draws from (seed, step): the same masks at
      # any steps per call, and after a resume.
      logits, mutated = train_apply(
          model, {"params": params, "batch_stats": state.batch_stats}, x,
          key, axis_names(method))
      logits = logits.astype(jnp.float32)
      loss = _loss(logits, y, smoothing)
      if lam is not None:
        lam_ = lam.astype(loss.dtype)
        loss = lam_ * loss + (1 - lam_) * _loss(logits, y[perm], smoothing)
      return loss, (logits, mutated.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state, pre_projection = method.update(
        grads, state.opt_state, state.params, batch_stats, project)
    aux = {}
    if grad_norms:
      aux["grad_norms"] = jax.tree.map(jnp.linalg.norm, grads)
    if pre_projection is not None:
      aux["pre_projection_params"] = pre_projection
    new_state = TrainState(step=state.step + 1,
                           params=optax.apply_updates(state.params, updates),
                           batch_stats=batch_stats, opt_state=opt_state)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return (new_state, _add_to_window(window, new_state.step, loss, accuracy),
            aux)

  return body


class Stepper:
  """Compiled training calls, one per (projection mode, length).

  ``stepper(state, window, start, length, project)`` runs steps
  ``start .. start + length − 1`` of ``method`` on the batches of ``source``
  (an ``inputs.TrainInput``); ``project=True`` needs ``length == 1``. State
  and window are donated.
  """

  def __init__(self, method, source, seed: int, normalization):
    self._method, self._source = method, source
    self.seed, self.normalization = seed, normalization
    self._calls = {}

  def _compile(self, project, length):
    body = make_step_body(self._method, self.seed, self.normalization,
                          self._source.device_augment, project,
                          augmentation=self._source.augmentation)

    if project or length == 1:
      def call(state, window, data):
        images, labels = data
        state, window, aux = body(state, window, images[0], labels[0])
        return state, window, aux if project else {}
    else:
      def call(state, window, data):
        images, labels = data

        def one(carry, index):
          state, window = carry
          state, window, _ = body(state, window, images[index], labels[index])
          return (state, window), None
        (state, window), _ = lax.scan(one, (state, window),
                                      jnp.arange(length), unroll=_unroll())
        return state, window, {}

    return jax.jit(call, donate_argnums=(0, 1))

  def __call__(self, state, window, start: int, length: int, project):
    if project and length != 1:
      raise ValueError(f"a projecting call runs one step, not {length}")
    key = (project, length)
    if key not in self._calls:
      self._calls[key] = self._compile(project, length)
    return self._calls[key](state, window,
                            self._source.chunk_data(start, length))


def _unroll() -> int | bool:
  """How the scan of a call is unrolled on this backend.

  XLA:CPU (jaxlib 0.10.2) ran a rolled loop body 25–30× slower than the same
  step outside a loop (ResNet-20, batch 32, 2 cores: 2.0 s vs 0.07–0.085 s
  per step), so on CPU the K steps are unrolled into straight-line code. On
  accelerators the scan stays rolled: one compiled step, a fixed trip count
  and no host round-trip between steps.
  """
  return True if jax.default_backend() == "cpu" else 1


def next_call_length(steps: int, steps_per_call: int) -> int:
  """The length of the next call with ``steps`` (≥ 1) left before a boundary:
  ``steps_per_call``, or below it the largest power of two that fits (so at
  most log2(steps_per_call) + 2 lengths are ever compiled)."""
  if steps >= steps_per_call:
    return steps_per_call
  return 1 << (steps.bit_length() - 1)


def chunk_lengths(steps: int, steps_per_call: int) -> list[int]:
  """The call lengths the loop runs for ``steps`` steps between boundaries."""
  lengths = []
  while steps:
    lengths.append(next_call_length(steps, steps_per_call))
    steps -= lengths[-1]
  return lengths


@jax.jit
def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x))
                              for x in jax.tree.leaves(tree)]))


def make_eval_fn(model, normalization):
  """evaluate(variables, batches) -> {"top1", "top5"} over (images, labels)
  batches; rows labelled −1 are padding and not counted."""

  @jax.jit
  def counts(variables, images, labels):
    logits = model.apply(variables, data_lib.normalize(images, normalization),
                         train=False)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    real = labels >= 0
    return (jnp.sum((top5[:, 0] == labels) & real),
            jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) & real),
            jnp.sum(real))

  def evaluate(variables, batches):
    top1 = top5 = n = 0
    for images, labels in batches:
      c1, c5, k = counts(variables, images, labels)
      top1, top5, n = top1 + int(c1), top5 + int(c5), n + int(k)
    return {"top1": top1 / n, "top5": top5 / n}

  return evaluate
