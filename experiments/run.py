r"""Runs the paper-claims comparison and writes one JSON per run.

    python -m experiments.run --scale=cpu            # ~2 h on a 2-core CPU
    python -m experiments.run --scale=gpu            # one accelerator, ~10 min
    python -m experiments.report                     # RESULTS.md + plots

Every run is ``python -m lrpet_jax.main`` in a subprocess (one code path for
all scales) with the overrides below, in ``--workroot/<scale>/<run>``; its
summary, test accuracy per epoch, energy kept per projection and (LRPET)
singular spectra are collected into ``experiments/results/<scale>/<run>.json``.
Finished runs are skipped, so rerunning the command resumes the sweep, and an
interrupted training run resumes from its last checkpoint.

Methods (same model, data, epochs, learning-rate schedule and ranks):
  dense             no projection (the uncompressed baseline)
  lrpet             projection + energy transfer + BN rectification
  lrpet_no_et       without energy transfer
  lrpet_no_bn       without BN rectification
  decompose_retrain dense training for ``decompose_epoch`` epochs, truncated
                    SVD to the same ranks, the compact model fine-tuned for
                    the remaining epochs on the same learning-rate schedule
  compact_scratch   the compact architecture trained from a random init
  lrpet_ratio<r>    LRPET at another compression ratio (the sweep)
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Each scale: the base overrides of configs/cifar.py, the epoch at which
# decompose-and-retrain decomposes, the sweep ratios and the seeds.
SCALES = {
    "cpu": dict(
        overrides=dict(
            model="resnet20", dataset="image_folder:../shared/datasets/cifar10",
            train_subset=10000, test_subset=5000, num_epochs=6,
            lr_boundaries_epochs=(3, 4.5), ratio=0.54,
            bn_recompute_batches=20, log_every_steps=26),
        decompose_epoch=4, sweep=(0.3, 0.7, 0.8), seeds=(0, 1)),
    "gpu": dict(
        overrides=dict(
            model="resnet20", dataset="image_folder:../shared/datasets/cifar10",
            num_epochs=12, lr_boundaries_epochs=(6, 9), ratio=0.54,
            bn_recompute_batches=100, log_every_steps=100),
        decompose_epoch=8, sweep=(0.3, 0.7, 0.8), seeds=(0,)),
}

METHODS = ("lrpet", "dense", "decompose_retrain", "compact_scratch",
           "lrpet_no_et", "lrpet_no_bn")
# Overrides that turn the LRPET default into each method.
METHOD_OVERRIDES = {
    "lrpet": dict(log_spectra=True),
    "dense": dict(method="dense"),
    "lrpet_no_et": dict(energy_transfer=False),
    "lrpet_no_bn": dict(bn_rectification=False),
    "compact_scratch": dict(method="compact"),
}


def flag(key, value):
  if isinstance(value, tuple):
    value = "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1
                                                     else "") + ")"
  return f"--config.{key}={value}"


def command(workdir, overrides):
  return [sys.executable, "-m", "lrpet_jax.main",
          "--config=configs/cifar.py", f"--workdir={workdir}",
          *(flag(k, v) for k, v in overrides.items())]


def phases(scale, method, seed):
  """[(phase name, overrides)] of one run; two phases for decompose_retrain."""
  spec = SCALES[scale]
  base = dict(spec["overrides"], seed=seed)
  if method.startswith("lrpet_ratio"):
    return [("train", dict(base, ratio=float(method[len("lrpet_ratio"):])))]
  if method != "decompose_retrain":
    return [("train", dict(base, **METHOD_OVERRIDES[method]))]
  # The same lr schedule as the other methods, split at decompose_epoch.
  cut = spec["decompose_epoch"]
  epochs, bounds = base["num_epochs"], base["lr_boundaries_epochs"]
  lr = base.get("learning_rate", 0.1)
  decay = base.get("lr_decay", 0.1)
  before = tuple(b for b in bounds if b <= cut)
  after = tuple(b - cut for b in bounds if b > cut)
  dense = dict(base, method="dense", num_epochs=cut,
               lr_boundaries_epochs=before)
  tune = dict(base, method="compact", num_epochs=epochs - cut,
              lr_boundaries_epochs=after,
              learning_rate=round(lr * decay ** len(before), 12))
  return [("dense", dense), ("finetune", tune)]


def git_commit():
  out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT,
                       capture_output=True, text=True, check=False)
  dirty = subprocess.run(["git", "status", "--porcelain", "lrpet_jax"],
                         cwd=ROOT, capture_output=True, text=True, check=False)
  return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def starts(workdir):
  """The steps the training processes in ``workdir`` started at, in order."""
  log = workdir / "log.txt"
  if not log.exists():
    return []
  return [int(s) for s in re.findall(r"starting at step (\d+)",
                                     log.read_text(errors="replace"))]


def read_jsonl(path):
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def _refinished(workdir):
  """True if only the end of training was redone in ``workdir`` (a re-finish
  that found no usable checkpoint trains again from step 0)."""
  return ((workdir / "summary.trained.json").exists()
          and starts(workdir).count(0) == 1)


def _commits(workdir):
  """The commits whose code trained (and re-finished) ``workdir``."""
  read = lambda f: (workdir / f).read_text() if (workdir / f).exists() else None
  if (workdir / "summary.trained.json").exists() and not _refinished(workdir):
    return [read("refinish_commit.txt")]  # trained again from step 0
  return [c for c in (read("commit.txt"), read("refinish_commit.txt")) if c]


def collect(name, scale, seed, phase_dirs, commands):
  """The result record of a finished run, from its workdirs."""
  summaries = [json.loads((d / "summary.json").read_text())
               for d in phase_dirs]
  # A re-finished phase keeps the wall time of its training process, unless
  # the re-finish found no usable checkpoint and trained again from step 0.
  trained = [json.loads((d / "summary.trained.json").read_text())
             if _refinished(d) else s for d, s in zip(phase_dirs, summaries)]
  curve, energy, offset = {}, {}, 0
  for d, summary in zip(phase_dirs, summaries):
    # A step logged twice (a run trained again) keeps its latest record.
    for r in read_jsonl(d / "metrics.jsonl"):
      step = offset + r["step"]
      if "test_top1" in r:
        curve[step] = {"step": step, "test_top1": r["test_top1"]}
        if "test_top1_pre_projection" in r:
          curve[step]["test_top1_pre_projection"] = r[
              "test_top1_pre_projection"]
      if "projection_energy_kept_mean" in r:
        energy[step] = {"step": step,
                        "mean": r["projection_energy_kept_mean"],
                        "min": r["projection_energy_kept_min"]}
    offset += summary["steps"]
  curve = [curve[k] for k in sorted(curve)]
  energy = [energy[k] for k in sorted(energy)]
  final = summaries[-1]
  spectra = phase_dirs[-1] / "spectra.json"
  return {
      "run": name, "scale": scale, "seed": seed,
      # Whether the Dense classifier was projected too (not the authors'
      # choice; the default since the faithful-selection change is False).
      "project_dense": final["project_dense"],
      "commits": [c for d in phase_dirs for c in _commits(d)],
      "commands": commands, "phases": summaries,
      "final": final,
      "wall_time_s": sum(s["wall_time_s"] for s in trained),
      "refinished": [_refinished(d) for d in phase_dirs],
      # Resumed after an interruption: wall_time_s covers the last process only.
      "resumed": [not _refinished(d) and bool(starts(d))
                  and starts(d)[-1] != 0 for d in phase_dirs],
      # Evaluations happen once per epoch: the first one's step is an epoch.
      "steps_per_epoch": curve[0]["step"] if curve else None,
      "test_curve": curve, "energy_kept": energy,
      "spectra": json.loads(spectra.read_text()) if spectra.exists() else None,
  }


def run_one(scale, method, seed, workroot, results, refinish=False):
  """Trains (or resumes) one run's phases and writes its result JSON.

  ``refinish``: for phases already finished, move ``summary.json`` aside and
  rerun the command, which restores the final checkpoint and repeats only the
  end of training (final projection, BN recomputation, export, evaluation);
  the run's wall time stays the original training's.
  """
  name = f"{method}_seed{seed}"
  out = results / scale / f"{name}.json"
  if refinish and out.exists() and all(
      (workroot / scale / name / phase / "summary.json").exists()
      for phase, _ in phases(scale, method, seed)):
    for phase, _ in phases(scale, method, seed):
      workdir = workroot / scale / name / phase
      (workdir / "summary.json").rename(workdir / "summary.trained.json")
    out.unlink()
  if out.exists():
    print(f"{name}: done ({out})", flush=True)
    return
  phase_dirs, commands = [], []
  for phase, overrides in phases(scale, method, seed):
    workdir = workroot / scale / name / phase
    if phase == "finetune":
      overrides = dict(overrides,
                       init_from=str((phase_dirs[-1] / "dense_final").absolute()))
    cmd = command(workdir, overrides)
    phase_dirs.append(workdir)
    commands.append(cmd[1:])
    if (workdir / "summary.json").exists():
      continue
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "summary.trained.json").exists():
      (workdir / "refinish_commit.txt").write_text(git_commit())
    else:
      (workdir / "commit.txt").write_text(git_commit())
    print(f"{name}/{phase}: {' '.join(cmd[1:])}", flush=True)
    t = time.time()
    with open(workdir / "log.txt", "a", encoding="utf-8") as log:
      rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                          check=False).returncode
    if rc:
      raise SystemExit(f"{name}/{phase} failed (exit {rc}); see"
                       f" {workdir / 'log.txt'}")
    print(f"{name}/{phase}: {time.time() - t:.0f}s", flush=True)
  record = collect(name, scale, seed, phase_dirs, commands)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=1))
  print(f"{name}: done in {record['wall_time_s']:.0f}s", flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scale", choices=sorted(SCALES), required=True)
  parser.add_argument("--only", default="",
                      help="comma-separated run methods (default: all)")
  parser.add_argument("--seeds", default="",
                      help="comma-separated seeds (default: the scale's)")
  parser.add_argument("--workroot", default=str(ROOT / "runs" / "experiments"))
  parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
  parser.add_argument("--refinish", action="store_true",
                      help="redo the end of training of finished runs")
  args = parser.parse_args(argv)
  spec = SCALES[args.scale]
  seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
           else list(spec["seeds"]))
  sweep = [f"lrpet_ratio{r}" for r in spec["sweep"]]
  wanted = args.only.split(",") if args.only else None
  # Seed 0 of every method and the sweep first, then the other seeds.
  plan = [(m, seeds[0]) for m in (*METHODS, *sweep)]
  plan += [(m, s) for s in seeds[1:] for m in METHODS]
  for method, seed in plan:
    if wanted is None or method in wanted:
      run_one(args.scale, method, seed, pathlib.Path(args.workroot),
              pathlib.Path(args.results), args.refinish)


if __name__ == "__main__":
  main()
