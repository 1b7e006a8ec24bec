"""The pipeline with a Flax NNX model: trains, resumes bit for bit after
SIGKILL, and ships a compact model and serving artifact that pass the export
check; ``load_run`` and ``lrpet_jax.export`` take its workdir."""

import json
import subprocess
import sys

from flax import nnx
import numpy as np
import pytest

import lrpet_jax
from reference import rel_err
from test_train import assert_resumes_bit_for_bit, command, image_folder, run  # pylint: disable=unused-import

pytestmark = pytest.mark.slow  # subprocesses that train
NNX = ("--config.model=examples.own_nnx_model:make",
       "--config.checkpoint_every_steps=4")


def test_nnx_model_trains_resumes_exactly_and_exports(image_folder,
                                                      tmp_path):
  straight = tmp_path / "straight"
  result = run(command(image_folder, straight, *NNX))
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((straight / "summary.json").read_text())
  assert summary["steps"] == 12
  # stem 16x16 x 16 x 27 + body 16x16 x 32 x 144 + head 32 x 10
  assert summary["dense_macs"] == 256 * 16 * 27 + 256 * 32 * 144 + 320
  assert 0 < summary["macs_reduction"] < 1
  assert summary["compact_accuracy"] == summary["dense_accuracy"]
  check = summary["export_check"]
  assert max(check["compact"], check["folded"], check["serving"]) < (
      check["tolerance"])
  assert json.loads((straight / "ranks.json").read_text()).keys() == {
      "stem/kernel", "body/0/kernel"}
  pairs = json.loads((straight / "bn_pairs.json").read_text())["pairs"]
  assert pairs == {"stem/kernel": "norms/0", "body/0/kernel": "norms/1"}

  assert_resumes_bit_for_bit(image_folder, straight, tmp_path / "killed",
                             *NNX)

  # The saved run as an NNX user gets it back: the compact nnx.Module.
  saved = lrpet_jax.load_run(straight)
  assert saved.evaluate("compact")["top1"] == summary["compact_accuracy"]
  compact, variables = saved.compact_model, saved.compact_variables
  module = compact.nnx_model.module(variables)
  assert isinstance(module, nnx.Module)
  x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  assert rel_err(module(x), compact.apply(variables, x, train=False)) < 1e-6

  # The export command on its dense checkpoint, at the run's ranks.
  out = tmp_path / "export"
  exported = subprocess.run(
      [sys.executable, "-m", "lrpet_jax.export",
       f"--variables={straight / 'dense_final'}", f"--workdir={out}",
       "--model=examples.own_nnx_model:make", "--dataset=cifar10",
       f"--ranks_file={straight / 'ranks.json'}"],
      capture_output=True, text=True, timeout=300, check=False,
      cwd=command.__globals__["ROOT"])
  assert exported.returncode == 0, exported.stderr[-3000:]
  report = json.loads((out / "compact_report.json").read_text())
  assert report["compact"]["macs"] == summary["compact_macs"]
