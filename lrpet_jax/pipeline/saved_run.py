"""A run's workdir loaded back: its models, its test data, its training state.

    run = lrpet_jax.load_run("/tmp/lrpet_smoke")
    run.evaluate("compact")      # {"top1": ..., "top5": ...}: summary.json's
    run.training_state()         # the newest checkpoint, as a TrainState

Everything is read lazily from what training wrote: ``config.json`` (the
model, data and seed), ``ranks.json``, ``dense_final/``, ``compact/``,
``serving/`` and ``checkpoints/``. The test data is loaded as the run saw it
(same data set, subset and seed; a relative ``image_folder:`` path is taken
from the directory training ran in, ``commands.txt``).
"""

import dataclasses
import functools
import json
import pathlib
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from lrpet_jax.analysis import factorized
from lrpet_jax.analysis import tracing
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.data import datasets as data_lib
from lrpet_jax.data import inputs
from lrpet_jax.deploy import variables_file
from lrpet_jax.pipeline import methods
from lrpet_jax.pipeline import records
from lrpet_jax.pipeline import steps as steps_lib
from lrpet_jax.pipeline import setup


def _restore(path: pathlib.Path, abstract=None):
  if not path.is_dir():
    return None
  if isinstance(abstract, dict):  # variables: written with batch_stats,
    abstract = {"batch_stats": {}, **abstract}  # {} if the model has none
  return variables_file.restore(path, abstract)


@dataclasses.dataclass
class SavedRun:
  """A workdir's run (``load_run``); properties load on first use."""

  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  summary: dict | None  # None: the run has not finished

  @functools.cached_property
  def input_shape(self) -> tuple[int, ...]:
    if self.summary and "input_shape" in self.summary:
      return tuple(self.summary["input_shape"])
    return tuple(self.test_data[0].shape[1:])

  @functools.cached_property
  def dense_model(self):
    """The dense model, called as ``(x, train=...)``."""
    return setup.model_builder(self.config)()

  @functools.cached_property
  def ranks(self) -> Any:
    path = self.workdir / "ranks.json"
    if not path.is_file():
      return None
    abstract = tracing.abstract_variables(self.dense_model, self.input_shape)
    return ranks_lib.Ranks.read(path).tree(abstract["params"])

  @functools.cached_property
  def compact_model(self):
    """The compact model (``factorized.Factorized``), or None (a dense run)."""
    return None if self.ranks is None else factorized.Factorized(
        self.dense_model, self.ranks)

  @functools.cached_property
  def dense_variables(self):
    """The final dense model (``dense_final/``: projected, BN recomputed)."""
    return _restore(self.workdir / "dense_final",
                    tracing.abstract_variables(self.dense_model, self.input_shape))

  @functools.cached_property
  def compact_variables(self):
    if self.compact_model is None:
      return None
    return _restore(self.workdir / "compact",
                    tracing.abstract_variables(self.compact_model, self.input_shape))

  @functools.cached_property
  def serving(self):
    """``serving/model.jax_export`` deserialized: ``serving.call(pixels)``."""
    path = self.workdir / "serving" / "model.jax_export"
    return jax.export.deserialize(path.read_bytes()) if path.is_file() else None

  @functools.cached_property
  def normalization(self) -> data_lib.Normalization:
    """The input mean and std the run used (``input.json``; the
    config's, for a run older than that file)."""
    recorded = inputs.recorded_normalization(self.workdir)
    if recorded is not None:
      return recorded
    if not self.config.mean:
      raise ValueError(f"{self.workdir} records no input normalization"
                       " (input.json); the run has not started")
    return data_lib.Normalization(tuple(self.config.mean),
                                  tuple(self.config.std))

  @functools.cached_property
  def test_data(self) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, labels) of the test set as the run saw it."""
    c = self.config
    dataset = c.dataset
    if dataset.startswith("image_folder:"):
      folder = pathlib.Path(dataset.split(":", 1)[1])
      if not folder.is_absolute():
        folder = records.launch_dir(self.workdir) / folder
      dataset = f"image_folder:{folder}"
    recorded = (records.recorded_input(self.workdir) or {}).get("decoder")
    here = data_lib.decoder_of(dataset)
    if recorded and recorded != here:
      logging.warning("%s decoded its images with %s; here they are decoded"
                      " with %s, and the pixels may differ", self.workdir,
                      recorded, here)
    loaded = data_lib.load(dataset, c.data_dir, c.train_subset, c.test_subset,
                           c.seed)
    return loaded.test_images, loaded.test_labels

  def evaluate(self, which: str = "compact") -> dict[str, float]:
    """Top-1 and top-5 on ``test_data`` of the ``"dense"``, ``"compact"`` or
    ``"serving"`` model (the last from raw pixels, as shipped)."""
    if which not in ("dense", "compact", "serving"):
      raise ValueError(f"which: {which!r} is not 'dense', 'compact' or"
                       " 'serving'")
    unfinished = "" if self.summary else " (the run has not finished)"
    if which == "serving":
      if self.serving is None:
        raise ValueError(f"{self.workdir} holds no serving model{unfinished}")
      return _top_k(self.serving.call, inputs.array_batches(
          *self.test_data, self.config.eval_batch_size),
                    self.serving.in_avals[0].dtype)
    model, variables = {
        "dense": (self.dense_model, self.dense_variables),
        "compact": (self.compact_model, self.compact_variables)}[which]
    if variables is None:
      raise ValueError(f"{self.workdir} holds no {which} model{unfinished}")
    batches = inputs.array_batches(*self.test_data, self.config.eval_batch_size)
    return steps_lib.make_eval_fn(model, self.normalization)(variables,
                                                             batches)

  def training_state(self, step: int | None = None) -> steps_lib.TrainState:
    """A training checkpoint (the newest, or ``step``) as a ``TrainState``
    with the optimizer's own state types."""
    steps_per_epoch = (self.summary or {}).get("steps_per_epoch", 1)
    setting = setup.make_setting(self.config, self.input_shape,
                                 steps_per_epoch)
    method = methods.method_for(self.config.method, setting)
    abstract = jax.eval_shape(lambda: setup.initial_state(
        method.model, method.tx, self.config.seed, self.input_shape))
    folder = self.workdir / "checkpoints"
    if step is None:
      step = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    return _restore(folder / str(step) / "state", abstract)


def _top_k(logits_fn, batches, dtype) -> dict[str, float]:
  """``dtype``: the artifact's input dtype (float32 before 2026-12)."""
  top1 = top5 = n = 0
  for images, labels in batches:
    logits = np.asarray(logits_fn(np.asarray(images, dtype)))
    best = np.argsort(-logits, axis=-1)[:, :5]
    top1 += int(np.sum(best[:, 0] == labels))
    top5 += int(np.sum(np.any(best == labels[:, None], axis=-1)))
    n += len(labels)
  return {"top1": top1 / n, "top5": top5 / n}


def load_run(workdir: str | pathlib.Path) -> SavedRun:
  """The run in ``workdir`` (see the module docstring)."""
  workdir = pathlib.Path(workdir).absolute()
  saved = workdir / "config.json"
  if not saved.is_file():
    raise ValueError(f"workdir: {workdir} holds no config.json (not a run's"
                     " workdir)")
  summary = workdir / "summary.json"
  return SavedRun(
      workdir, ml_collections.ConfigDict(json.loads(saved.read_text())),
      json.loads(summary.read_text()) if summary.is_file() else None)
