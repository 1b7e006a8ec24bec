"""ResNet-56 dense vs compact (LRPET export) inference on this machine.

Builds ResNet-56, projects it at ``--ratio`` (0.54: the paper's setting),
factorizes it, checks that both give the same logits, then times the jitted
eval-mode forward pass of each on a ``--batch`` of 32×32 images (warm-up
excluded, median of ``--repeats``) and prints MACs, XLA FLOPs, latency and the
ratios from one run.

    python benchmarks/compact_inference.py [--batch 256] [--ratio 0.54] [--quick]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

import lrpet_jax
from lrpet_jax import models
from lrpet_jax.ranks import round_ranks


def median_latency(fn, variables, x, repeats):
  jax.block_until_ready(fn(variables, x))  # compile + warm-up
  jax.block_until_ready(fn(variables, x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(variables, x))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet56")
  parser.add_argument("--ratio", type=float, default=0.54)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--quick", action="store_true",
                      help="ResNet-8, batch 8, one repeat")
  args = parser.parse_args(argv)
  if args.quick:
    args.model, args.batch, args.repeats = "resnet8", 8, 1

  x = jax.random.normal(jax.random.key(1), (args.batch, 32, 32, 3))
  dense = models.create(args.model)
  variables = dense.init(jax.random.key(0), x[:1], train=False)
  ranks = lrpet_jax.uniform_ranks(variables["params"], args.ratio)
  variables = {**variables, "params": lrpet_jax.project_params(
      variables["params"], ranks)}
  rounded = round_ranks(ranks, variables["params"], 8)
  variants = [("dense", dense, variables)]
  for label, r in (("compact", ranks), ("compact8", rounded)):
    variants.append((label, models.create(args.model, ranks=r),
                     jax.device_put(lrpet_jax.factorize(variables, r))))

  results = {}
  for label, model, v in variants:
    fn = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False))
    results[label] = {
        **lrpet_jax.cost(model, v, (32, 32, 3)),
        "latency": median_latency(fn, v, x, args.repeats),
        "logits": np.asarray(fn(v, x[:8])),
    }
  d, c = results["dense"], results["compact"]
  err = max(np.linalg.norm(r["logits"] - d["logits"]) / np.linalg.norm(
      d["logits"]) for r in results.values())
  print(f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores;"
        f" jax {jax.__version__}; {args.model} ratio {args.ratio},"
        f" batch {args.batch}, median of {args.repeats}")
  print(f"logits max relative difference compact vs dense: {err:.1e}"
        " (compact8: ranks rounded up to multiples of 8)")
  print(f"{'':8} {'MACs/img':>12} {'XLA FLOPs/img':>14} {'params':>10}"
        f" {'latency':>10} {'img/s':>8}")
  for label, r in results.items():
    print(f"{label:8} {r['macs']:>12,} {r['xla_flops']:>14,.0f}"
          f" {r['params']:>10,} {r['latency'] * 1e3:>8.1f}ms"
          f" {args.batch / r['latency']:>8.0f}")
  print(f"MACs ratio dense/compact: {d['macs'] / c['macs']:.2f}x"
        f" ({1 - c['macs'] / d['macs']:.1%} fewer);"
        f" XLA FLOPs ratio: {d['xla_flops'] / c['xla_flops']:.2f}x;"
        f" measured speed-up: {d['latency'] / c['latency']:.2f}x")
  c8 = results["compact8"]
  print(f"compact8: MACs ratio {d['macs'] / c8['macs']:.2f}x"
        f" ({1 - c8['macs'] / d['macs']:.1%} fewer);"
        f" measured speed-up: {d['latency'] / c8['latency']:.2f}x")


if __name__ == "__main__":
  main()
