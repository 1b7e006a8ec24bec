"""Training throughput: LRPET vs plain SGD on the same model, one run.

Times the jitted train step (batch 128, ResNet-20, synthetic CIFAR-sized data)
with (a) plain PyTorch-style SGD, (b) LRPET on a step that does not project
(the ``lax.cond`` pass-through) and (c) LRPET on a projection step, then
prints images/s and the overhead of LRPET over an epoch of
``--steps_per_epoch`` steps with one projection (CIFAR-10: 390).

    python -m benchmarks.train_throughput [--model resnet20] [--repeats 8]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
import optax

from configs import cifar
from lrpet_jax import models
from lrpet_jax import ranks as ranks_lib
from lrpet_jax import train
from lrpet_jax import transform


def step_time(step_fn, state, images, labels, indices, repeats):
  state, _ = step_fn(state, images, labels, indices)  # compile
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, m = step_fn(state, images, labels, indices)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=8)
  parser.add_argument("--steps_per_epoch", type=int, default=390)
  args = parser.parse_args()

  config = cifar.get_config()
  config.model, config.batch_size = args.model, args.batch
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 255, (args.batch, 32, 32, 3),
                                       dtype=np.uint8))
  labels = jax.device_put(rng.integers(0, 10, args.batch).astype(np.int32))
  indices = jax.device_put(np.arange(args.batch, dtype=np.int32))
  model = models.create(args.model)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3)), train=False))
  ranks = ranks_lib.uniform_ranks(abstract["params"], config.ratio)
  pairs = models.bn_pairs(abstract["params"])
  sgd = optax.chain(optax.add_decayed_weights(config.weight_decay),
                    optax.trace(config.momentum),
                    optax.scale_by_learning_rate(config.learning_rate))
  variants = {
      "sgd": (sgd, False),
      "lrpet, no projection": (transform.lrpet(
          config.learning_rate, ranks, every=10**9), True),
      "lrpet, projection": (transform.lrpet(
          config.learning_rate, ranks, every=1), True),
  }
  times = {}
  for label, (tx, rectify) in variants.items():
    config.bn_rectification = rectify
    step_fn = jax.jit(train.make_train_step(model, tx, config, pairs))
    state = train.initial_state(model, tx, 0, (32, 32, 3))
    times[label] = step_time(step_fn, state, images, labels, indices,
                             args.repeats)
  print(f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores;"
        f" jax {jax.__version__}; {args.model}, batch {args.batch},"
        f" median of {args.repeats} steps")
  for label, t in times.items():
    print(f"{label:22} {t * 1e3:8.1f} ms/step {args.batch / t:8.1f} img/s")
  n = args.steps_per_epoch
  epoch_lrpet = (n - 1) * times["lrpet, no projection"] + times[
      "lrpet, projection"]
  epoch_sgd = n * times["sgd"]
  print(f"epoch of {n} steps with one projection: LRPET {epoch_lrpet:.1f}s vs"
        f" SGD {epoch_sgd:.1f}s -> overhead {epoch_lrpet / epoch_sgd - 1:+.2%}")


if __name__ == "__main__":
  main()
