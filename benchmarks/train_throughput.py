r"""Training throughput of the pipeline's own compiled steps, measured in one run.

Times ``steps.Stepper`` (the calls ``python -m lrpet_jax.main`` makes) on
synthetic CIFAR-sized data held on the device like the real input:

- dense (plain SGD) vs LRPET: a plain step at 1 and K steps per call, the
  projecting step, and a whole epoch with one projection;
- float32 vs bfloat16 at K steps per call;

and prints ms/step, images/s, the LRPET/dense throughput ratio, the implied
400-epoch training time (steps only: evaluation and checkpoints excluded) and
the device. Each figure is the median of ``--repeats`` timed calls after a
compiling one.

    python -m benchmarks.train_throughput                 # ResNet-56, batch 128
    python -m benchmarks.train_throughput --quick         # seconds, any machine

On a 2-core CPU a ResNet-56 epoch takes about 20 minutes; pass e.g.
``--model=resnet20 --epoch_steps=40`` there (the figures say what was run).
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import cifar  # pylint: disable=g-import-not-at-top

from lrpet_jax.data import augmentations
from lrpet_jax.data import datasets as data_lib  # pylint: disable=g-import-not-at-top
from lrpet_jax.data import inputs
from lrpet_jax.pipeline import experiment
from lrpet_jax.pipeline import steps as steps_lib


class Pipeline:
  """One method and dtype: its Stepper and a fresh training state."""

  def __init__(self, config, source, method_name, dtype, replicated):
    config = config.copy_and_resolve_references()
    config.compute_dtype = dtype
    exp = experiment.from_config(config, input_shape=(32, 32, 3),
                                 steps_per_epoch=source.steps_per_epoch,
                                 method=method_name)
    self.method = exp.method
    self.stepper = exp.stepper(source)
    # Placed as the training loop places them (one compilation per call).
    self.state = jax.device_put(exp.initial_state(), replicated)
    self.window = jax.device_put(experiment.empty_window(), replicated)
    self.step = 0
    # Plain steps: False for a method with a projection, None without one.
    self.mode = None if self.method.projects(0) is None else False

  def call(self, length, project=False):
    mode = True if project else self.mode
    self.state, self.window, _ = self.stepper(self.state, self.window,
                                              self.step, length, mode)
    self.step += length

  def sync(self):
    jax.block_until_ready((self.state, self.window))


def per_step(pipeline, length, repeats, project=False):
  """Median seconds per step of calls of ``length`` steps (first call compiles)."""
  pipeline.call(length, project)
  pipeline.sync()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    pipeline.call(length, project)
    pipeline.sync()
    times.append((time.perf_counter() - t) / length)
  return statistics.median(times)


def epoch_time(pipeline, steps_per_epoch, k, projecting):
  """Seconds for one epoch as the loop runs it (calls compiled beforehand)."""
  plain = steps_lib.chunk_lengths(steps_per_epoch - projecting, k)
  for length in set(plain):
    pipeline.call(length)
  if projecting:
    pipeline.call(1, project=True)
  pipeline.sync()
  t = time.perf_counter()
  for length in plain:
    pipeline.call(length)
  if projecting:
    pipeline.call(1, project=True)
  pipeline.sync()
  return time.perf_counter() - t


def synthetic_source(batch, steps, seed=0, **augmentation):
  """(``InMemoryInput`` of ``steps`` random CIFAR-sized batches, held on the
  device as the real input is; the replicated sharding of the states);
  ``augmentation``: ``augmentations.Augmentation`` fields beyond crop + flip."""
  rng = np.random.default_rng(0)
  n = batch * steps
  data = data_lib.InMemoryData(
      rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      rng.integers(0, 10, n).astype(np.int32),
      np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1,), np.int32), 10)
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  source = inputs.InMemoryInput(
      data, batch_size=batch, eval_batch_size=1, seed=seed,
      normalization=data_lib.NORMALIZATION["cifar10"],
      batch_sharding=NamedSharding(mesh, P("data")),
      augmentation=augmentations.Augmentation(**augmentation))
  return source, NamedSharding(mesh, P())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet56")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps_per_call", type=int, default=8)
  parser.add_argument("--epoch_steps", type=int, default=390,
                      help="steps per epoch (CIFAR-10, batch 128: 390)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true",
                      help="ResNet-8, batch 8, 4-step epochs, one repeat")
  args = parser.parse_args(argv)
  if args.quick:
    args.model, args.batch, args.steps_per_call = "resnet8", 8, 3
    args.epoch_steps, args.repeats = 4, 1

  config = cifar.get_config()
  config.model, config.batch_size = args.model, args.batch
  source, replicated = synthetic_source(args.batch, args.epoch_steps)
  k, spe = args.steps_per_call, args.epoch_steps
  device = jax.devices()[0]
  print(f"device: {jax.device_count()}x {device.device_kind}"
        f" ({device.platform}); jax {jax.__version__}; {args.model}, batch"
        f" {args.batch}; median of {args.repeats} timed call(s); each row as"
        " it is measured", flush=True)
  print(f"{'':44} {'ms/step':>9} {'img/s':>9}", flush=True)

  rows, epochs = [], {}

  def row(label, seconds):
    rows.append((label, seconds))
    print(f"{label:44} {1e3 * seconds:9.2f} {args.batch / seconds:9.0f}",
          flush=True)

  for dtype in ("float32", "bfloat16"):
    for method in ("dense", "lrpet"):
      pipeline = Pipeline(config, source, method, dtype, replicated)
      lengths = (1, k) if dtype == "float32" else (k,)
      for length in lengths:
        row(f"{method} {dtype}, plain step, {length}/call",
            per_step(pipeline, length, args.repeats))
      if method == "lrpet" and dtype == "float32":
        row("lrpet float32, projecting step",
            per_step(pipeline, 1, args.repeats, project=True))
      epochs[method, dtype] = epoch_time(pipeline, spe, k, method == "lrpet")
  print(f"one epoch of {spe} steps at {k} steps/call (LRPET: one"
        " projection), steps only:")
  for dtype in ("float32", "bfloat16"):
    dense, lrpet = epochs["dense", dtype], epochs["lrpet", dtype]
    print(f"  {dtype:9} dense {dense:8.2f} s, LRPET {lrpet:8.2f} s; LRPET"
          f" throughput = {dense / lrpet:.1%} of dense; 400 such epochs:"
          f" dense {400 * dense / 60:.1f} min, LRPET {400 * lrpet / 60:.1f}"
          " min")
  return {"rows": rows, "epochs": epochs}


if __name__ == "__main__":
  main()
