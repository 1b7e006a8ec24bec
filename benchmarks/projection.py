"""Projection of all ResNet-56 kernels: batched jitted transform vs a NumPy loop.

The official LRPET code projects layer by layer: reshape, SVD, rescale, rebuild.
This times that loop (float32 NumPy SVD, the same math) against
``low_rank_projection``'s jitted update on a projection step (Gram-matrix
eigendecompositions; batched per kernel shape on accelerators, one per kernel
on CPU), both with BN rectification, and prints both times and their ratio
from one run.

    python benchmarks/projection.py [--repeats 20] [--ratio 0.54] [--quick]
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

import lrpet_jax


def resnet56_kernels(rng):
  """The 55 conv kernels of a CIFAR ResNet-56 (HWIO), keyed like Flax params."""
  shapes = [("conv_init", (3, 3, 3, 16))]
  c_in = 16
  for stage, width in enumerate((16, 32, 64)):
    for block in range(9):
      shapes.append((f"s{stage}b{block}_conv1", (3, 3, c_in, width)))
      shapes.append((f"s{stage}b{block}_conv2", (3, 3, width, width)))
      c_in = width
  assert len(shapes) == 55
  params = {name: {"kernel": (rng.standard_normal(shape) * np.sqrt(
      2.0 / np.prod(shape[:-1]))).astype(np.float32)} for name, shape in shapes}
  scales = {name: {"kernel": rng.uniform(0.5, 2.0, shape[-1]).astype(
      np.float32)} for name, shape in shapes}
  return params, scales


def numpy_loop(params, ranks, scales, eps=1e-5):
  """Per-layer float32 NumPy SVD projection with ET and BN rectification."""
  out = {}
  for name, leaf in params.items():
    k, r, a = leaf["kernel"], ranks[name]["kernel"], scales[name]["kernel"]
    w = k.reshape(-1, k.shape[-1]) * a
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    alpha = np.sum(s * s) / np.sum(s[:r] ** 2)
    w = (u[:, :r] * (s[:r] * np.sqrt(alpha))) @ vt[:r]
    out[name] = {"kernel": (w * (a / (a * a + eps))).reshape(k.shape)}
  return out


def median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--ratio", type=float, default=0.54)
  parser.add_argument("--quick", action="store_true", help="one repeat")
  args = parser.parse_args(argv)
  if args.quick:
    args.repeats = 1

  params, scales = resnet56_kernels(np.random.default_rng(0))
  ranks = lrpet_jax.uniform_ranks(params, args.ratio)
  opt = lrpet_jax.low_rank_projection(ranks, every=1)
  state = opt.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  dev_params, dev_scales = jax.device_put((params, scales))
  update = jax.jit(opt.update)

  def run_jax():
    updates, _ = update(zeros, state, dev_params, out_scales=dev_scales)
    jax.block_until_ready(updates)
    return updates

  # Same result before timing anything.
  got = optax.apply_updates(params, run_jax())
  want = numpy_loop(params, ranks, scales)
  err = max(float(np.linalg.norm(np.asarray(got[k]["kernel"]) - want[k]["kernel"])
                  / np.linalg.norm(want[k]["kernel"])) for k in params)

  numpy_loop(params, ranks, scales)  # warm-up
  t_numpy = median_time(lambda: numpy_loop(params, ranks, scales), args.repeats)
  t_jax = median_time(run_jax, args.repeats)
  print(f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}),"
        f" {os.cpu_count()} cores; jax {jax.__version__}, numpy {np.__version__}")
  print(f"ResNet-56 kernels: 55 convs, ratio {args.ratio}, ET + BN rectification;"
        f" median of {args.repeats}")
  print(f"max relative difference between the two: {err:.2e}")
  print(f"numpy per-layer SVD loop : {t_numpy * 1e3:8.2f} ms")
  print(f"lrpet_jax transform, jit : {t_jax * 1e3:8.2f} ms")
  print(f"speed-up                 : {t_numpy / t_jax:8.2f}x")


if __name__ == "__main__":
  main()
