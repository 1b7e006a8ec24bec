r"""CPU latency of the compact models that the rank policies chose.

    python -m experiments.policy_latency --scale=cpu12 [--batch=256]
    python -m experiments.policy_latency --quick        # seconds; runs/quick/

A compact model's latency depends on its ranks (its layer shapes), not on
its weights, so each rank set of a scale's runs — the uniform ratio's
(``lrpet``) and every rank-policy run's (``ranks`` in its result record) —
is timed on the same random-init ResNet, projected to those ranks and
BatchNorm-folded: compact (every ranked layer factorized) and latency-tuned
(``tuning.tune``: each layer's fastest exact form measured here), all
interleaved with the dense model in one measurement, at ``--batch``. Writes
``experiments/results/latency/<scale>.json`` (``--quick``: runs/quick/,
git-ignored), which ``experiments.report`` shows.
"""

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from lrpet_jax import models
from lrpet_jax.analysis import factorized
from lrpet_jax.analysis import folding
from lrpet_jax.analysis import tracing
from lrpet_jax.core import projection
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.deploy import compact
from lrpet_jax.deploy import tuning

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
QUICK_OUT = ROOT / "runs" / "quick" / "policy_latency.json"


def rank_sets(results: pathlib.Path, scale: str) -> dict[str, dict]:
  """{label: {"layer/kernel": rank}}: the uniform ratio's and every
  rank-policy run's ranks.

  The uniform ranks are lrpet seed 0's, or, in records older than the
  ``ranks`` field, the ``uniform_rank`` that each decision lists per layer
  (the same rule).
  """
  sets, uniform = {}, None
  for path in sorted((results / scale).glob("*.json")):
    record = json.loads(path.read_text())
    name, ranks = record["run"], record.get("ranks")
    decision = record.get("rank_decision")
    if name == "lrpet_seed0" and ranks:
      uniform = ranks
    elif decision and ranks:
      sets[name] = ranks
      uniform = uniform or {k: v["uniform_rank"]
                            for k, v in decision["layers"].items()}
  return {"uniform": uniform, **sets} if uniform else sets


def measure(model_name, sets, *, batch, repeats, log=print) -> dict:
  """Dense, and per rank set compact and tuned, ms per batch (interleaved)."""
  dense = models.create(model_name)
  shape = (32, 32, 3)
  variables = jax.device_get(dense.init(jax.random.key(0),
                                        jnp.zeros((1,) + shape), train=False))
  pairs = tracing.bn_pairs(tracing.eval_apply(dense), variables, shape).pairs
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch,) + shape),
                  jnp.float32)
  calls, described = {}, {}

  def add(label, ranks):
    model = dense if ranks is None else factorized.Factorized(dense, ranks)
    v = projected if ranks is None else compact.factorize(projected, ranks)
    folded = jax.device_put(folding.fold(v, pairs))
    calls[label] = (jax.jit(lambda f, x, m=model: folding.folded_apply(
        m, f, x)), (folded, x))

  projected = variables
  add("dense", None)
  for label, mapping in sets.items():
    ranks = ranks_lib.Ranks(mapping).tree(variables["params"])
    projected = {**variables, "params": projection.project_params(
        variables["params"], ranks)}
    started = time.time()
    tuned, report = tuning.tune(dense, projected, ranks, pairs,
                                input_shape=shape, batch=batch,
                                repeats=repeats)
    log(f"{label}: tuned in {time.time() - started:.0f}s"
        f" ({sum(r is not None for r in jax.tree.leaves(tuned))} of"
        f" {len(report['layers'])} layers factorized)")
    add(f"{label} compact", ranks)
    add(f"{label} tuned", tuned)
    described[label] = {"ranks": mapping, "kept_all_dense":
                        report["kept_all_dense"]}
  seconds = tuning.interleaved_seconds(calls, repeats)
  return {"model": model_name, "batch": batch, "repeats": repeats,
          "backend": jax.default_backend(),
          "device": f"{os.cpu_count()}-core {jax.devices()[0].device_kind}",
          "ms": {k: 1e3 * v for k, v in seconds.items()}, "sets": described}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scale", default="cpu12")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--results", default=str(RESULTS))
  parser.add_argument("--quick", action="store_true",
                      help="ResNet-8, batch 2, uniform ranks only")
  args = parser.parse_args(argv)
  if args.quick:
    model, args.batch, args.repeats = "resnet8", 2, 1
    params = jax.eval_shape(lambda: models.create(model).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))["params"]
    sets = {"uniform": ranks_lib.Ranks.of_tree(
        ranks_lib.uniform_ranks(params, 0.54)).to_json()}
    out = QUICK_OUT
  else:
    model = "resnet20"
    sets = rank_sets(pathlib.Path(args.results), args.scale)
    out = pathlib.Path(args.results) / "latency" / f"{args.scale}.json"
  print(f"{len(sets)} rank sets: {', '.join(sets)}", flush=True)
  record = measure(model, sets, batch=args.batch, repeats=args.repeats)
  for label, ms in record["ms"].items():
    print(f"{label:34} {ms:9.2f} ms   dense / this:"
          f" {record['ms']['dense'] / ms:.2f}x", flush=True)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=1) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
