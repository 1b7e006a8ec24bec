"""What a run tells its user: the time left, the final phase, the plots."""

import json

import pytest

from lrpet_jax.pipeline import metrics
from lrpet_jax.pipeline import plots
from lrpet_jax.pipeline import train


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  c = Clock()
  monkeypatch.setattr(metrics.time, "time", c)
  return c


def test_time_left_hand_computed(clock):
  # 100 steps of batch 10; precise BN over 30 batches; two final evaluations.
  progress = metrics.Progress(0, 100, 10, final_steps=30, final_evaluations=2)
  clock.now += 50.0  # first window: 10 steps, compilation included
  rate, left = progress.report(10, evaluations_left=3)
  assert rate == pytest.approx(10 * 10 / 50.0) and left is None
  clock.now += 4.0  # an evaluation: not training time
  progress.evaluated(4.0)
  clock.now += 20.0  # 20 steps at 1 s each
  rate, left = progress.report(30, evaluations_left=2)
  assert rate == pytest.approx(20 * 10 / 24.0)
  # 70 steps + 30/3 BN batches at 1 s, (2 + 2) evaluations at 4 s.
  assert left == pytest.approx(70 + 10 + 4 * 4)


def test_durations_read_as_a_person_writes_them():
  assert [metrics.duration(s) for s in (0.4, 42, 60, 425, 3600, 7380)] == [
      "0s", "42s", "1m00s", "7m05s", "1h00m", "2h03m"]


def test_evaluations_left_hand_computed():
  # Every 20 steps and at the last step.
  assert train.evaluations_left(0, 40, 20) == 2  # 20, 40
  assert train.evaluations_left(20, 40, 20) == 1  # 40
  assert train.evaluations_left(10, 45, 20) == 3  # 20, 40, 45
  assert train.evaluations_left(45, 45, 20) == 0


def test_phase_log_counts_parts(clock, caplog):
  caplog.set_level("INFO")
  phase = metrics.PhaseLog("final", 2)
  clock.now += 3.2
  phase.done("first")
  clock.now += 70
  phase.done("second")
  assert [r.getMessage() for r in caplog.records] == [
      "final 1/2: first (3s)", "final 2/2: second (1m10s)"]


def test_plots_from_workdir_files(tmp_path):
  rows = [{"step": 10, "train_loss": 2.3, "train_accuracy": 0.1},
          {"step": 10, "projection_energy_kept_mean": 0.9,
           "projection_energy_kept_min": 0.8},
          {"step": 20, "train_loss": 2.0, "train_accuracy": 0.2,
           "test_top1": 0.25, "test_top1_pre_projection": 0.3}]
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  series = plots.read_metrics(tmp_path / "metrics.jsonl")
  assert series["train_loss"] == ([10, 20], [2.3, 2.0])
  assert series["test_top1"] == ([20], [0.25])
  assert [p.name for p in plots.write(tmp_path)] == ["training.png"]
  report = {"model": "m", "layers": [
      {"layer": "conv", "rank": 3, "full_rank": 8, "energy_kept": 0.99},
      {"layer": "head", "rank": None, "full_rank": 10, "energy_kept": None}]}
  (tmp_path / "compact_report.json").write_text(json.dumps(report))
  written = plots.write(tmp_path)
  assert [p.name for p in written] == ["training.png", "layers.png"]
  for p in written:
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_training_figure_of_a_dense_run(tmp_path):
  # A dense run: no projections; a single evaluation; the final accuracy.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [{"step": 10, "train_loss": 2.3, "train_accuracy": 0.1},
          {"step": 20, "train_loss": 2.0, "train_accuracy": 0.2,
           "test_top1": 0.25}]
  series = plots.read_metrics_rows(rows)
  fig = plots._training_figure(plt, series, {"steps": 20,  # pylint: disable=protected-access
                                             "final_accuracy": 0.3})
  assert len(fig.axes) == 2  # no empty energy panel
  lines = [l for ax in fig.axes for l in ax.get_lines()]
  # Every series shows its points (a one-point series too).
  assert all(l.get_marker() not in (None, "None", "", " ") for l in lines)
  labels = [l.get_label() for l in lines]
  assert labels == ["train loss", "train top-1", "test top-1",
                    "final top-1 (deployed model)"]
  final = lines[-1]
  assert list(final.get_xdata()) == [20] and list(final.get_ydata()) == [0.3]
  plt.close(fig)


def test_time_left_ignores_compilation_windows_and_evaluations(clock):
  """A short run: a window in which a new call compiled (30 s for 10 steps)
  and a first evaluation that compiled (20 s) do not stretch the estimate
  (it said 5m51s at step 6/12 of a run that took 1m50s)."""
  progress = metrics.Progress(0, 60, 10, final_steps=0, final_evaluations=1)
  clock.now += 50.0
  progress.report(10)  # first window: compilation, left out
  for seconds in (10.0, 30.0, 10.0):  # 1 s/step, one compiling window, 1
    clock.now += seconds
    step = progress._step + 10  # pylint: disable=protected-access
    if seconds == 30.0:
      clock.now += 20.0
      progress.evaluated(20.0)  # the first evaluation compiles
    _, left = progress.report(step, evaluations_left=1)
  clock.now += 2.0
  progress.evaluated(2.0)
  clock.now += 10.0
  _, left = progress.report(50, evaluations_left=1)
  # Median of 1, 3, 1, 1 s/step over 10 steps left; (1 + 1) evaluations at 2.
  assert left == pytest.approx(10 * 1.0 + 2 * 2.0)
