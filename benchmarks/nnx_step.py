r"""A Flax NNX model's train step under the pipeline against the Linen one's.

The zoo's ResNet in Linen (``resnet20``) and in NNX (``resnet20_nnx``: the same
architecture and variables, run through ``nnx_models.NnxModel``) take the
pipeline's compiled LRPET steps (``steps.Stepper``, as ``python -m
lrpet_jax.main`` makes them) on synthetic CIFAR-sized data; the two are timed
in alternation, and the NNX/Linen ratio of the medians is printed for the
plain step at K steps per call and for the projecting step.

    python -m benchmarks.nnx_step                 # ResNet-20, batch 128
    python -m benchmarks.nnx_step --quick         # seconds, any machine
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks import train_throughput  # pylint: disable=g-import-not-at-top


def timed(pipeline, length, project=False) -> float:
  t = time.perf_counter()
  pipeline.call(length, project)
  pipeline.sync()
  return (time.perf_counter() - t) / length


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=20, choices=(8, 20))
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps_per_call", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--quick", action="store_true",
                      help="ResNet-8, batch 8, one repeat")
  args = parser.parse_args(argv)
  if args.quick:
    args.depth, args.batch, args.steps_per_call, args.repeats = 8, 8, 2, 1

  source, replicated = train_throughput.synthetic_source(
      args.batch, args.steps_per_call + 1)
  config = train_throughput.cifar.get_config()
  config.batch_size = args.batch
  pipelines = {}
  for kind, name in (("linen", f"resnet{args.depth}"),
                     ("nnx", f"resnet{args.depth}_nnx")):
    config.model = name
    pipelines[kind] = train_throughput.Pipeline(config, source, "lrpet",
                                                "float32", replicated)
  device = jax.devices()[0]
  print(f"device: {jax.device_count()}x {device.device_kind}"
        f" ({device.platform}); jax {jax.__version__}; resnet{args.depth},"
        f" batch {args.batch}; LRPET steps; median of {args.repeats}"
        " alternating timed calls after a compiling one", flush=True)
  k = args.steps_per_call
  for label, length, project in ((f"plain step, {k}/call", k, False),
                                 ("projecting step", 1, True)):
    times = {kind: [] for kind in pipelines}
    for p in pipelines.values():
      timed(p, length, project)  # compiles
    for _ in range(args.repeats):
      for kind, p in pipelines.items():
        times[kind].append(timed(p, length, project))
    med = {kind: statistics.median(t) for kind, t in times.items()}
    print(f"{label:22} linen {1e3 * med['linen']:9.2f} ms/step   nnx"
          f" {1e3 * med['nnx']:9.2f} ms/step   nnx/linen ="
          f" {med['nnx'] / med['linen']:.3f}", flush=True)
  return pipelines


if __name__ == "__main__":
  main()
