"""What a training run writes about itself: metrics, progress and spectra.

- ``MetricWriter``: ``WORKDIR/metrics.jsonl`` (one JSON object per line with
  its ``step``) and TensorBoard event files under ``WORKDIR/tensorboard``.
- ``Progress``: images/s and the time left, from the wall clock between log
  boundaries (where the loop reads the device anyway).
- ``Segments``: the run's wall time over all its starts (``segments.json``).
- ``SpectraLog``: singular values of the ranked kernels at each projection.
"""

import json
import pathlib
import statistics
import time

from absl import logging
import jax
import numpy as np

from lrpet_jax.core import _trees
from lrpet_jax.core import projection


class MetricWriter:
  """metrics.jsonl plus TensorBoard event files in the workdir.

  A run resumed at ``resume_step`` first drops the rows an earlier process
  wrote after that step (they are written again), so each step keeps one row
  per kind.
  """

  def __init__(self, workdir: pathlib.Path, resume_step: int = 0,
               enabled: bool = True):
    self._enabled = enabled  # False: another process writes
    if not enabled:
      return
    import tensorboardX  # pylint: disable=g-import-not-at-top
    path = workdir / "metrics.jsonl"
    if path.exists():
      kept = [line for line in path.read_text().splitlines()
              if line and json.loads(line)["step"] <= resume_step]
      tmp = path.with_suffix(".tmp")
      tmp.write_text("".join(line + "\n" for line in kept))
      tmp.replace(path)
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tb = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)

  def close(self):
    if self._enabled:
      self._jsonl.close()
      self._tb.close()


def duration(seconds: float) -> str:
  """``42s``, ``7m05s``, ``2h03m``."""
  s = int(round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
  """Throughput and the time left to the end of the run.

  The time left is: the training steps left at the median time per step of
  the reports since the first (the first window includes compilation, so it
  is left out, and a median ignores the windows in which a new call length
  or the projecting step compiled), plus the evaluations left at the
  quickest evaluation's duration (the first one compiles), plus the final
  phase (``final_evaluations`` evaluations and ``final_steps`` forward
  passes of a batch at a third of a training step each: precise BatchNorm).
  Until the second report it is unknown (None).
  """

  def __init__(self, first_step: int, total_steps: int, batch_size: int,
               final_steps: int = 0, final_evaluations: int = 2):
    self._t, self._step = time.time(), first_step
    self._total, self._batch = total_steps, batch_size
    self._final_steps, self._final_evals = final_steps, final_evaluations
    self._reported = False
    self._paused = 0.0  # seconds spent evaluating since the last report
    self._step_s = []  # seconds per step of each window after the first
    self.evaluation_s = 0.0

  def evaluated(self, seconds: float) -> None:
    """An evaluation took ``seconds`` (not training time)."""
    self.evaluation_s = (min(self.evaluation_s, seconds) if self.evaluation_s
                         else seconds)
    self._paused += seconds

  def report(self, step: int, evaluations_left: int = 0
             ) -> tuple[float, float | None]:
    """(images/s since the last report, seconds left to the end, or None)."""
    now = time.time()
    elapsed = max(now - self._t, 1e-9)
    rate = (step - self._step) * self._batch / elapsed
    if self._reported and step > self._step:
      self._step_s.append(max(elapsed - self._paused, 1e-9)
                          / (step - self._step))
    self._t, self._step, self._paused = now, step, 0.0
    if not self._step_s:
      self._reported = True
      return rate, None
    step_s = statistics.median(self._step_s)
    left = ((self._total - step + self._final_steps / 3) * step_s
            + (evaluations_left + self._final_evals) * self.evaluation_s)
    return rate, left


class Segments:
  """The wall time of a run over all its starts (segments).

  ``WORKDIR/segments.json`` lists, per start, ``start_step``, ``end_step``
  and ``wall_time_s`` (from the process start: data loading and compilation
  included); this start's entry is rewritten at every log and checkpoint
  boundary, so a killed start keeps the time up to its last one. ``total``
  is the run's wall time: the sum.
  """

  def __init__(self, workdir: pathlib.Path, first_step: int, started: float,
               enabled: bool = True):
    self._path = workdir / "segments.json"
    self._started, self._enabled = started, enabled
    self.entries = (json.loads(self._path.read_text())
                    if self._path.is_file() else [])
    self.entries.append({"start_step": first_step, "end_step": first_step,
                         "wall_time_s": 0.0})

  def update(self, step: int) -> None:
    self.entries[-1].update(end_step=step,
                            wall_time_s=time.time() - self._started)
    if not self._enabled:
      return
    tmp = self._path.with_suffix(".tmp")
    tmp.write_text(json.dumps(self.entries, indent=1) + "\n")
    tmp.replace(self._path)

  def total(self) -> float:
    return sum(e["wall_time_s"] for e in self.entries)


class PhaseLog:
  """Logs each part of a phase as it ends: ``final 2/5: ... (3.1s)``."""

  def __init__(self, name: str, parts: int):
    self._name, self._parts, self._done = name, parts, 0
    self._t = time.time()

  def done(self, what: str) -> None:
    now = time.time()
    self._done += 1
    logging.info("%s %d/%d: %s (%s)", self._name, self._done, self._parts,
                 what, duration(now - self._t))
    self._t = now


class SpectraLog:
  """Singular values of every ranked kernel (as the (m, n) matrix) at each
  projection step, in ``WORKDIR/spectra.json``: ``before`` the truncation
  (the projecting step's ``pre_projection_params``) and ``after`` it (the
  step's result). Float64 NumPy SVD on the host, once per projection."""

  def __init__(self, workdir: pathlib.Path, ranks):
    self._path = workdir / "spectra.json"
    self._ranks = _trees.leaves_by_path(ranks)  # ranked leaves only
    if self._path.exists():  # a resumed run appends
      self.record = json.loads(self._path.read_text())
    else:
      self.record = {"steps": [], "layers": {
          "/".join(k): {"rank": r, "before": [], "after": []}
          for k, r in self._ranks.items()}}

  def _spectra(self, params):
    flat = _trees.leaves_by_path(params)
    out = {}
    for k in self._ranks:
      w = np.asarray(jax.device_get(flat[k]), np.float64)
      out["/".join(k)] = np.linalg.svd(
          w.reshape(projection.matrix_shape(w.shape)), compute_uv=False)
    return out

  def log(self, step, before_params, after_params):
    before = self._spectra(before_params)
    after = self._spectra(after_params)
    self.record["steps"].append(step)
    for name, layer in self.record["layers"].items():
      layer["before"].append(before[name].tolist())
      layer["after"].append(after[name].tolist())
    tmp = self._path.with_suffix(".tmp")
    tmp.write_text(json.dumps(self.record))
    tmp.replace(self._path)
