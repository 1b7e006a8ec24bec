"""The pipeline's pieces for experiments and benchmarks: the public API.

An experiment that needs more than ``train.train_and_evaluate`` (gradient
norms around each projection, timed training calls) builds the method a
config describes, and drives its compiled step itself:

    exp = experiment.from_config(config, input_shape=(32, 32, 3),
                                 steps_per_epoch=8)
    state = exp.initial_state()
    step = exp.step_fn(project=exp.method.projects(0), grad_norms=True)
    state, window, aux = step(state, experiment.empty_window(), images,
                              labels)

``images`` are uint8 (B, H, W, 3); the step augments them as training does,
keyed by (seed, step). Everything else of ``lrpet_jax.pipeline`` is internal
and may change.
"""

import dataclasses

import jax

from lrpet_jax.data import datasets
from lrpet_jax.pipeline import methods
from lrpet_jax.pipeline import steps
from lrpet_jax.pipeline import setup

empty_window = steps.empty_window
TrainState = steps.TrainState


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One config's method (``method.model``, ``method.tx``, ``method.setting``:
  ranks, pairs, layer table; ``method.projects(step)``) and seed."""

  method: methods.Method
  input_shape: tuple[int, ...]
  seed: int
  normalization: datasets.Normalization

  def initial_state(self) -> steps.TrainState:
    """Step 0 as the pipeline starts it (a random init at ``seed``, or the
    method's own starting point)."""
    return setup.initial_state(self.method.model, self.method.tx, self.seed,
                               self.input_shape,
                               self.method.initial_variables())

  def step_fn(self, project: bool | None = False, grad_norms: bool = False):
    """The jitted training step ``(state, window, images, labels) -> (state,
    window, aux)`` (``steps.make_step_body``); ``project`` as
    ``method.projects`` answers for the step."""
    return jax.jit(steps.make_step_body(
        self.method, self.seed, self.normalization, project=project,
        grad_norms=grad_norms))

  def stepper(self, source) -> steps.Stepper:
    """The training loop's compiled calls over ``source`` (a
    ``data.inputs`` adapter): ``stepper(state, window, start, length,
    project)``."""
    return steps.Stepper(self.method, source, self.seed, self.normalization)

  def evaluate_fn(self):
    """``evaluate(variables, batches) -> {"top1", "top5"}``."""
    return steps.make_eval_fn(self.method.model, self.normalization)


def from_config(config, *, input_shape, steps_per_epoch: int,
                method: str | None = None,
                normalization: datasets.Normalization | None = None
                ) -> Experiment:
  """The experiment of ``config`` (a ``configs/cifar.py``-style ConfigDict)
  on data of ``input_shape`` with ``steps_per_epoch``; ``method`` overrides
  ``config.method``; ``normalization``: the input mean and std (default the
  config's, or its named data set's constants). Bad values raise ValueError
  (one line)."""
  setting = setup.make_setting(config, input_shape, steps_per_epoch)
  if normalization is None and config.mean:
    normalization = datasets.Normalization(tuple(config.mean),
                                           tuple(config.std))
  normalization = normalization or datasets.named_normalization(config.dataset)
  if normalization is None:
    raise ValueError(f"mean: {config.dataset} has no constants; set the"
                     " config's mean and std or pass normalization=")
  return Experiment(
      method=methods.method_for(method or config.method, setting),
      input_shape=tuple(input_shape), seed=config.seed,
      normalization=normalization)
