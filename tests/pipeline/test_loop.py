"""The training loop in process, on a tiny model (flax examples' train_test)."""

import json
import logging
import signal

import jax
import numpy as np
import optax
import pytest

import lrpet_jax
from lrpet_jax import models
from lrpet_jax.core import _trees
from lrpet_jax.pipeline import ending
from lrpet_jax.pipeline import methods
from lrpet_jax.pipeline import steps
from lrpet_jax.pipeline import train


def read_rows(workdir):
  return [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]


def final_messages(caplog):
  return [m.split(":")[0] for m in caplog.messages if m.startswith("final ")]


@pytest.mark.slow  # over 6 s: the fast tier stays near 2 minutes
def test_lrpet_loop_in_process(tiny_config, tmp_path, caplog):
  workdir = tmp_path / "w"
  handlers = [signal.getsignal(s) for s in train.StopRequested.SIGNALS]
  with caplog.at_level(logging.INFO):
    summary = train.train_and_evaluate(tiny_config(), str(workdir))
  # The caller's signal handlers are back.
  assert [signal.getsignal(s) for s in train.StopRequested.SIGNALS] == handlers
  assert summary["steps"] == 6 and summary["method"] == "lrpet"
  assert summary["steps_per_epoch"] == 3
  # A projection at the end of each epoch, an evaluation every 3 steps.
  rows = read_rows(workdir)
  assert [r["step"] for r in rows if "projection_energy_kept_mean" in r] == [
      3, 6]
  assert [r["step"] for r in rows if "test_top1" in r] == [3, 6]
  # Logs at the first call end at or past each multiple of 2 (calls end at
  # projections and evaluations, not at logs): steps 0-1 | 2 (projects) |
  # 3-4 | 5 (projects); the last step always logs.
  assert [r["step"] for r in rows if "train_loss" in r] == [2, 5, 6]
  # The method's five final phases, each logged once, in order.
  assert final_messages(caplog) == [f"final {i}/5" for i in range(1, 6)]
  # The final projection: every ranked kernel of the saved dense model has
  # rank <= its rank (float64 NumPy SVD), and the compact model is its exact
  # factorization (the same test accuracy).
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  dense = ocp.StandardCheckpointer().restore(workdir / "dense_final")
  ranks = json.loads((workdir / "ranks.json").read_text())
  assert len(ranks) == 7  # ResNet-8's convolutions
  for path, rank in ranks.items():
    w = dense["params"]
    for key in path.split("/"):
      w = w[key]
    s = np.linalg.svd(np.asarray(w, np.float64).reshape(-1, w.shape[-1]),
                      compute_uv=False)
    assert s[rank:].max(initial=0.0) <= 1e-5 * s[0], path
  assert summary["dense_accuracy"] == summary["compact_accuracy"]

  # The finished run, loaded back in three lines: the same accuracies from
  # its saved models on its test data; the served model predicts as the
  # compact one (BatchNorm folded: equal up to rounding, so at most one of
  # the 16 test images may flip).
  import docs  # pylint: disable=g-import-not-at-top
  exec(docs.block("docs/training.md", "load_run(").replace(  # pylint: disable=exec-used
      '"/tmp/lrpet_smoke"', repr(str(workdir))), {})
  run = lrpet_jax.load_run(workdir)
  assert run.evaluate("compact")["top1"] == summary["compact_accuracy"]
  assert run.evaluate("dense")["top1"] == summary["dense_accuracy"]
  assert abs(run.evaluate("serving")["top1"]
             - summary["compact_accuracy"]) <= 1 / 16
  state = run.training_state()
  assert isinstance(state, steps.TrainState) and int(state.step) == 6
  assert isinstance(state.opt_state[1], optax.ConditionallyTransformState)
  assert int(state.opt_state[1].step) == 6


class TruncateAtEnd(methods.Dense):
  """Plain SGD on the dense model, one truncation after training (no
  retraining): a new method is a class and a registry entry."""

  NAME = "truncate_at_end"
  FINAL_PHASES = (ending.FINAL_PROJECTION, ending.PRECISE_BN,
                  ending.DENSE_MODEL, ending.COMPACT_EXPORT,
                  ending.COMPACT_EVALUATION)


@pytest.mark.slow
def test_a_new_method_is_a_class_and_a_registry_entry(tiny_config, tmp_path,
                                                      caplog, monkeypatch):
  monkeypatch.setitem(methods.REGISTRY, TruncateAtEnd.NAME, TruncateAtEnd)
  workdir = tmp_path / "w"
  with caplog.at_level(logging.INFO):
    summary = train.train_and_evaluate(
        tiny_config(method=TruncateAtEnd.NAME), str(workdir))
  assert summary["method"] == "truncate_at_end"
  # Never projected while training; its own five final phases.
  assert not any("projection_energy_kept_mean" in r for r in read_rows(workdir))
  assert final_messages(caplog) == [f"final {i}/5" for i in range(1, 6)]
  assert summary["dense_accuracy"] == summary["compact_accuracy"]
  assert 0.3 < summary["macs_reduction"] < 0.6


def final_state(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  latest = max(int(p.name) for p in (workdir / "checkpoints").iterdir()
               if p.name.isdigit())
  return ocp.StandardCheckpointer().restore(
      workdir / "checkpoints" / str(latest) / "state")


@pytest.mark.slow
def test_bfloat16_trains_and_checkpoints_float32(tiny_config, tmp_path):
  workdir = tmp_path / "bf16"
  train.train_and_evaluate(tiny_config(
      compute_dtype="bfloat16", log_every_steps=1, steps_per_call=1),
                           str(workdir))
  losses = [r["train_loss"] for r in read_rows(workdir) if "train_loss" in r]
  assert len(losses) == 6 and losses[-1] < losses[0], losses
  state = final_state(workdir)
  dtypes = {str(np.asarray(x).dtype) for x in jax.tree.leaves(
      (state["params"], state["batch_stats"], state["opt_state"]))}
  assert dtypes <= {"float32", "int32"} and "float32" in dtypes, dtypes


@pytest.mark.slow
def test_validation_split_selects_checkpoints(tiny_config, tmp_path):
  # 8 of the 24 training images held out (2 steps an epoch of 8); keep 1
  # latest + the best by validation accuracy; num_steps overrides
  # num_epochs=0.
  workdir = tmp_path / "val"
  summary = train.train_and_evaluate(tiny_config(
      val_examples=8, keep_checkpoints=1, checkpoint_every_steps=1,
      num_epochs=0), str(workdir))
  evals = {r["step"]: r for r in read_rows(workdir) if "val_top1" in r}
  assert sorted(evals) == [1, 2, 3, 4, 5, 6]
  assert summary["steps_per_epoch"] == 2 and summary["val_examples"] == 8
  kept = {int(p.name) for p in (workdir / "checkpoints").iterdir()
          if p.name.isdigit()}
  best_val = max(evals[s]["val_top1"] for s in evals)
  # The latest, plus one checkpoint of the best validation accuracy (the
  # first of them if tied), whatever the test accuracy says.
  assert 6 in kept and len(kept) <= 2
  best_steps = [s for s in sorted(evals) if evals[s]["val_top1"] == best_val]
  assert kept & set(best_steps), (kept, best_steps, evals)
  assert 0.0 <= summary["final_val_accuracy"] <= 1.0


def truncated_reference(kernel, rank):
  """Float64 NumPy truncated SVD of a kernel's (prod(...), c_out) matrix."""
  w = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
  u, sv, vt = np.linalg.svd(w, full_matrices=False)
  return ((u[:, :rank] * sv[:rank]) @ vt[:rank]).reshape(kernel.shape)


@pytest.mark.slow
def test_dense_baseline_then_decompose_and_retrain(tiny_config, tmp_path):
  dense_dir = tmp_path / "dense"
  summary = train.train_and_evaluate(tiny_config(method="dense"),
                                     str(dense_dir))
  assert summary["method"] == "dense" and summary["compact_accuracy"] is None
  assert summary["final_accuracy"] == summary["dense_accuracy"]
  assert summary["macs_reduction"] == 0.0
  assert not (dense_dir / "compact").exists()
  assert "projection" not in (dense_dir / "metrics.jsonl").read_text()

  # The decomposed init is the dense model with each kernel replaced by its
  # float64 truncated SVD: compare logits.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  dense_vars = ocp.StandardCheckpointer().restore(dense_dir / "dense_final")
  kernel = np.asarray(dense_vars["params"]["stage2_block0"]["conv2"]["kernel"])
  ranks = lrpet_jax.uniform_ranks(dense_vars["params"], 0.54)
  r = ranks["stage2_block0"]["conv2"]["kernel"]
  assert np.linalg.matrix_rank(kernel.reshape(-1, kernel.shape[-1])) > r
  flat_ranks = _trees.leaves_by_path(ranks)
  reference = jax.tree_util.tree_map_with_path(
      lambda p, x: (truncated_reference(x, flat_ranks[_trees.path_tuple(p)])
                    if flat_ranks.get(_trees.path_tuple(p)) else x),
      dense_vars["params"])
  init = methods.decomposed_variables(dense_dir / "dense_final",
                                      jax.eval_shape(lambda: dense_vars), ranks)
  x = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(
      models.create("resnet8", 4, ranks).apply(init, x, train=False),
      models.create("resnet8", 4).apply(
          {"params": reference, "batch_stats": dense_vars["batch_stats"]}, x,
          train=False), rtol=1e-4, atol=1e-4)

  tuned = tmp_path / "tuned"
  summary = train.train_and_evaluate(tiny_config(
      method="compact", init_from=str(dense_dir / "dense_final"),
      num_steps=4), str(tuned))
  assert summary["method"] == "compact" and summary["dense_accuracy"] is None
  assert summary["final_accuracy"] == summary["compact_accuracy"]
  assert 0.3 < summary["macs_reduction"] < 0.6
  assert (tuned / "compact").exists() and not (tuned / "dense_final").exists()
  # The compact architecture from a random init: same ranks, same cost.
  scratch = tmp_path / "scratch"
  from_scratch = train.train_and_evaluate(
      tiny_config(method="compact", num_steps=4), str(scratch))
  assert from_scratch["final_macs"] == summary["final_macs"]
  assert json.loads((scratch / "ranks.json").read_text()) == json.loads(
      (tuned / "ranks.json").read_text())
