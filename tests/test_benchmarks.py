"""Every benchmark runs in its --quick mode, so none can silently break."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # subprocesses


@pytest.mark.parametrize("script, expected", [
    ("benchmarks.train_throughput", "LRPET throughput ="),
    ("benchmarks.projection", "speed-up"),
    ("benchmarks.compact_inference", "speed-up = dense latency"),
])
def test_benchmark_quick_mode(script, expected):
  result = subprocess.run(
      [sys.executable, "-m", script, "--quick"], cwd=ROOT, capture_output=True,
      text=True, timeout=600, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert expected in result.stdout
  assert "device:" in result.stdout
