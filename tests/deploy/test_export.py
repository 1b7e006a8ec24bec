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
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.deploy import from_checkpoint
from lrpet_jax.ranking import selection
from reference import rel_err

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # subprocesses


def run_export(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "lrpet_jax.export", *args],
                        capture_output=True, text=True, env=env, timeout=300,
                        check=False)


def saved_projected_dense(name, path):
  """(model, variables): a zoo model projected at ratio 0.54, saved at path."""
  dense = models.create(name)
  variables = dense.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  ranks = lrpet_jax.uniform_ranks(variables["params"], 0.54)
  variables = {**variables, "params": lrpet_jax.project_params(
      variables["params"], ranks)}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, variables)
  checkpointer.wait_until_finished()
  return dense, variables


def restored(name, dense_params, ranks_json, checkpoint):
  """(model, variables) of an exported model, rebuilt from its ranks file."""
  ranks = ranks_lib.Ranks.read(ranks_json).tree(dense_params)
  model = models.create(name, ranks=ranks)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return model, ocp.StandardCheckpointer().restore(checkpoint, abstract)


def test_export_command(tmp_path):
  dense, variables = saved_projected_dense("resnet20", tmp_path / "dense")
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))

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
  compact, compact_vars = restored("resnet20", variables["params"],
                                   out / "ranks.json", out / "compact")
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

  # The serving artifact, loaded where lrpet_jax cannot be imported, gives
  # the compact model's logits on raw pixels.
  pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  np.save(tmp_path / "pixels.npy", pixels)
  loader = (
      "import sys\n"
      "sys.modules['lrpet_jax'] = None  # not importable here\n"
      "try:\n"
      "  import lrpet_jax\n"
      "  raise SystemExit('lrpet_jax was importable')\n"
      "except ImportError:\n"
      "  pass\n"
      "import jax, numpy as np\n"
      f"fn = jax.export.deserialize(open({str(out / 'serving' / 'model.jax_export')!r}, 'rb').read())\n"
      f"np.save({str(tmp_path / 'served.npy')!r}, fn.call(np.load({str(tmp_path / 'pixels.npy')!r})))\n")
  served = subprocess.run([sys.executable, "-c", loader], capture_output=True,
                          text=True, timeout=300, check=False, cwd=tmp_path)
  assert served.returncode == 0, served.stderr[-3000:]
  mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2023, 0.1994,
                                                            0.2010])
  spec = json.loads((out / "serving" / "spec.json").read_text())
  assert spec["input"]["shape"] == ["b", 32, 32, 3]
  assert spec["input"]["normalization"] == {"mean": list(mean),
                                            "std": list(std)}
  assert rel_err(np.load(tmp_path / "served.npy"), compact.apply(
      compact_vars, ((pixels / 255 - mean) / std).astype(np.float32),
      train=False)) <= 1e-4

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
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "r20", dense.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  checkpointer.wait_until_finished()
  result = run_export(f"--variables={tmp_path / 'r20'}",
                      f"--workdir={tmp_path / 'o'}", "--model=resnet32",
                      "--ratio=0.5")
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert "--model=resnet32" in last and "another model" in last
  assert len(last) < 300
  result = run_export(f"--variables={tmp_path}", f"--workdir={tmp_path / 'o'}",
                      "--model=resnet99", "--ratio=0.5")
  assert result.returncode == 2 and "model: unknown 'resnet99'" in result.stderr
  other = "gpu" if jax.default_backend() == "cpu" else "cpu"
  result = run_export(f"--variables={tmp_path / 'r20'}",
                      f"--workdir={tmp_path / 'o'}", "--model=resnet20",
                      "--ratio=0.5", f"--tune_for={other}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: tune_for: '{other}' but this machine's backend is")
  assert not (tmp_path / "o").exists()


def test_tuned_export_is_exact_and_served(tmp_path):
  dense, variables = saved_projected_dense("resnet8", tmp_path / "dense")
  out = tmp_path / "out"
  rule = selection.RankRule(ratio=0.54)
  report = from_checkpoint.compact_from_checkpoint(
      str(tmp_path / "dense"), str(out), "resnet8", rule=rule,
      tune_for=jax.default_backend(), batch=2)
  tuning = json.loads((out / "tuning_report.json").read_text())
  assert tuning == json.loads(json.dumps(report["tuning"]))
  assert tuning["batch"] == 2 and len(tuning["layers"]) == 7
  assert "whole model, batch 2" in (out / "tuning_report.txt").read_text()
  # The tuned checkpoint restores with tuned_ranks.json and is exact.
  model, tuned_vars = restored("resnet8", variables["params"],
                               out / "tuned_ranks.json", out / "tuned")
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  want = dense.apply(variables, x, train=False)
  assert rel_err(model.apply(tuned_vars, x, train=False), want) <= 1e-4
  # serving/ holds the tuned model.
  spec = json.loads((out / "serving" / "spec.json").read_text())
  assert spec["form"].startswith(f"tuned for {jax.default_backend()}")
  served = jax.export.deserialize(
      (out / "serving" / "model.jax_export").read_bytes())
  mean, std = np.array(spec["input"]["normalization"]["mean"]), np.array(
      spec["input"]["normalization"]["std"])
  pixels = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), np.uint8)
  x = jnp.asarray((pixels / 255 - mean) / std, jnp.float32)  # by hand
  want = dense.apply(variables, x, train=False)
  assert rel_err(served.call(pixels), want) <= 1e-4
  # Tuned and served in bfloat16: the same function to bfloat16 precision.
  from_checkpoint.compact_from_checkpoint(
      str(tmp_path / "dense"), str(tmp_path / "bf16"), "resnet8", rule=rule,
      tune_for=jax.default_backend(), batch=2, compute_dtype="bfloat16")
  served = jax.export.deserialize(
      (tmp_path / "bf16" / "serving" / "model.jax_export").read_bytes())
  assert json.loads((tmp_path / "bf16" / "serving" / "spec.json").read_text())[
      "compute_dtype"] == "bfloat16"
  assert rel_err(served.call(pixels), want) <= 2e-2


def test_ranks_dict_round_trip():
  params = {"a": {"kernel": np.zeros((3, 3, 4, 8)), "bias": np.zeros(8)}}
  ranks = lrpet_jax.uniform_ranks(params, 0.5)
  mapping = ranks_lib.Ranks.of_tree(ranks).to_json()
  assert mapping == {"a/kernel": 4}
  assert ranks_lib.Ranks(mapping).tree(params) == ranks


def test_a_checkpoint_not_at_its_ranks_is_said_or_refused(tmp_path, capsys):
  """A dense run never projected: the export truncates; it says so with the
  energy each layer keeps (float64 NumPy SVD by hand), --strict refuses
  before writing."""
  dense = models.create("resnet8")
  variables = dense.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "dense", variables)
  checkpointer.wait_until_finished()
  rule = selection.RankRule(ratio=0.54)
  with pytest.raises(ValueError) as e:
    from_checkpoint.compact_from_checkpoint(
        str(tmp_path / "dense"), str(tmp_path / "strict"), "resnet8",
        rule=rule, strict=True)
  assert str(e.value).startswith("strict: 7 of 7 kernels are not at their"
                                 " export rank (energy kept ")
  assert not (tmp_path / "strict").exists()
  # The worst layer's energy, by hand.
  ranks = lrpet_jax.uniform_ranks(variables["params"], 0.54)
  kept = []
  for key, rank in lrpet_jax.core._trees.leaves_by_path(ranks).items():
    w = np.asarray(lrpet_jax.core._trees.leaves_by_path(
        variables["params"])[key], np.float64)
    s = np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)
    kept.append((np.sum(s[:rank] ** 2) / np.sum(s ** 2), "/".join(key)))
  energy, name = min(kept)
  assert f"(energy kept {name} {energy:.3f}, " in str(e.value)
  report = from_checkpoint.compact_from_checkpoint(
      str(tmp_path / "dense"), str(tmp_path / "out"), "resnet8", rule=rule)
  assert report["truncates"]
  warning = [l for l in capsys.readouterr().err.splitlines()
             if l.startswith("warning: ")]
  assert warning == ["warning: " + str(e.value)[len("strict: "):]]
  # A projected checkpoint exports without a word.
  saved_projected_dense("resnet8", tmp_path / "projected")
  report = from_checkpoint.compact_from_checkpoint(
      str(tmp_path / "projected"), str(tmp_path / "out2"), "resnet8",
      rule=rule, strict=True)
  assert not report["truncates"]
