"""python -m lrpet_jax.export: dense Orbax checkpoint → compact checkpoint + report."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import lrpet_jax
from lrpet_jax import models
from lrpet_jax import ranks as ranks_lib
from reference import rel_err

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # subprocesses


def run_export(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "lrpet_jax.export", *args],
                        capture_output=True, text=True, env=env, timeout=300,
                        check=False)


def test_export_command(tmp_path):
  dense = models.create("resnet20")
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  variables = dense.init(jax.random.key(0), x, train=False)
  ranks = lrpet_jax.uniform_ranks(variables["params"], 0.54)
  variables = {**variables, "params": lrpet_jax.project_params(
      variables["params"], ranks)}
  ocp.StandardCheckpointer().save(tmp_path / "dense", variables)
  ocp.StandardCheckpointer().wait_until_finished()

  out = tmp_path / "out"
  result = run_export(f"--variables={tmp_path / 'dense'}", f"--workdir={out}",
                      "--model=resnet20", "--ratio=0.54")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "fewer" in result.stdout
  report = json.loads((out / "compact_report.json").read_text())
  # The 19 convolutions (stem + 18 in blocks); the classifier stays dense.
  assert len(report["layers"]) == 19
  assert "head" not in {r["layer"] for r in report["layers"]}
  assert "head/kernel" not in json.loads((out / "ranks.json").read_text())
  assert all(abs(r["energy_kept"] - 1) < 1e-5 for r in report["layers"])
  assert report["dense"]["macs"] == 40_551_040
  assert 0.4 < report["macs_reduction"] < 0.6

  # Restore as the module docstring documents; logits match the dense model.
  restored_ranks = ranks_lib.ranks_from_dict(
      variables["params"], json.loads((out / "ranks.json").read_text()))
  compact = models.create("resnet20", ranks=restored_ranks)
  abstract = jax.eval_shape(lambda: compact.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  compact_vars = ocp.StandardCheckpointer().restore(out / "compact", abstract)
  assert rel_err(compact.apply(compact_vars, x, train=False),
                 dense.apply(variables, x, train=False)) <= 1e-4

  # The module docstring's restore example, as printed (for ResNet-20 at OUT).
  import ast  # pylint: disable=g-import-not-at-top
  import textwrap  # pylint: disable=g-import-not-at-top
  # Read, not imported: importing the module defines its absl flags.
  doc = ast.get_docstring(ast.parse(
      (ROOT / "lrpet_jax" / "export.py").read_text()), clean=False)
  example = textwrap.dedent(doc[doc.index("    import json"):])
  ns = {}
  exec(example.replace("resnet56", "resnet20").replace("OUT_DIR", str(out)),  # pylint: disable=exec-used
       ns)
  assert rel_err(ns["model"].apply(ns["variables"], x, train=False),
                 dense.apply(variables, x, train=False)) <= 1e-4

  # A second export refuses to overwrite, and says why in one line.
  again = run_export(f"--variables={tmp_path / 'dense'}", f"--workdir={out}",
                     "--model=resnet20", "--ratio=0.54")
  assert again.returncode == 2
  assert again.stderr.strip().splitlines()[-1].startswith("error: workdir")

  # --project_dense ranks the classifier too.
  with_head = run_export(f"--variables={tmp_path / 'dense'}",
                         f"--workdir={tmp_path / 'head'}", "--model=resnet20",
                         "--ratio=0.54", "--project_dense")
  assert with_head.returncode == 0, with_head.stderr[-3000:]
  assert json.loads((tmp_path / "head" / "ranks.json").read_text())[
      "head/kernel"] == 4  # int(10 - 5.4)


def test_export_bad_input(tmp_path):
  result = run_export(f"--variables={tmp_path / 'missing'}",
                      f"--workdir={tmp_path / 'out'}", "--model=resnet20",
                      "--ratio=0.5")
  assert result.returncode == 2 and "variables" in result.stderr
  # A checkpoint of another model: one short line that says so.
  dense = models.create("resnet20")
  ocp.StandardCheckpointer().save(tmp_path / "r20", dense.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  ocp.StandardCheckpointer().wait_until_finished()
  result = run_export(f"--variables={tmp_path / 'r20'}",
                      f"--workdir={tmp_path / 'o'}", "--model=resnet32",
                      "--ratio=0.5")
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert "--model=resnet32" in last and "another model" in last
  assert len(last) < 300
  result = run_export(f"--variables={tmp_path}", f"--workdir={tmp_path / 'o'}",
                      "--model=resnet99", "--ratio=0.5")
  assert result.returncode == 2 and "unknown model" in result.stderr
  assert not (tmp_path / "o").exists()


def test_ranks_dict_round_trip():
  params = {"a": {"kernel": np.zeros((3, 3, 4, 8)), "bias": np.zeros(8)}}
  ranks = lrpet_jax.uniform_ranks(params, 0.5)
  mapping = ranks_lib.ranks_to_dict(ranks)
  assert mapping == {"a/kernel": 4}
  assert ranks_lib.ranks_from_dict(params, mapping) == ranks
