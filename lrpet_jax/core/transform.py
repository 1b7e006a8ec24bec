"""LRPET as Optax gradient transformations.

``low_rank_projection`` goes last in a chain: given the updates ``u`` the chain
has produced so far and the pre-step ``params`` (``optax.chain`` hands every
member the pre-step params), on every ``every``-th call it returns

    u' = P(params + u) − params

for each leaf with a rank (P as in ``projection``), so that
``optax.apply_updates(params, u') == P(params + u)``; other calls and other
leaves pass ``u`` through. ``lrpet`` is the paper's full optimizer: PyTorch-style
SGD followed by the projection.
"""

import dataclasses
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrpet_jax.core import _trees
from lrpet_jax.core import projection


def _check_every(every: Any) -> int:
  if (isinstance(every, bool) or not isinstance(every, numbers.Integral)
      or every < 1):
    raise ValueError(f"every must be an int >= 1, got {every!r}")
  return int(every)


@dataclasses.dataclass(frozen=True)
class ProjectionSchedule:
  """Which updates project: the ``every``-th, 2·``every``-th, …

  Updates are counted from 0 (the optimizer's counter, the training step
  before it is taken), so update ``step`` projects iff
  ``(step + 1) % every == 0``: with ``every`` = steps per epoch, the last
  update of each epoch. The one definition used by ``low_rank_projection``'s
  counter, the training loop's static ``project=`` and the experiments.
  """

  every: int

  def __post_init__(self):
    _check_every(self.every)

  def projects(self, step):
    """Whether update ``step`` projects (a Python int or a traced int32)."""
    return (step + 1) % self.every == 0

  def next_projection(self, step: int) -> int:
    """The first projecting update at or after ``step``."""
    return (step // self.every + 1) * self.every - 1


def _check_rank_values(ranks: Any) -> None:
  if _trees.is_rank_map(ranks):
    if not ranks:  # a Ranks: its values are checked ints >= 1
      raise ValueError("ranks selects no leaf: the Ranks are empty")
    return
  leaves = jax.tree.leaves(ranks)
  if not leaves:
    raise ValueError("ranks selects no leaf: every leaf is None")
  for path, r in jax.tree_util.tree_leaves_with_path(ranks):
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
      raise ValueError(
          f"ranks[{_trees.path_str(path)}] must be an int >= 1 or None,"
          f" got {r!r}")


class ProjectionState(NamedTuple):
  """``energy_kept``: (L,) float32, for each ranked leaf (``jax.tree.leaves``
  order of the params) the fraction Σ_{i<r} s_i²/Σ s_i² the last projection
  kept before energy transfer; ones before the first projection; NaN where
  the kernel had a non-finite entry and was left unprojected."""

  energy_kept: jax.Array


def project_updates(ranks: Any, *, energy_transfer: bool = True,
                    residual_scale: float = 0.0, eps: float = 1e-5,
                    min_sigma: float = 1e-4
                    ) -> optax.GradientTransformationExtraArgs:
  """Projects on every call (the unconditional inner of ``low_rank_projection``).

  Extra keyword argument at update time: ``out_scales``, a pytree like params
  with a (c_out,) BatchNorm factor at kernels that feed a BatchNorm and
  ``None`` elsewhere (``bn_out_scales``); absent → no BN rectification.
  """
  _check_rank_values(ranks)
  projection.check_hyperparameters(residual_scale, eps, min_sigma)

  def init_fn(params):
    aligned = projection.check_rank_tree(_trees.rank_tree(ranks, params),
                                         params)
    return ProjectionState(energy_kept=jnp.ones(
        (sum(r is not None for r in aligned),), jnp.float32))

  def update_fn(updates, state, params=None, *, out_scales=None, **extra_args):
    del extra_args  # Meant for other members of the chain.
    if params is None:
      raise ValueError(
          "low_rank_projection needs the params: call"
          " tx.update(updates, state, params) (it projects params + updates)")
    tree = _trees.rank_tree(ranks, params)
    stepped = optax.apply_updates(params, updates)
    projected, energy = projection.project_params(
        stepped, tree, out_scales=out_scales, energy_transfer=energy_transfer,
        residual_scale=residual_scale, eps=eps, min_sigma=min_sigma,
        return_energy=True)
    rank_leaves = _trees.align_to(tree, params, "ranks")
    treedef = jax.tree.structure(params)
    new_updates = [
        u if r is None else (new - p).astype(jnp.result_type(u))
        for u, p, new, r in zip(
            treedef.flatten_up_to(updates), jax.tree.leaves(params),
            jax.tree.leaves(projected), rank_leaves)
    ]
    del state
    return jax.tree.unflatten(treedef, new_updates), ProjectionState(
        energy.astype(jnp.float32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def low_rank_projection(ranks: Any, *, every: int,
                        energy_transfer: bool = True,
                        residual_scale: float = 0.0, eps: float = 1e-5,
                        min_sigma: float = 1e-4
                        ) -> optax.GradientTransformationExtraArgs:
  """LRPET's periodic projection, to put last in an Optax chain.

  Args:
    ranks: rank pytree (``uniform_ranks``): int at projected leaves, ``None``
      elsewhere; or a ``ranks.Ranks``. Checked against the params at
      ``init``.
    every: project on the every-th, 2·every-th, … update (calls 1..every−1
      pass the updates through). Once per epoch on CIFAR = steps per epoch.
    energy_transfer: rescale kept singular values to preserve ‖W‖_F.
    residual_scale: ρ, factor on the discarded singular values, in [0, 1].
    eps: BN-rectification constant in a / (a² + eps).
    min_sigma: layers whose largest singular value is below it are left alone.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is
    ``optax.ConditionallyTransformState`` (``.step``: int32 count of updates;
    ``.inner_state``: a ``ProjectionState`` with the last energy kept).
    Extra keyword arguments of ``update``:

    - ``out_scales=``: BN rectification factors (``bn_out_scales``).
    - ``project=``: who decides whether this update projects. ``None`` (the
      default): the counter, through ``lax.cond`` (the eigendecompositions
      run only on projection steps, but the traced step carries the
      conditional, whose predicate GPU runtimes read on the host). A Python
      ``True``/``False``: the caller, statically, so the traced step has no
      conditional (and no eigendecomposition when ``False``); a training loop
      that knows the step number compiles one step of each kind. The counter
      advances by one in every mode, so modes can be mixed and resumed.
  """
  schedule = ProjectionSchedule(every)
  inner = project_updates(
      ranks, energy_transfer=energy_transfer, residual_scale=residual_scale,
      eps=eps, min_sigma=min_sigma)
  counted = optax.conditionally_transform(inner, schedule.projects)

  def update_fn(updates, state, params=None, *, project=None, **extra_args):
    if project is None:
      return counted.update(updates, state, params, **extra_args)
    if not isinstance(project, (bool, np.bool_)):
      raise TypeError("project must be None or a Python bool (decided"
                      f" outside the traced step), got {project!r}")
    inner_state = state.inner_state
    if project:
      updates, inner_state = inner.update(updates, inner_state, params,
                                          **extra_args)
    return updates, optax.ConditionallyTransformState(
        inner_state, optax.safe_int32_increment(state.step))

  return optax.GradientTransformationExtraArgs(counted.init, update_fn)


def pytorch_sgd(learning_rate: optax.ScalarOrSchedule, *,
                momentum: float = 0.9, weight_decay: float = 1e-4,
                nesterov: bool = False) -> optax.GradientTransformation:
  """SGD as ``torch.optim.SGD``: g ← g + weight_decay·p; b ← momentum·b + g;
  step = −lr·(g + momentum·b if nesterov else b).

  Args:
    learning_rate: float or optax schedule.
    momentum: in [0, 1).
    weight_decay: ≥ 0, applied to every parameter (as the official code does).
    nesterov: Nesterov momentum (needs momentum > 0).
  """
  known = projection.known  # traced under inject_hyperparams: not checked
  if known(momentum) and not 0.0 <= momentum < 1.0:
    raise ValueError(f"momentum must be in [0, 1), got {momentum}")
  if known(weight_decay) and not weight_decay >= 0.0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  if known(momentum) and nesterov and momentum == 0.0:
    raise ValueError("nesterov=True needs momentum > 0")
  if (not callable(learning_rate) and known(learning_rate)
      and not learning_rate > 0):
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      # An array momentum (inject_hyperparams) keeps the trace at any value,
      # so that the state's structure does not depend on it.
      optax.identity() if isinstance(momentum, numbers.Number)
      and momentum == 0 else optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(learning_rate),
  )


def lrpet(learning_rate: optax.ScalarOrSchedule, ranks: Any, *, every: int,
          momentum: float = 0.9, weight_decay: float = 1e-4,
          nesterov: bool = False, energy_transfer: bool = True,
          residual_scale: float = 0.0) -> optax.GradientTransformationExtraArgs:
  """The paper's optimizer: ``pytorch_sgd``, then ``low_rank_projection``.

  Args:
    learning_rate, momentum, weight_decay, nesterov: see ``pytorch_sgd``.
    ranks, every, energy_transfer, residual_scale: see ``low_rank_projection``.

  Each ``every``-th update leaves the kernels at their ranks:

  >>> import jax, jax.numpy as jnp, numpy as np, optax
  >>> from lrpet_jax import lrpet, uniform_ranks
  >>> params = {"conv": {"kernel": jax.random.normal(jax.random.key(0),
  ...                                                (3, 3, 4, 8))}}
  >>> tx = lrpet(0.1, uniform_ranks(params, 0.5), every=1)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, state = tx.update(grads, tx.init(params), params)
  >>> kernel = optax.apply_updates(params, updates)["conv"]["kernel"]
  >>> int(np.linalg.matrix_rank(np.asarray(kernel).reshape(-1, 8), tol=1e-4))
  4
  """
  return optax.chain(
      pytorch_sgd(learning_rate, momentum=momentum, weight_decay=weight_decay,
                  nesterov=nesterov),
      low_rank_projection(
          ranks, every=every, energy_transfer=energy_transfer,
          residual_scale=residual_scale),
  )
