#!/usr/bin/env bash
# The GPU measurements still open, as one device call of under 10 minutes.
#
#   here:    ../shared/device/prepare
#   device:  run  command="source .device/setup.sh && bash experiments/device_session.sh"
#                 carry=[".device"]  timeout_s=600
#
# Steps, in order of priority, each under its own timeout (SIGTERM: a training
# run saves the step it stopped at and the next call resumes it):
#   1. ladder15  the six arms of configs/claims.py at 15 epochs, six at once
#   2. ladder40  dense and LRPET at 40 epochs, two at once (the LRPET–dense gap)
#   3. vit_gpu   the authors' ViT, dense and LRPET (MLP layers, 27.4 % fewer
#                MACs), their whole recipe (configs/vit.py), two at once
#   4. benchmarks/compact_inference.py on ResNet-56 with the time left
# Sizing (not yet measured after the speed work): four ResNet-20 runs at once
# made ~160 steps/s together on one H200 at commit af4846b, so ladder15 is
# ~35,000 steps (~4 min) and ladder40's two runs ~31,000 (~3.5 min), plus ~30 s
# start-up each.
# vit_gpu is far longer than a call: 100 epochs of 3 passes are 117,100 steps
# of batch 128 per run. On the 2-core CPU a step takes ~2.5 s (2.35 s, +5 %
# for their augmentations; benchmarks/vit.py), ~80 h per run; the GPU's rate is not
# measured yet. Scaling the ResNet-20 rate above by MACs per image (40.6M →
# 187.7M, ×4.6) gives ~35 steps/s together, ~17 per run two at once: ~1.9 h,
# about 13 calls of 9 minutes, each resuming from the last checkpoint (one
# per epoch, 1,171 steps). A rough guess (small models on a GPU are bound by
# launches, not MACs): the first call's logs measure the real rate.
#
# The device returns at most 8 files, 2 folders deep, so everything is packed:
#   $OUT/results.tgz   runs/results/<scale>/*.json   (tar xzf into experiments/)
#   $OUT/logs.tgz      each run's log.txt, metrics.jsonl, summary.json, config.json
#   $OUT/compact_inference.txt, $OUT/session.txt (steps, their times, the GPU)
# runs/ is git-ignored, so it stays on the device between calls while the
# machine is warm: calling again resumes unfinished runs and skips done ones.
#
# Overrides (a CPU rehearsal uses them): DEVICE_SECONDS (whole budget, 560),
# LADDER ("scale:only|all:parallel[:seeds] ...", each rung an
# experiments.run call), BENCH_ARGS. Each rung gets the time left but 70 s.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder whose files come back}"
budget=${DEVICE_SECONDS:-560}
ladder=${LADDER:-"ladder15:all:6 ladder40:lrpet,dense:2 vit_gpu:lrpet,dense:2"}
bench_args=${BENCH_ARGS:-"--model=resnet56 --batches=1,256,1024 --repeats=10"}
start=$SECONDS
log="$OUT/session.txt"
mkdir -p runs/results
left() { echo $((budget - (SECONDS - start))); }
note() { echo "[$((SECONDS - start))s] $*" | tee -a "$log"; }

# Waits until no training process of this script is left (a SIGTERMed run
# finishes saving its checkpoint first), at most $1 seconds.
mine="lrpet_jax.main .*--workdir=runs/experiments/"
drain() {
  local until=$((SECONDS + $1))
  while pgrep -f "$mine" >/dev/null && ((SECONDS < until)); do
    sleep 1
  done
  pkill -KILL -f "$mine" 2>/dev/null || true
}

note "device: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo none)"
note "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
for rung in $ladder; do
  IFS=: read -r scale only parallel seeds <<<"$rung"
  # Keep 70 s: up to 40 to drain the stopped runs, the rest to pack.
  t=$(($(left) - 70))
  if ((t < 30)); then note "$scale: skipped, ${t}s left"; continue; fi
  args=(--scale="$scale" --parallel="$parallel" --workroot=runs/experiments
        --results=runs/results)
  [ "$only" = all ] || args+=(--only="$only")
  [ -z "$seeds" ] || args+=(--seeds="$seeds")
  note "$scale: python -m experiments.run ${args[*]} (timeout ${t}s)"
  timeout -s TERM "$t" python3 -m experiments.run "${args[@]}" \
    >>"runs/session_$scale.txt" 2>&1
  rc=$?
  drain 40
  case $rc in
    0) how="done" ;;
    124) how="timed out: call again to resume" ;;
    *) how="failed: see runs/session_$scale.txt in logs.tgz" ;;
  esac
  note "$scale: exit $rc, $how; $(ls runs/results/"$scale" 2>/dev/null | wc -l) result(s)"
done

t=$(($(left) - 15))
if ((t >= 30)); then
  note "benchmark: python -m benchmarks.compact_inference $bench_args (timeout ${t}s)"
  # shellcheck disable=SC2086
  timeout -s TERM "$t" python3 -m benchmarks.compact_inference $bench_args \
    >"$OUT/compact_inference.txt" 2>&1
  note "benchmark: exit $?"
else
  note "benchmark: skipped, ${t}s left"
fi

tar czf "$OUT/results.tgz" -C runs results
tar czf "$OUT/logs.tgz" runs/session_*.txt $(cd runs && find experiments \
  \( -name log.txt -o -name metrics.jsonl -o -name summary.json \
     -o -name config.json \) -printf 'runs/%p ') 2>/dev/null
note "packed: $(tar tzf "$OUT/results.tgz" | grep -c '\.json$') result file(s); done in $((SECONDS - start))s"
