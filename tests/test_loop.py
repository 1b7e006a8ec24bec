"""The training loop in process, on a tiny model (flax examples' train_test)."""

import json
import logging
import signal

import numpy as np
import optax
import pytest

import lrpet_jax
from lrpet_jax import ending
from lrpet_jax import methods
from lrpet_jax import train


def read_rows(workdir):
  return [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]


def final_messages(caplog):
  return [m.split(":")[0] for m in caplog.messages if m.startswith("final ")]


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
  run = lrpet_jax.load_run(workdir)
  assert run.evaluate("compact")["top1"] == summary["compact_accuracy"]
  assert run.evaluate("dense")["top1"] == summary["dense_accuracy"]
  assert abs(run.evaluate("serving")["top1"]
             - summary["compact_accuracy"]) <= 1 / 16
  state = run.training_state()
  assert isinstance(state, train.TrainState) and int(state.step) == 6
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
