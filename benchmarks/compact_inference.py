"""Dense vs compact vs latency-tuned inference, as deployed, on this machine.

Builds ResNet-56, projects it at ``--ratio`` (0.54: the paper's setting),
and compares three models, every one with its BatchNorm folded into the layer
before it (``folding``):

- dense: the projected dense model;
- compact: LRPET's factorization of every projected layer;
- tuned: per layer the fastest exact form measured here at that batch size
  and dtype (``tuning.tune``; never slower than dense as a whole).

For each dtype (float32, bfloat16) and batch size (1, 32, 256, plus 1024 on
an accelerator) it tunes, checks that all three give the same logits, times
the jitted forward pass (warm-up excluded, median of ``--repeats``) and
prints MACs, FLOPs (counted from the jaxpr, the same on every backend),
params, latency and the speed-ups over dense, with the device, from one run.

    python -m benchmarks.compact_inference [--model resnet56] [--quick]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

import lrpet_jax
from lrpet_jax import models
from lrpet_jax.analysis import folding
from lrpet_jax.deploy import tuning

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet56")
  parser.add_argument("--ratio", type=float, default=0.54)
  parser.add_argument("--batches", default=None,
                      help="comma-separated; default 1,32,256 (+1024 off CPU)")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--quick", action="store_true",
                      help="ResNet-8, batch 2, three repeats")
  args = parser.parse_args(argv)
  batches = ([1, 32, 256] + ([1024] if jax.default_backend() != "cpu" else [])
             if args.batches is None else
             [int(b) for b in args.batches.split(",")])
  if args.quick:
    args.model, batches, args.repeats = "resnet8", [2], 3
  dtypes = args.dtypes.split(",")

  shape = (32, 32, 3)
  dense = models.create(args.model)
  variables = jax.device_get(dense.init(
      jax.random.key(0), jnp.zeros((1,) + shape), train=False))
  ranks = lrpet_jax.uniform_ranks(variables["params"], args.ratio)
  variables = {**variables, "params": lrpet_jax.project_params(
      variables["params"], ranks)}
  pairs = lrpet_jax.analysis.tracing.bn_pairs(lrpet_jax.analysis.tracing.eval_apply(dense),
                                     variables, shape).pairs
  compact_vars = lrpet_jax.factorize(variables, ranks)

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}),"
        f" {os.cpu_count()} host cores; jax {jax.__version__}; {args.model}"
        f" ratio {args.ratio}; BatchNorm folded; median of {args.repeats}")
  costs = {}
  for label, model, v in (("dense", dense, variables),
                          ("compact", models.create(args.model, ranks=ranks),
                           compact_vars)):
    folded = folding.fold(v, pairs)
    costs[label] = lrpet_jax.cost(
        model, v, shape,
        apply_fn=lambda _, x, m=model, f=folded: folding.folded_apply(m, f, x))
  print(f"{'':8} {'MACs/img':>12} {'FLOPs/img':>12} {'params':>10}")
  for label, c in costs.items():
    print(f"{label:8} {c['macs']:>12,} {c['flops']:>12,} {c['params']:>10,}")
  print(f"MACs ratio dense/compact {costs['dense']['macs'] / costs['compact']['macs']:.2f}x,"
        f" FLOPs ratio {costs['dense']['flops'] / costs['compact']['flops']:.2f}x")

  print(f"{'dtype':9} {'batch':>5} {'dense ms':>9} {'compact ms':>10}"
        f" {'tuned ms':>9} {'compact x':>9} {'tuned x':>8} {'max err':>8}"
        "  tuned layers")
  for dtype_name in dtypes:
    dtype = DTYPES[dtype_name]
    for batch in batches:
      tuned_ranks, report = tuning.tune(
          models.create(args.model, dtype=dtype), variables, ranks, pairs,
          input_shape=shape, batch=batch, repeats=args.repeats)
      x = jnp.asarray(np.random.default_rng(batch).normal(
          size=(batch,) + shape), dtype or jnp.float32)
      calls, logits = {}, {}
      for label, r in (("dense", None), ("compact", ranks),
                       ("tuned", tuned_ranks)):
        model = models.create(args.model, ranks=r, dtype=dtype)
        v = variables if r is None else lrpet_jax.factorize(variables, r)
        folded = jax.device_put(folding.fold(v, pairs))
        fn = jax.jit(lambda f, x, m=model: folding.folded_apply(m, f, x))
        calls[label] = (fn, (folded, x))
        logits[label] = np.asarray(fn(folded, x), np.float64)[:4]
      times = tuning.interleaved_seconds(calls, args.repeats)
      err = max(np.linalg.norm(logits[k] - logits["dense"])
                / np.linalg.norm(logits["dense"]) for k in logits)
      split = 0 if report["kept_all_dense"] else sum(
          row["tuned_rank"] is not None for row in report["layers"])
      print(f"{dtype_name:9} {batch:>5} {times['dense'] * 1e3:>9.3f}"
            f" {times['compact'] * 1e3:>10.3f} {times['tuned'] * 1e3:>9.3f}"
            f" {times['dense'] / times['compact']:>8.2f}x"
            f" {times['dense'] / times['tuned']:>7.2f}x {err:>8.1e}"
            f"  {split}/{len(report['layers'])} factorized"
            + (" (guard: all dense)" if report["kept_all_dense"] else ""),
            flush=True)
  print("speed-up = dense latency / model latency, each measured in this run;"
        " max err: logits relative to dense")


if __name__ == "__main__":
  main()
