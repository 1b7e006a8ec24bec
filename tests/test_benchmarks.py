"""Every benchmark runs in its --quick mode, so none can silently break."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # subprocesses


@pytest.mark.parametrize("script, expected", [
    # benchmarks.train_throughput runs in process below.
    ("benchmarks.projection", "speed-up"),
    ("benchmarks.compact_inference", "speed-up = dense latency"),
    ("benchmarks.nnx_step", "nnx/linen ="),
    ("benchmarks.vit", "speed-up = dense latency / compact latency"),
])
def test_benchmark_quick_mode(script, expected):
  result = subprocess.run(
      [sys.executable, "-m", script, "--quick"], cwd=ROOT, capture_output=True,
      text=True, timeout=600, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert expected in result.stdout
  assert "device:" in result.stdout


def test_train_throughput_prints_each_row_as_it_is_measured(monkeypatch,
                                                            capsys):
  sys.path.insert(0, str(ROOT))
  from benchmarks import train_throughput  # pylint: disable=g-import-not-at-top
  measure = train_throughput.per_step
  printed_before = []  # what stdout held when each measurement began

  def spy(*args, **kwargs):
    printed_before.append(capsys.readouterr().out)
    return measure(*args, **kwargs)

  monkeypatch.setattr(train_throughput, "per_step", spy)
  train_throughput.main(["--quick"])
  assert "LRPET throughput =" in capsys.readouterr().out
  # The header before the first measurement, then the previous row before
  # each next one (not every row at the end).
  assert "device:" in printed_before[0]
  assert len(printed_before) == 7
  for out in printed_before[1:]:
    assert re.search(r"(/call|projecting step) +[0-9.]+ +[0-9]+\n", out), out
