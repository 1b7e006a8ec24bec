"""The experiment runner's plan and collection, and the report generator."""

import json

import pytest

from experiments import report
from experiments import run


def test_decompose_retrain_splits_the_same_schedule():
  # cpu: 6 epochs, lr 0.1 ×0.1 at epochs 3 and 4.5, decomposed at epoch 4.
  assert run.phases("decompose_retrain") == [
      ("dense", "decompose_dense"), ("finetune", "decompose_retrain")]
  dense = run.CONFIGS.get_config("cpu,decompose_dense")
  tune = run.CONFIGS.get_config("cpu,decompose_retrain")
  assert dense.method == "dense" and dense.num_epochs == 4
  assert tuple(dense.lr_boundaries_epochs) == (3,)
  assert tune.method == "compact" and tune.num_epochs == 2
  assert tuple(tune.lr_boundaries_epochs) == (0.5,)
  assert tune.learning_rate == pytest.approx(0.01)
  assert tune.ratio == dense.ratio == 0.54
  cmd = run.command("W", "cpu", "decompose_retrain", 3, "D/dense_final")
  assert cmd[3:] == ["--config=configs/claims.py:cpu,decompose_retrain",
                     "--workdir=W", "--config.seed=3",
                     "--config.init_from=D/dense_final"]


def test_arms_differ_from_lrpet_in_one_field():
  lrpet = run.CONFIGS.get_config("cpu,lrpet").to_dict()
  for arm, field, value in (("lrpet_no_et", "energy_transfer", False),
                            ("lrpet_no_bn", "bn_rectification", False),
                            ("dense", "method", "dense"),
                            ("compact_scratch", "method", "compact"),
                            ("lrpet_ratio0.7", "ratio", 0.7)):
    config = run.CONFIGS.get_config(f"cpu,{arm}").to_dict()
    changed = {k for k in set(config) | set(lrpet)
               if config.get(k) != lrpet.get(k)} - {"log_spectra"}
    assert changed == {field} and config[field] == value, arm
  # The budget ladder: the same arms at 15 and 40 epochs on all images.
  for scale, epochs in (("ladder15", 15), ("ladder40", 40)):
    config = run.CONFIGS.get_config(f"{scale},lrpet")
    assert config.num_epochs == epochs and config.train_subset == 0
  with pytest.raises(ValueError, match="unknown arm 'nope'"):
    run.CONFIGS.get_config("cpu,nope")
  with pytest.raises(ValueError, match="SCALE,ARM"):
    run.CONFIGS.get_config("tpu,lrpet")


def test_plan_and_parallel_launch(tmp_path, monkeypatch):
  plan = run.plan_runs("cpu")
  assert plan[:2] == [("lrpet", 0), ("dense", 0)]
  assert ("lrpet_ratio0.8", 0) in plan and ("lrpet_ratio0.8", 1) not in plan
  assert run.plan_runs("ladder15", only=["dense", "lrpet"]) == [
      ("lrpet", 0), ("dense", 0)]
  # --parallel=4: four runs at once, each with its share of device memory.
  started = []
  monkeypatch.setattr(run, "run_one", lambda scale, m, s, w, r, env:
                      started.append((m, env["XLA_PYTHON_CLIENT_MEM_FRACTION"])))
  run.main(["--scale=ladder40", "--parallel=4", f"--workroot={tmp_path}",
            f"--results={tmp_path}"])
  assert sorted(m for m, _ in started) == sorted(run.METHODS)
  assert {f for _, f in started} == {"0.225"}


def _workdir(path, steps, accuracy, steps_per_epoch=10, energy=None,
             method="lrpet"):
  path.mkdir(parents=True)
  summary = {"steps": steps, "steps_per_epoch": steps_per_epoch,
             "method": method, "wall_time_s": 5.0,
             "dense_accuracy": accuracy if method != "compact" else None,
             "compact_accuracy": accuracy if method != "dense" else None,
             "final_accuracy": accuracy, "dense_macs": 100.0,
             "final_macs": 50.0 if method != "dense" else 100.0,
             "dense_params": 10.0,
             "final_params": 6.0 if method != "dense" else 10.0,
             "device": "1x cpu", "project_dense": False}
  (path / "summary.json").write_text(json.dumps(summary))
  (path / "config.json").write_text(json.dumps({"method": method,
                                                "model": "resnet20"}))
  rows = [{"step": s, "test_top1": accuracy * s / steps,
           "test_top1_pre_projection": accuracy * s / steps + 0.01}
          for s in range(steps_per_epoch, steps + 1, steps_per_epoch)]
  rows += [{"step": s, "projection_energy_kept_mean": e,
            "projection_energy_kept_min": e / 2}
           for s, e in (energy or [])]
  (path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))


def test_run_collects_finished_workdirs_without_training(tmp_path):
  root = tmp_path / "runs"
  _workdir(root / "cpu" / "decompose_retrain_seed0" / "dense", 40, 0.4,
           method="dense")
  _workdir(root / "cpu" / "decompose_retrain_seed0" / "finetune", 20, 0.3,
           method="compact")
  # Three projections: the record keeps the first and the last.
  (root / "cpu" / "decompose_retrain_seed0" / "finetune" / "spectra.json"
   ).write_text(json.dumps({"steps": [10, 20, 30], "layers": {"c/kernel": {
       "rank": 1, "before": [[3.0, 1.0], [2.0, 1.0], [1.5, 0.5]],
       "after": [[3.0, 0.0], [2.0, 0.0], [1.5, 0.0]]}}}))
  run.run_one("cpu", "decompose_retrain", 0, root, tmp_path / "results")
  record = json.loads(
      (tmp_path / "results" / "cpu" / "decompose_retrain_seed0.json")
      .read_text())
  # Phase 2's evaluations are offset by phase 1's 40 steps.
  assert [p["step"] for p in record["test_curve"]] == [10, 20, 30, 40, 50, 60]
  assert record["final"]["final_accuracy"] == 0.3
  assert record["test_curve"][0]["test_top1_pre_projection"] == pytest.approx(
      0.4 * 10 / 40 + 0.01)
  assert record["project_dense"] is False
  assert record["wall_time_s"] == 10.0 and record["steps_per_epoch"] == 10
  assert "--config.init_from=" in " ".join(record["commands"][1])
  assert [c["method"] for c in record["configs"]] == ["dense", "compact"]
  assert record["spectra"] == {"steps": [10, 30], "layers": {"c/kernel": {
      "rank": 1, "before": [[3.0, 1.0], [1.5, 0.5]],
      "after": [[3.0, 0.0], [1.5, 0.0]]}}}


def test_report_tables_and_plots(tmp_path):
  results = tmp_path / "results" / "cpu"
  results.mkdir(parents=True)
  command = ["-m", "lrpet_jax.main",
             "--config=configs/claims.py:cpu,lrpet"]
  config = run.CONFIGS.get_config("cpu,lrpet").to_dict()

  def record(method, seed, accuracy, energy=(), spectra=None,
             curve=(0.2, None), project_dense=False):
    name = f"{method}_seed{seed}"
    final = {"final_accuracy": accuracy, "dense_accuracy": accuracy,
             "compact_accuracy": accuracy, "dense_macs": 40e6,
             "final_macs": 20e6, "dense_params": 270e3, "final_params": 130e3,
             "device": "1x cpu", "steps": 60, "wall_time_s": 100.0 + seed}
    if method == "lrpet_ratio0.8":
      final.update(final_macs=8e6, final_params=50e3)
    (results / f"{name}.json").write_text(json.dumps({
        "run": name, "seed": seed, "project_dense": project_dense,
        "commands": [command], "configs": [config], "phases": [final],
        "final": final, "wall_time_s": 100.0 + seed, "steps_per_epoch": 10,
        "commits": ["abc"], "spectra": spectra,
        "test_curve": [{"step": 10, "test_top1": curve[0]},
                       {"step": 20, "test_top1": curve[1] or accuracy}],
        "energy_kept": [{"step": s, "mean": e, "min": e}
                        for s, e in energy]}))

  layer = {"rank": 2, "before": [[3.0, 2.0, 1.0]] * 2,
           "after": [[3.0, 2.0, 0.0]] * 2}
  spectra = {"steps": [10, 20], "layers": {f"l{i}/kernel": layer
                                           for i in range(4)}}
  record("lrpet", 0, 0.50, [(10, 0.6), (20, 0.9)], spectra)
  record("lrpet", 1, 0.60, [(10, 0.7), (20, 0.95)])
  record("decompose_retrain", 0, 0.40)
  record("decompose_retrain", 1, 0.41)
  record("lrpet_ratio0.8", 0, 0.30)
  record("compact_scratch", 0, 0.15)  # best epoch 20%: learned
  record("compact_scratch", 1, 0.12)  # best epoch 20%: learned
  path = report.render(tmp_path / "results", tmp_path)
  text = path.read_text()
  # Hand-computed: mean(50, 60) = 55, sample std = 7.07; 1 − 20/40 = 50%.
  assert "| **55.00 ± 7.07** | 55.00 ± 7.07 | 20.00 | 130.0 | 50.0% | 100 |" in (
      text)
  assert "| Decompose-and-retrain | 2 | **40.50 ± 0.71** | — |" in text
  # Paired: seed 0 50 − 40 = +10, seed 1 60 − 41 = +19, mean +14.5.
  assert ("+10.00 (seed 0), +19.00 (seed 1); mean +14.50, the same sign in all"
          " 2 seeds") in text
  assert "| 0.8 | 80.0% | 81.5% | 30.00 | 30.00 (1) |" in text
  assert ("- **LRPET is competitive with re-training methods**: supported"
          " (LRPET − decompose-and-retrain, top-1 per seed: cpu (6 epochs):"
          " +10.00, +19.00 pp;") in text
  assert "| 0.54 | 50.0% | 51.9% | 50.00 | 55.00 ± 7.07 (2) |" in text
  for name in ("accuracy_vs_epoch", "energy_kept", "accuracy_vs_macs",
               "singular_spectra"):
    png = tmp_path / "plots" / f"cpu_{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert f"plots/cpu_{name}.png" in text
  assert "93.27%" in text and "JPEG re-encoded" in text
  assert "Did not learn" not in text
  record("compact_scratch", 1, 0.12, curve=(0.11, 0.12))
  text = report.render(tmp_path / "results", tmp_path).read_text()
  assert "Did not learn (best per-epoch test top-1 under 20%" in text
  assert "compact_scratch_seed1 (12.0%)." in text

  # A run that projected the classifier gets a section of its own: the
  # default section's tables and comparisons are unchanged.
  (results / "dense_seed0.json").unlink(missing_ok=True)
  record("dense", 0, 0.90, project_dense=True)
  text = report.render(tmp_path / "results", tmp_path).read_text()
  default, head = text.split(
      "## Scale `cpu`, classifier projected (before the faithful default)")
  assert "Dense baseline" not in default and "Dense baseline" in head
  assert "| **55.00 ± 7.07** | 55.00 ± 7.07 |" in default
  assert "**Classifier projected.**" in head
  assert (tmp_path / "plots" / "cpu_head_projected_accuracy_vs_epoch.png"
          ).exists()


def test_mechanism_verdicts_from_paired_differences(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from experiments import mechanisms  # pylint: disable=g-import-not-at-top
  assert mechanisms._verdict(np.array([[0.1, 0.2], [0.3, 0.01]])) == "supported"
  assert mechanisms._verdict(np.array([-0.1, -0.2])) == "contradicted"
  assert mechanisms._verdict(np.array([0.1, -0.2, 0.3])) == "not decided"

  # Two seeds; rectification halves the error and adds a point of top-1.
  def rows(ratio, seed):
    out = []
    for variant, rect in (("rect_et", 1), ("plain_et", 0), ("rect", 1),
                          ("plain", 0)):
      out.append({"ratio": ratio, "variant": variant,
                  "layer_errors": {}, "mean_layer_error": 0.2 - 0.1 * rect,
                  "top1_running_bn": 0.5 + 0.01 * rect + 0.001 * seed,
                  "top1_precise_bn": 0.6 + 0.01 * rect})
    return out
  bn_record = {"ratios": [0.3, 0.7], "images": 8, "bn_batches": 2, "runs": [
      {"seed": s, "model": "resnet20", "dense_top1": 0.7,
       "results": rows(0.3, s) + rows(0.7, s)} for s in (0, 1)]}
  # No ET: gradients shrink to 0.8 after a projection; with ET to 0.9.
  def et_run(seed, et):
    ratio = 0.9 if et else 0.8
    return {"seed": seed, "energy_transfer": et,
            "grad_norms": [[1.0, 2.0]] * 8, "projections": [
                {"step": 4, "grad_ratio": [ratio, ratio],
                 "removed_norm": [0.0 if et else 0.1] * 2, "loss_jump": 0.1},
                {"step": 8, "grad_ratio": None,
                 "removed_norm": [0.0, 0.0], "loss_jump": 0.0}]}
  et_record = {"scale": {"model": "resnet20", "train_subset": 64,
                         "num_epochs": 2, "ratio": 0.54}, "window": 2,
               "runs": [et_run(s, et) for s in (0, 1) for et in (True, False)]}
  (tmp_path / "mechanisms").mkdir()
  (tmp_path / "mechanisms" / "bn_rectification.json").write_text(
      json.dumps(bn_record))
  (tmp_path / "mechanisms" / "energy_transfer.json").write_text(
      json.dumps(et_record))
  section, verdicts = mechanisms.lines(tmp_path, tmp_path / "plots")
  text = "\n".join(section)
  assert [finding for finding, _ in verdicts] == [
      "BN rectification improves the low-rank approximation",
      "Energy transfer alleviates the gradient vanishing of projection"]
  assert verdicts[1][1].startswith("supported (that energy transfer raises")
  assert "- BatchNorm-output error: **supported**" in text
  assert "| 0.3 | on | 0.1000 | 0.2000 | +0.1000 ± 0.0000 | +1.00 ± 0.00 |" in text
  assert "- projection makes gradients vanish (no-ET ratio < 1): **supported**" in text
  assert "- energy transfer raises the post/pre gradient ratio: **supported**" in text
  assert "| 1 (4) | 0.900 | 0.800 | +0.100 ± 0.000 |" in text
  assert (tmp_path / "plots" / "mechanism_energy_transfer.png").is_file()
  # The scale sections of the report skip the mechanisms folder.
  assert report.load(tmp_path) == {}


def test_budget_ladder_pairs_gaps_by_seed_across_budgets(tmp_path):
  def record(scale, method, seed, accuracy):
    final = {"final_accuracy": accuracy, "dense_accuracy": accuracy,
             "dense_macs": 40e6, "final_macs": 20e6, "dense_params": 270e3,
             "final_params": 130e3, "device": "1x cpu", "wall_time_s": 1.0}
    configs = [run.CONFIGS.get_config(f"{scale},{arm}").to_dict()
               for _, arm in run.phases(method)]
    (tmp_path / scale).mkdir(exist_ok=True)
    (tmp_path / scale / f"{method}_seed{seed}.json").write_text(json.dumps({
        "run": f"{method}_seed{seed}", "seed": seed, "project_dense": False,
        "commands": [["-m", "lrpet_jax.main"]], "configs": configs,
        "phases": [final], "final": final, "wall_time_s": 1.0,
        "steps_per_epoch": 10, "commits": ["abc"], "spectra": None,
        "test_curve": [{"step": 10, "test_top1": accuracy}],
        "energy_kept": []}))

  # dense − LRPET: 6 epochs 5 and 3 points, 12 epochs 2 and 4 points.
  for scale, dense, lrpet in (("cpu", (0.50, 0.53), (0.45, 0.50)),
                              ("cpu12", (0.60, 0.64), (0.58, 0.60))):
    for seed in (0, 1):
      record(scale, "dense", seed, dense[seed])
      record(scale, "lrpet", seed, lrpet[seed])
  (setting, rungs), = report.ladders(report.load(tmp_path))
  assert setting[:1] + setting[2:] == ("resnet20", 10000, 5000, 0.54)
  assert [(e, s) for e, s, _ in rungs] == [(6, "cpu"), (12, "cpu12")]
  change, verdict = report.gap_change(rungs, "dense", "lrpet")
  assert change == pytest.approx({0: -3.0, 1: 1.0}) and verdict == "not decided"
  text = "\n".join(report.ladder_lines(report.load(tmp_path)))
  assert "| 6 (`cpu`) | 0, 1 | 51.50 ± 2.12 | 47.50 ± 3.54 | +5.00, +3.00 | +4.00 |" in text
  assert "changed by -3.00 (seed 0), +1.00 (seed 1) pp: **not decided**" in text
  record("cpu12", "lrpet", 1, 0.62)  # the gap at 12 epochs: 2 points
  change, verdict = report.gap_change(
      report.ladders(report.load(tmp_path))[0][1], "dense", "lrpet")
  assert change == pytest.approx({0: -3.0, 1: -1.0}) and verdict == "narrows"
  question, answer = report.ladder_verdict(report.load(tmp_path))
  assert answer == (
      "dense − LRPET narrows from 6 (cpu) → 12 (cpu12) epochs (resnet20, 10000"
      " training images): per seed +5.00, +3.00 → +2.00, +2.00 pp (change"
      " -3.00, -1.00)")
  # LRPET − decompose-and-retrain: within a point at 6 epochs, 2 and 3 points
  # behind at 12: the scales disagree, and each is named.
  for scale, accuracies in (("cpu", (0.445, 0.502)), ("cpu12", (0.60, 0.65))):
    for seed in (0, 1):
      record(scale, "decompose_retrain", seed, accuracies[seed])
  _, answer = report.competitive_verdict(report.load(tmp_path))
  assert answer.startswith(
      "mixed: supported at cpu (6 epochs); contradicted at cpu12 (12 epochs)"
      " (LRPET − decompose-and-retrain, top-1 per seed: cpu (6 epochs): +0.50,"
      " -0.20 pp; cpu12 (12 epochs): -2.00, -3.00 pp;")


def test_rank_policy_section_pairs_seeds_and_shows_latency(tmp_path):
  results = tmp_path / "results" / "cpu12"
  results.mkdir(parents=True)
  config = run.CONFIGS.get_config("cpu12,lrpet").to_dict()
  layers = {f"l{i}/kernel": {"rank": r, "full_rank": 16, "uniform_rank": 7}
            for i, r in enumerate((4, 9, 12))}

  def record(method, seed, accuracy, final_macs):
    name = f"{method}_seed{seed}"
    final = {"final_accuracy": accuracy, "dense_accuracy": accuracy,
             "compact_accuracy": accuracy, "dense_macs": 40e6,
             "final_macs": final_macs, "dense_params": 270e3,
             "final_params": 130e3, "device": "1x cpu", "steps": 60,
             "wall_time_s": 100.0}
    decision = ({"policy": method.split("_")[1][:6], "step": 9,
                 "macs_reduction": 1 - final_macs / 40e6, "layers": layers}
                if method != "lrpet" else None)
    (results / f"{name}.json").write_text(json.dumps({
        "run": name, "seed": seed, "project_dense": False,
        "commands": [["-m", "lrpet_jax.main"]], "configs": [config],
        "phases": [final], "final": final, "wall_time_s": 100.0,
        "steps_per_epoch": 10, "commits": ["abc"], "spectra": None,
        "test_curve": [{"step": 10, "test_top1": accuracy}],
        "energy_kept": [], "ranks": {k: v["rank"] for k, v in layers.items()},
        "rank_decision": decision}))

  for seed, (uniform, budget, energy) in enumerate(
      ((0.50, 0.52, 0.49), (0.60, 0.615, 0.62))):
    record("lrpet", seed, uniform, 20e6)
    record("lrpet_budget", seed, budget, 20e6)
    record("lrpet_energy0.8", seed, energy, 22e6)
    # More accurate in both seeds, but cutting 2.5 and 4 points fewer MACs.
    record("lrpet_energy0.9", seed, uniform + 0.01, (21e6, 21.6e6)[seed])
  latency = tmp_path / "results" / "latency"
  latency.mkdir()
  (latency / "cpu12.json").write_text(json.dumps({
      "model": "resnet20", "batch": 256, "repeats": 15, "backend": "cpu",
      "device": "2-core cpu", "sets": {"uniform": {}, "lrpet_budget_seed0": {}},
      "ms": {"dense": 100.0, "uniform compact": 125.0, "uniform tuned": 90.0,
             "lrpet_budget_seed0 compact": 80.0,
             "lrpet_budget_seed0 tuned": 50.0}}))
  text = report.render(tmp_path / "results", tmp_path).read_text()
  # Budget: +2.00 and +1.50 points, both at least a point; energy: -1.00,
  # +2.00: the sign differs.
  assert ("budget policy (most energy at the uniform ratio's MACs) at cpu12:"
          " better by at least 1 point in every seed (+2.00, +1.50 pp; 50.0%,"
          " 50.0% fewer MACs)") in text
  assert ("energy policy (each layer keeps 0.8) at cpu12: not decided (the"
          " sign differs between seeds) (-1.00, +2.00 pp; 45.0%, 45.0% fewer"
          " MACs)") in text
  assert ("energy policy (each layer keeps 0.9) at cpu12: more accurate in"
          " every seed but with a smaller MACs cut in 2 of 2 (by 2.5 to 4.0"
          " points): not at equal cost (+1.00, +1.00 pp; 47.5%, 46.0% fewer"
          " MACs)") in text
  assert "| energy policy (each layer keeps 0.8) | 0 | 50.00 | 49.00 |" in text
  assert "| uniform | 125.0 | 0.80 | 90.0 | 1.11 |" in text
  assert "| lrpet_budget_seed0 | 80.0 | 1.25 | 50.0 | 2.00 |" in text
  assert (tmp_path / "plots" / "cpu12_rank_policies.png").exists()
  # The latency record is not a scale of runs.
  assert "## Scale `latency`" not in text


def test_latency_rank_sets_take_uniform_ranks_from_a_decision(tmp_path):
  from experiments import policy_latency  # pylint: disable=g-import-not-at-top
  results = tmp_path / "cpu12"
  results.mkdir()
  layers = {"a/kernel": {"rank": 3, "uniform_rank": 7},
            "b/kernel": {"rank": 9, "uniform_rank": 7}}
  write = lambda name, **r: (results / f"{name}.json").write_text(
      json.dumps({"run": name, **r}))
  write("lrpet_budget_seed0", ranks={"a/kernel": 3, "b/kernel": 9},
        rank_decision={"layers": layers})
  write("lrpet_seed0", ranks=None)  # a record older than the ranks field
  write("dense_seed0", ranks=None)
  assert policy_latency.rank_sets(tmp_path, "cpu12") == {
      "uniform": {"a/kernel": 7, "b/kernel": 7},
      "lrpet_budget_seed0": {"a/kernel": 3, "b/kernel": 9}}
  write("lrpet_seed0", ranks={"a/kernel": 6, "b/kernel": 6})  # its own ranks
  assert policy_latency.rank_sets(tmp_path, "cpu12")["uniform"] == {
      "a/kernel": 6, "b/kernel": 6}


def test_vit_verdict_by_hand():
  from experiments import vit_results  # pylint: disable=g-import-not-at-top
  # mean −0.5, sd 0.5, t(2) 4.303: half 4.303·0.5/√3 = 1.242 → [−1.74, +0.74].
  assert vit_results.verdict({0: -1.0, 1: -0.5, 2: 0.0}) == (
      "consistent with theirs (mean -0.50 pt, 95 % interval [-1.74, +0.74]"
      " over 3 seeds; theirs -0.58 pt)")
  # mean −3, sd 0.2: half 0.497 → [−3.50, −2.50], all below −0.58.
  assert vit_results.verdict({0: -3.0, 1: -3.2, 2: -2.8}).startswith(
      "LRPET loses more than in their table")
  assert vit_results.verdict({0: 1.0, 1: 1.2, 2: 0.8}).startswith(
      "LRPET loses less than in their table")
  assert vit_results.verdict({0: -1.0}).startswith("not decided")


def test_report_gives_a_vit_scale_its_own_section(tmp_path):
  results = tmp_path / "results" / "vit_cpu"
  results.mkdir(parents=True)
  config = run.CONFIGS.get_config("vit_cpu,lrpet").to_dict()
  for method, accuracies in (("dense", (0.44, 0.45)), ("lrpet", (0.43, 0.46))):
    for seed, accuracy in enumerate(accuracies):
      final = {"final_accuracy": accuracy, "dense_accuracy": accuracy,
               "compact_accuracy": accuracy, "dense_macs": 187.7e6,
               "final_macs": 140.5e6, "dense_params": 2.69e6,
               "final_params": 1.97e6, "device": "1x cpu",
               "wall_time_s": 10.0}
      name = f"{method}_seed{seed}"
      (results / f"{name}.json").write_text(json.dumps({
          "run": name, "seed": seed, "project_dense": False,
          "commands": [["-m", "lrpet_jax.main",
                        f"--config=configs/claims.py:vit_cpu,{method}",
                        "--workdir=/x"]],
          "configs": [config], "phases": [final], "final": final,
          "wall_time_s": 10.0, "steps_per_epoch": 39, "commits": ["abc"],
          "spectra": None, "energy_kept": [],
          "test_curve": [{"step": 39, "test_top1": accuracy}]}))
  text = report.render(tmp_path / "results", tmp_path).read_text()
  section = text.split("## Scale `vit_cpu`: the authors' ViT, dense against"
                       " LRPET")[1]
  # Paired: 43 − 44 = −1, 46 − 45 = +1: mean 0, sd 1.414, t(1) 12.706 → ±12.71.
  assert "-1.00 pt (seed 0), +1.00 pt (seed 1)" in section
  assert ("consistent with theirs (mean +0.00 pt, 95 % interval [-12.71,"
          " +12.71] over 2 seeds; theirs -0.58 pt)") in section
  assert "crop + flip only" in section and "93.27" not in section
  assert "no BatchNorm to rectify" in section
