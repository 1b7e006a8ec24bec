r"""Launches the paper-claims comparison and writes one JSON per run.

    python -m experiments.run --scale=cpu                  # ~2 h on a 2-core CPU
    python -m experiments.run --scale=ladder15 --parallel=4  # one GPU
    python -m experiments.report                           # RESULTS.md + plots

Each run is ``python -m lrpet_jax.main --config=configs/claims.py:SCALE,ARM
--config.seed=N`` in a subprocess, in ``--workroot/<scale>/<run>/<phase>``
(``configs/claims.py`` defines every scale and arm; any run can be
started by hand with the command its JSON records). Its resolved config
(``config.json``), summary, test accuracy per epoch, energy kept per
projection and (LRPET) singular spectra at the first and last projection are
collected into
``experiments/results/<scale>/<run>.json``. Finished runs are skipped, so
rerunning the command resumes the sweep, and an interrupted training run
resumes from its last checkpoint.

``--parallel=N`` runs N runs at once, each process with
``XLA_PYTHON_CLIENT_MEM_FRACTION=0.9/N`` of the accelerator's memory: small
models leave a GPU mostly idle, and four ResNet-20 runs at once took 83–146 s
each on one H200 (12 epochs; commit af4846b). Wall times of such runs are
shared-device times.
"""

import argparse
import concurrent.futures
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

def _load_configs():
  spec = importlib.util.spec_from_file_location(
      "experiment_configs", ROOT / "configs" / "claims.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


CONFIGS = _load_configs()
# The seeds and the sweep each scale runs by default.
PLAN = {"cpu": dict(seeds=(0, 1), sweep=(0.3, 0.7, 0.8)),
        "cpu12": dict(seeds=(0, 1, 2), sweep=()),
        "gpu": dict(seeds=(0,), sweep=(0.3, 0.7, 0.8)),
        "ladder15": dict(seeds=(0,), sweep=()),
        "ladder40": dict(seeds=(0,), sweep=()),
        "vit_cpu": dict(seeds=(0, 1, 2), sweep=()),
        "vit_gpu": dict(seeds=(0,), sweep=())}
METHODS = ("lrpet", "dense", "decompose_retrain", "compact_scratch",
           "lrpet_no_et", "lrpet_no_bn", "lrpet_budget", "lrpet_energy0.8")


def phases(method):
  """[(phase name, arm of configs/claims.py)] of one run."""
  if method == "decompose_retrain":
    return [("dense", "decompose_dense"), ("finetune", "decompose_retrain")]
  return [("train", method)]


def command(workdir, scale, arm, seed, init_from=None):
  return [sys.executable, "-m", "lrpet_jax.main",
          f"--config=configs/claims.py:{scale},{arm}",
          f"--workdir={workdir}", f"--config.seed={seed}",
          *([f"--config.init_from={init_from}"] if init_from else [])]


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


def _commit(workdir):
  path = workdir / "commit.txt"
  return path.read_text() if path.exists() else None


def first_and_last(spectra):
  """A run's spectra.json cut to its first and last projection: what the
  report plots. The workdir keeps every projection; a whole 40-epoch record
  would take megabytes of the repository (and of what travels to a device)."""
  ends = lambda v: [v[0], v[-1]] if len(v) > 1 else list(v)
  return {"steps": ends(spectra["steps"]),
          "layers": {name: {**layer, "before": ends(layer["before"]),
                            "after": ends(layer["after"])}
                     for name, layer in spectra["layers"].items()}}


def collect(name, scale, seed, phase_dirs, commands):
  """The result record of a finished run, from its workdirs."""
  summaries = [json.loads((d / "summary.json").read_text())
               for d in phase_dirs]
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
      "commits": [c for c in map(_commit, phase_dirs) if c],
      "commands": commands,
      # Each phase's resolved config, as the training process saved it.
      "configs": [json.loads((d / "config.json").read_text())
                  for d in phase_dirs],
      "phases": summaries, "final": final,
      "wall_time_s": sum(s["wall_time_s"] for s in summaries),
      # Resumed after an interruption: wall_time_s covers the last process only.
      "resumed": [bool(starts(d)) and starts(d)[-1] != 0 for d in phase_dirs],
      # Evaluations happen once per epoch: the first one's step is an epoch.
      "steps_per_epoch": curve[0]["step"] if curve else None,
      "test_curve": curve, "energy_kept": energy,
      # First and last projection only (first_and_last).
      "spectra": (first_and_last(json.loads(spectra.read_text()))
                  if spectra.exists() else None),
      # The compact model's ranks, and a rank policy's decision.
      "ranks": _json_or_none(phase_dirs[-1] / "ranks.json"),
      "rank_decision": _json_or_none(phase_dirs[-1] / "rank_decision.json"),
  }


def _json_or_none(path):
  return json.loads(path.read_text()) if path.exists() else None


def run_one(scale, method, seed, workroot, results, env=None):
  """Trains (or resumes) one run's phases and writes its result JSON."""
  name = f"{method}_seed{seed}"
  out = results / scale / f"{name}.json"
  if out.exists():
    print(f"{name}: done ({out})", flush=True)
    return
  phase_dirs, commands = [], []
  for phase, arm in phases(method):
    workdir = workroot / scale / name / phase
    init_from = (str((phase_dirs[-1] / "dense_final").absolute())
                 if phase == "finetune" else None)
    cmd = command(workdir, scale, arm, seed, init_from)
    phase_dirs.append(workdir)
    commands.append(cmd[1:])
    if (workdir / "summary.json").exists():
      continue
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "commit.txt").write_text(git_commit())
    print(f"{name}/{phase}: {' '.join(cmd[1:])}", flush=True)
    t = time.time()
    with open(workdir / "log.txt", "a", encoding="utf-8") as log:
      rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                          env=env, check=False).returncode
    if rc:
      raise SystemExit(f"{name}/{phase} failed (exit {rc}); see"
                       f" {workdir / 'log.txt'}")
    print(f"{name}/{phase}: {time.time() - t:.0f}s", flush=True)
  record = collect(name, scale, seed, phase_dirs, commands)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=1))
  print(f"{name}: done in {record['wall_time_s']:.0f}s", flush=True)


def plan_runs(scale, seeds=None, only=None):
  """[(method, seed)]: seed 0 of every method and the sweep first, then the
  other seeds."""
  spec = PLAN[scale]
  seeds = list(seeds or spec["seeds"])
  sweep = [f"lrpet_ratio{r}" for r in spec["sweep"]]
  plan = [(m, seeds[0]) for m in (*METHODS, *sweep)]
  plan += [(m, s) for s in seeds[1:] for m in METHODS]
  return [(m, s) for m, s in plan if not only or m in only]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scale", choices=sorted(CONFIGS.SCALES), required=True)
  parser.add_argument("--only", default="",
                      help="comma-separated run methods (default: all)")
  parser.add_argument("--seeds", default="",
                      help="comma-separated seeds (default: the scale's)")
  parser.add_argument("--parallel", type=int, default=1,
                      help="runs at once, sharing one accelerator")
  parser.add_argument("--workroot", default=str(ROOT / "runs" / "experiments"))
  parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
  args = parser.parse_args(argv)
  if args.parallel < 1:
    parser.error(f"--parallel must be >= 1, got {args.parallel}")
  only = args.only.split(",") if args.only else None
  known = {m for m, _ in plan_runs(args.scale)}
  unknown = sorted(set(only or ()) - known)
  if unknown:
    parser.error(f"--only: unknown run {', '.join(unknown)}; valid:"
                 f" {', '.join(sorted(known))}")
  try:
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
  except ValueError:
    parser.error(f"--seeds: want comma-separated integers, got {args.seeds!r}")
  plan = plan_runs(args.scale, seeds, only)
  env = dict(os.environ)
  if args.parallel > 1:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / args.parallel:.3f}"
  workroot, results = pathlib.Path(args.workroot), pathlib.Path(args.results)
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    futures = [pool.submit(run_one, args.scale, m, s, workroot, results, env)
               for m, s in plan]
    for f in futures:
      f.result()


if __name__ == "__main__":
  main()
