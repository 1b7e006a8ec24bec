"""What a user still hit (#27): a shared workdir, a changed config on resume,
signals in the final phase, a full disk, exit statuses, an own model's
output, schedules, and small things a person reads."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from lrpet_jax.pipeline import config_check
from lrpet_jax.pipeline import train
from test_train import command  # pylint: disable=unused-import
from test_train import image_folder  # pylint: disable=unused-import
from test_train import run

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


@pytest.mark.slow
def test_a_second_run_in_a_busy_workdir_is_refused(image_folder, tmp_path):
  workdir = tmp_path / "w"
  first = subprocess.Popen(
      command(image_folder, workdir, "--config.num_steps=4000"), cwd=ROOT,
      env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    for line in first.stderr:
      if "starting at step" in line:  # the workdir is the first run's
        break
    second = run(command(image_folder, workdir, "--config.num_steps=4000"))
    assert second.returncode == 2, second.stderr[-2000:]
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"error: workdir: another run is using {workdir}"
                           f" (pid {first.pid} on ")
    assert first.poll() is None  # the first run goes on
  finally:
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
  assert first.returncode == 143


def _finished_then_unfinished(tiny_config, workdir):
  summary = train.train_and_evaluate(tiny_config(), str(workdir))
  (workdir / "summary.json").unlink()  # as if stopped before the end
  shutil.rmtree(workdir / "serving")
  return summary


@pytest.mark.slow
def test_an_unfinished_run_resumed_under_another_config_is_refused(
    tiny_config, tmp_path):
  import lrpet_jax  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  summary = _finished_then_unfinished(tiny_config, workdir)
  # Its library view says what is missing, in one line.
  with pytest.raises(ValueError, match=r"holds no serving model \(the run has"
                     r" not finished\)$"):
    lrpet_jax.load_run(workdir).evaluate("serving")
  with pytest.raises(config_check.ConfigError, match=(
      r"^workdir: holds an unfinished run started under another config"
      r" \(changed: seed 0 → 1\); rerun with its config to resume")):
    train.train_and_evaluate(tiny_config(seed=1), str(workdir))
  # Fields that cannot change the steps may differ; the run then finishes.
  again = train.train_and_evaluate(
      tiny_config(log_every_steps=3, keep_checkpoints=4), str(workdir))
  assert again["final_accuracy"] == summary["final_accuracy"]
  assert json.loads((workdir / "config.json").read_text())["seed"] == 0


@pytest.mark.slow
def test_a_signal_in_the_final_phase_stops_at_a_phase_boundary(image_folder,
                                                               tmp_path):
  workdir = tmp_path / "w"
  cmd = command(image_folder, workdir, "--config.num_steps=4",
                "--config.checkpoint_every_steps=2")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if "final 1/5" in line:
      proc.send_signal(signal.SIGTERM)
      break
  _, rest = proc.communicate(timeout=300)
  assert proc.returncode == 143, "".join(lines) + rest[-2000:]
  assert not (workdir / "summary.json").exists()
  last = rest.strip().splitlines()[-1]
  assert last.startswith("stopped by signal 15 in the final phase (after"
                         " final ") and last.endswith(
                             "training saved at step 4; rerun the same command"
                             " to resume"), last
  done = run(cmd)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "final 5/5" in done.stderr
  assert json.loads((workdir / "summary.json").read_text())["steps"] == 4


@pytest.mark.slow
def test_a_failed_save_stops_the_run_at_once_keeping_the_last_good_one(
    tiny_config, tmp_path, monkeypatch):
  """An injected ENOSPC while checkpoint 6 is written."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from lrpet_jax.pipeline import errors  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  path_type = type(epath.Path(tmp_path))
  write_text = path_type.write_text

  def full_disk(self, *args, **kwargs):
    if re.search(r"/checkpoints/6[./]", str(self)):
      raise OSError(28, "No space left on device")
    return write_text(self, *args, **kwargs)

  monkeypatch.setattr(path_type, "write_text", full_disk)
  config = tiny_config(num_steps=12, checkpoint_every_steps=3,
                       log_every_steps=1, steps_per_call=1)
  with pytest.raises(errors.SaveFailed) as e:
    train.train_and_evaluate(config, str(workdir))
  message = str(e.value)
  assert message.startswith(
      f"checkpoint 6 could not be saved to {workdir / 'checkpoints' / '6'}")
  assert "No space left on device" in message
  assert message.endswith("the last good checkpoint is 3 (kept)")
  assert "\n" not in message
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps == [3]  # stopped before checkpoint 9
  monkeypatch.setattr(path_type, "write_text", write_text)
  assert train.train_and_evaluate(config, str(workdir))["steps"] == 12


def test_an_internal_error_has_its_own_status_and_saves_the_traceback(
    tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  script = textwrap.dedent(f"""
      import sys
      from absl import app
      from lrpet_jax import main
      from lrpet_jax.pipeline import train
      def broken(config, workdir, command=None):
        error = RuntimeError("something broke")
        error.add_note(train.PHASE_NOTE + "training")
        raise error
      train.train_and_evaluate = broken
      sys.argv = ["main", "--config={ROOT / 'configs' / 'smoke.py'}",
                  "--workdir={workdir}"]
      app.run(main.main, flags_parser=main.parse_flags)
  """)
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode == 4, done.stderr[-2000:]
  (line,) = done.stderr.strip().splitlines()
  assert line == ("error: internal error in training (RuntimeError: something"
                  f" broke); the traceback is in {workdir / 'error.txt'}")
  assert "Traceback" in (workdir / "error.txt").read_text()


class FeatureMap(nn.Module):
  """Forgets its classifier: returns a feature map."""

  num_classes: int = 4
  dtype: object = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3), dtype=self.dtype)(x)
    return nn.BatchNorm(use_running_average=not train, dtype=self.dtype)(x)


class WithDropout(nn.Module):
  num_classes: int = 4
  dtype: object = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train,
                             dtype=self.dtype)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x.mean((1, 2)))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def feature_map(num_classes, dtype=None):
  return FeatureMap(num_classes, dtype)


def with_dropout(num_classes, dtype=None):
  return WithDropout(num_classes, dtype)


def test_a_model_that_returns_no_logits_is_refused(tiny_config, tmp_path):
  with pytest.raises(config_check.ConfigError) as e:
    train.train_and_evaluate(tiny_config(model="test_user_hits:feature_map"),
                             str(tmp_path / "w"))
  assert str(e.value) == (
      "model: returns shape (2, 16, 16, 8) for a batch of 2 images; it must"
      " return logits of shape (batch, num_classes) = (2, 4)")
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_model_with_dropout_trains_with_masks_keyed_by_seed_and_step(
    tiny_config, tmp_path):
  """Dropout masks from (seed, step): 1 or 2 steps per call give the same
  params after 2 steps (float32 round-off only)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  states = []
  for k in (1, 2):
    workdir = tmp_path / f"k{k}"
    train.train_and_evaluate(tiny_config(
        model="test_user_hits:with_dropout", num_steps=2,
        checkpoint_every_steps=2, steps_per_call=k), str(workdir))
    states.append(ocp.StandardCheckpointer().restore(
        workdir / "checkpoints" / "2" / "state")["params"])
  a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(s)])
          for s in states)
  assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a)


@pytest.mark.parametrize("overrides, message", [
    (dict(lr_boundaries_epochs=(5, 2)),
     "lr_boundaries_epochs: must be increasing epochs, got (5, 2)"),
    (dict(lr_boundaries_epochs=(2, 2)),
     "lr_boundaries_epochs: must be increasing epochs, got (2, 2)"),
    (dict(num_steps=0, num_epochs=4, lr_boundaries_epochs=(2, 6)),
     "lr_boundaries_epochs: 6 is after the end of the run (4 epochs)"),
])
def test_a_schedule_that_cannot_be_one_is_refused(tiny_config, overrides,
                                                  message):
  with pytest.raises(config_check.ConfigError) as e:
    config_check.check(tiny_config(**overrides))
  assert str(e.value) == message


def test_boundaries_past_a_run_of_num_steps_are_refused(tiny_config,
                                                        tmp_path):
  # 6 steps of 3 per epoch: 2 epochs.
  with pytest.raises(config_check.ConfigError) as e:
    train.train_and_evaluate(tiny_config(lr_boundaries_epochs=(1, 3)),
                             str(tmp_path / "w"))
  assert str(e.value) == ("lr_boundaries_epochs: 3 is after the end of the"
                          " run (6 steps = 2 epochs)")


def _main(*args):
  return subprocess.run([sys.executable, "-m", "lrpet_jax.main", *args],
                        cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=120, check=False)


def test_a_config_file_that_does_not_exist_is_one_line(tmp_path):
  done = _main("--config=configs/nope.py", f"--workdir={tmp_path / 'w'}")
  assert done.returncode == 2
  assert done.stderr.strip() == (
      "error: config: no config file at configs/nope.py (the configs are in"
      f" {ROOT / 'configs'})")


def test_help_shows_the_overrides_given_with_it():
  done = _main("--help", "--config=configs/smoke.py", "--config.seed=3",
               "--config.lr_boundaries_epochs=(1,2)")
  assert done.returncode == 0
  assert "  seed = 3  (given)" in done.stdout.splitlines()
  assert any(l.startswith("  lr_boundaries_epochs = (1, 2)")
             and l.endswith("(given)") for l in done.stdout.splitlines())


def test_the_smoke_duration_is_told_the_same_everywhere():
  said = "about 1½ minutes"
  assert said in (ROOT / "README.md").read_text()
  assert said in (ROOT / "configs" / "smoke.py").read_text().splitlines()[0]
  assert said in _main("--help").stdout


def test_the_tensorboard_hint_is_quoted(tmp_path, caplog):
  from lrpet_jax.pipeline import records  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "a run"
  workdir.mkdir()
  (workdir / ".lock").write_text("")
  (workdir / "summary.json").write_text("{}")
  with caplog.at_level("INFO"):
    records.log_contents(workdir)
  (line,) = [r.getMessage() for r in caplog.records]
  assert line.endswith(f"tensorboard --logdir '{workdir}/tensorboard')")
  assert ": summary.json (" in line  # dotfiles (the lock) are not listed


def test_training_plot_marks_every_projection(tmp_path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from lrpet_jax.pipeline import plots  # pylint: disable=g-import-not-at-top
  series = plots.read_metrics_rows([
      {"step": 2, "train_loss": 2.0, "train_accuracy": 0.1},
      {"step": 3, "projection_energy_kept_mean": 0.9,
       "projection_energy_kept_min": 0.8},
      {"step": 4, "train_loss": 1.5, "test_top1": 0.2},
      {"step": 6, "projection_energy_kept_mean": 0.95,
       "projection_energy_kept_min": 0.85}])
  fig = plots._training_figure(plt, series)  # pylint: disable=protected-access
  for ax in fig.axes[:2]:
    marks = [l.get_xdata()[0] for l in ax.get_lines()
             if l.get_linestyle() == ":"]
    assert marks == [3, 6]
  plt.close(fig)


@pytest.mark.slow  # starts the launcher and its process
def test_the_launcher_does_not_say_resume_after_bad_input(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "lrpet_jax.launch", "--processes=1",
       "--devices_per_process=1", "--", f"--config={ROOT / 'configs' / 'smoke.py'}",
       f"--workdir={tmp_path / 'w'}", "--config.batch_size=0"], cwd=ROOT,
      env=ENV, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 2, done.stderr[-2000:]
  assert "resume" not in done.stderr


BUGGY = '''
import flax.linen as nn


class Buggy(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3))(x)
    if train:
      x = x[:, :, :, 0] * undefined_name  # a bug that only training hits
    return nn.Dense(self.num_classes)(x.mean((1, 2)))


def make(num_classes=10, dtype=None):
  return Buggy(num_classes)
'''


@pytest.mark.slow
def test_a_bug_in_the_users_model_is_the_models_error(image_folder,
                                                      tmp_path):
  (tmp_path / "buggy_model.py").write_text(BUGGY)
  workdir = tmp_path / "w"
  done = run(command(image_folder, workdir, "--config.model=buggy_model:make",
                     "--config.num_steps=2"), PYTHONPATH=str(tmp_path))
  assert done.returncode == 2, done.stderr[-2000:]
  (line,) = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert line == (
      "error: model: buggy_model:make raised NameError (name 'undefined_name'"
      f" is not defined) at {tmp_path / 'buggy_model.py'}:12 in __call__; the"
      f" traceback is in {workdir.absolute() / 'error.txt'}")
  assert "Traceback" in (workdir / "error.txt").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_within_the_queued_calls(tmp_path):
  """One step per call (the smoke config, ResNet-20 on the CIFAR-10 copy):
  the host used to dispatch every step up to the next log before it read
  the device again, so Ctrl-C stopped up to a log interval late (step 51
  for a signal after step 40). Now at most ``train.QUEUED`` calls wait
  ahead of the device."""
  cmd = [sys.executable, "-m", "lrpet_jax.main",
         f"--config={ROOT / 'configs' / 'smoke.py'}",
         f"--workdir={tmp_path / 'w'}", "--config.num_steps=60",
         "--config.steps_per_call=1", "--config.log_every_steps=10",
         "--config.checkpoint_every_steps=60"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if re.search(r"step 40/60", line):
      time.sleep(0.3)  # the host has dispatched what it will by now
      proc.send_signal(signal.SIGINT)
  proc.wait(timeout=300)
  assert proc.returncode == 130, "".join(lines[-20:])
  stopped = int(re.search(r"stopped by signal 2 at step (\d+)",
                          "".join(lines)).group(1))
  # The call under way, the 2 queued ones (the training page's bound), and one
  # dispatched meanwhile; before, the next log boundary (50).
  assert train.QUEUED == 2 and 40 < stopped <= 44


def test_help_lists_every_exit_status_of_the_docs():
  """The exit-status page's table and --help name the same statuses."""
  page = (ROOT / "docs" / "exit-statuses.md").read_text()
  table = page[page.index("| status | meaning |"):]
  rows = re.findall(r"^\| ([\d, ]+) \|", table[:table.index("\n\n")], re.M)
  statuses = {s.strip() for row in rows for s in row.split(",")}
  assert statuses == {"0", "1", "2", "3", "4", "130", "143"}
  done = _main("--help", "--config=configs/smoke.py")
  listed = re.findall(r"^  (128 \+ N|\d+)\s", done.stdout, re.M)
  assert listed == ["0", "1", "2", "3", "4", "128 + N"]
