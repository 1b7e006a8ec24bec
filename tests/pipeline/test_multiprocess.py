"""Several processes on loopback (python -m lrpet_jax.launch): the same result
as one process at any layout, one writer, faults, and resumes across
process counts. Tolerances: two layouts differ only by float round-off,
measured ≤ 7e-7 (relative, the largest leaf) after one step and ≤ 4e-6 after
a projection step on this config; compared here at 1e-4."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from reference import xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Several processes that train; one worker runs the module, so that the
# 2x2 run both tests compare with (``two_by_two``) is trained once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_multiprocess")]

TOLERANCE = 1e-4


def flags(folder, workdir, *extra):
  return [f"--config={ROOT / 'configs' / 'smoke.py'}", f"--workdir={workdir}",
          "--config.model=resnet8", "--config.num_classes=4",
          f"--config.dataset=image_folder:{folder}", "--config.train_subset=0",
          "--config.test_subset=0", "--config.batch_size=8",
          "--config.num_steps=6", "--config.project_every_steps=0",
          "--config.checkpoint_every_steps=3", "--config.log_every_steps=2",
          "--config.bn_recompute_batches=1", "--config.eval_batch_size=10",
          "--config.steps_per_call=2", *extra]


def env(devices=None):
  out = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  if devices:
    out["XLA_FLAGS"] = xla_flags(devices)
  return out


def launch(folder, workdir, *extra, processes=2, devices=2):
  return [sys.executable, "-m", "lrpet_jax.launch", f"--processes={processes}",
          f"--devices_per_process={devices}", "--",
          *flags(folder, workdir, *extra)]


def single(folder, workdir, *extra):
  return [sys.executable, "-m", "lrpet_jax.main", *flags(folder, workdir,
                                                         *extra)]


def run(cmd, devices=None):
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                        env=env(devices), timeout=600, check=False)


def state(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.StandardCheckpointer().restore(
      pathlib.Path(workdir) / "checkpoints" / str(step) / "state")


def largest_relative_difference(a, b):
  diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - y), initial=0.0))
           / max(float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0)),
                 1e-30)
           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  return max(diffs)


@pytest.fixture(scope="module")
def two_by_two(png_folder, tmp_path_factory):
  """An uninterrupted 2 processes x 2 devices run, and its process result."""
  workdir = tmp_path_factory.mktemp("w22") / "w"
  result = run(launch(png_folder, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_two_processes_match_one_write_every_file_once_and_resume_its_checkpoint(
    png_folder, two_by_two, tmp_path):
  workdir, result = two_by_two
  one = tmp_path / "w14"
  done = run(single(png_folder, one), devices=4)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "on 4 cpu device(s)" in result.stderr
  for step in (3, 6):  # after the first projection, and at the end
    assert largest_relative_difference(
        state(one, step)["params"], state(workdir, step)["params"]) <= TOLERANCE
  # One writer: one command line, one segment, one TensorBoard file, one row
  # per step and kind, one summary printed and one "everything is in" line.
  assert len((workdir / "commands.txt").read_text().splitlines()) == 1
  assert len(json.loads((workdir / "segments.json").read_text())) == 1
  assert len(list((workdir / "tensorboard").iterdir())) == 1
  rows = [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["step"], k) for r in rows for k in r if k != "step"]
  assert len(keys) == len(set(keys))
  assert result.stdout.count('"final_accuracy"') == 1
  assert result.stderr.count("everything is in") == 1
  assert result.stderr.count("step 6/6") == 1
  # Complete: the summary, and the served model agrees with the compact one
  # (global evaluation counts: the 16 test images once, not once a process).
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["dense_accuracy"] == summary["compact_accuracy"]
  assert summary["compact_accuracy"] * 16 == round(
      summary["compact_accuracy"] * 16)
  import lrpet_jax  # pylint: disable=g-import-not-at-top
  loaded = lrpet_jax.load_run(workdir)
  assert loaded.evaluate("compact")["top1"] == summary["compact_accuracy"]
  # The one-process run as if killed after checkpoint 3 resumes in two
  # processes and ends where they did.
  resumed = tmp_path / "resumed"
  shutil.copytree(one, resumed)
  shutil.rmtree(resumed / "checkpoints" / "6")
  (resumed / "summary.json").unlink()
  done = run(launch(png_folder, resumed))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "starting at step 3 on 4 cpu device(s)" in done.stderr
  assert largest_relative_difference(
      state(workdir, 6)["params"], state(resumed, 6)["params"]) <= TOLERANCE


def test_a_killed_process_stops_the_run_and_it_resumes(png_folder,
                                                       two_by_two, tmp_path):
  import psutil  # pylint: disable=g-import-not-at-top
  uninterrupted, _ = two_by_two
  workdir = tmp_path / "w"
  launcher = subprocess.Popen(launch(png_folder, workdir), cwd=ROOT, env=env(),
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "3").exists():
    assert launcher.poll() is None and time.time() < deadline
    time.sleep(0.1)
  victim = next(p for p in psutil.Process(launcher.pid).children()
                if "--config.process_id=1" in p.cmdline())
  victim.send_signal(signal.SIGKILL)
  killed_at = time.time()
  _, stderr = launcher.communicate(timeout=120)
  assert time.time() - killed_at < 60  # the other process did not hang
  assert launcher.returncode == 137
  assert stderr.strip().splitlines()[-1] == (
      "error: process 1 of 2 was killed by signal 9; stopped the others"
      " (rerun the same command to resume from the last checkpoint)")
  assert not (workdir / "summary.json").exists()
  on_one = tmp_path / "copy"
  shutil.copytree(workdir, on_one)
  saved = max(int(p.name) for p in (on_one / "checkpoints").iterdir()
              if p.name.isdigit())
  # The same launch again resumes and ends where the uninterrupted run did
  # (the same compiled programs: bit for bit).
  result = run(launch(png_folder, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "starting at step 0 " not in result.stderr
  a, b = state(uninterrupted, 6), state(workdir, 6)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                  jax.tree.leaves(b)))
  # The checkpoint two processes wrote resumes in one process (4 devices).
  result = run(single(png_folder, on_one), devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"starting at step {saved} on 4 cpu device(s)" in result.stderr
  assert largest_relative_difference(
      state(uninterrupted, 6)["params"], state(on_one, 6)["params"]) <= TOLERANCE

