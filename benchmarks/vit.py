r"""The authors' ViT with LRPET on its MLP layers (configs/vit.py), timed in one run.

- Training, the pipeline's own compiled steps (``steps.Stepper``) on
  synthetic CIFAR-sized data: the dense step (AdamW alone), LRPET's plain
  step and its projecting step, with crop + flip; then the dense step with
  their whole augmentation (AutoAugment, random erasing, CutMix/Mixup), and
  the augmentation alone, jitted, against crop + flip alone (interleaved);
  ms/step and the ratios to dense.
- Inference, jitted, float32: the projected dense model against the compact
  one (each MLP layer as two Dense layers of rank r) at batch 1, 32 and 256;
  latency (interleaved medians), the speed-up and the logits' agreement.

    python -m benchmarks.vit            # vit_cifar, batch 128 for training
    python -m benchmarks.vit --quick    # vit_tiny, seconds, any machine
"""

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import vit as vit_config  # configs/vit.py  pylint: disable=g-import-not-at-top

import lrpet_jax  # pylint: disable=g-import-not-at-top
from benchmarks import train_throughput
from lrpet_jax import models
from lrpet_jax.analysis import tracing
from lrpet_jax.data import augmentations
from lrpet_jax.data import datasets as data_lib
from lrpet_jax.deploy import tuning
from lrpet_jax.pipeline import config_check
from lrpet_jax.ranking import selection


def training(config, args):
  source, replicated = train_throughput.synthetic_source(
      args.batch, args.steps_per_call + 1)
  rows = {}
  for method in ("dense", "lrpet"):
    pipeline = train_throughput.Pipeline(config, source, method, "float32",
                                         replicated)
    rows[f"{method} plain step, {args.steps_per_call}/call"] = (
        train_throughput.per_step(pipeline, args.steps_per_call,
                                  args.repeats))
    if method == "lrpet":
      rows["lrpet projecting step"] = train_throughput.per_step(
          pipeline, 1, args.repeats, project=True)
  source, replicated = train_throughput.synthetic_source(
      args.batch, args.steps_per_call + 1,
      **dataclasses.asdict(config_check.part(augmentations.Augmentation,
                                             config)))
  pipeline = train_throughput.Pipeline(config, source, "dense", "float32",
                                       replicated)
  rows["dense, + their augmentations"] = train_throughput.per_step(
      pipeline, args.steps_per_call, args.repeats)
  dense = rows[f"dense plain step, {args.steps_per_call}/call"]
  for label, seconds in rows.items():
    print(f"  {label:34} {1e3 * seconds:9.1f} ms/step  {seconds / dense:5.2f}x"
          " dense", flush=True)
  # The augmentations alone, jitted, interleaved: crop + flip vs theirs.
  images = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (args.batch, 32, 32, 3), np.uint8))
  normalization = data_lib.NORMALIZATION["cifar10"]
  calls = {}
  for label, augmentation in (
      ("crop + flip", augmentations.Augmentation()),
      ("their augmentations", config_check.part(augmentations.Augmentation,
                                                config))):
    fn = jax.jit(lambda x, k, a=augmentation: augmentations.train_batch(
        x, k, normalization, a)[0])
    calls[label] = (fn, (images, jax.random.key(0)))
  times = tuning.interleaved_seconds(calls, max(args.repeats, 5))
  for label, seconds in times.items():
    print(f"  augmentation alone, {label:19} {1e3 * seconds:7.1f} ms/batch"
          f"  {seconds / dense:6.2%} of a dense step", flush=True)


def inference(config, args):
  shape = (32, 32, 3)
  dense = models.build(config.model)
  variables = jax.device_get(dense.init(jax.random.key(0),
                                        jnp.zeros((1,) + shape), train=False))
  table = tracing.table(tracing.eval_apply(dense), variables, shape)
  ranks = selection.select(config_check.part(selection.RankRule, config),
                           dense, variables, shape, table=table)
  projected = {"params": lrpet_jax.project_params(variables["params"], ranks)}
  compact = lrpet_jax.Factorized(dense, ranks)
  compact_vars = jax.device_put(lrpet_jax.factorize(projected, ranks))
  macs = {label: lrpet_jax.cost(m, v, shape)["macs"] for label, m, v in (
      ("dense", dense, projected), ("compact", compact, compact_vars))}
  print(f"  MACs/img dense {macs['dense']:,}, compact {macs['compact']:,}"
        f" ({1 - macs['compact'] / macs['dense']:.1%} fewer)")
  print(f"  {'batch':>5} {'dense ms':>9} {'compact ms':>10} {'speed-up':>8}"
        f" {'max err':>8}")
  for batch in args.batches:
    x = jnp.asarray(np.random.default_rng(batch).normal(
        size=(batch,) + shape), jnp.float32)
    calls, logits = {}, {}
    for label, model, v in (("dense", dense, projected),
                            ("compact", compact, compact_vars)):
      fn = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))
      calls[label] = (fn, (v, x))
      logits[label] = np.asarray(fn(v, x), np.float64)
    times = tuning.interleaved_seconds(calls, args.repeats)
    err = (np.linalg.norm(logits["compact"] - logits["dense"])
           / np.linalg.norm(logits["dense"]))
    print(f"  {batch:>5} {times['dense'] * 1e3:>9.2f}"
          f" {times['compact'] * 1e3:>10.2f}"
          f" {times['dense'] / times['compact']:>7.2f}x {err:>8.1e}",
          flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps_per_call", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true",
                      help="vit_tiny, batch 8, inference at batch 2")
  args = parser.parse_args(argv)
  args.batches = [1, 32, 256]
  config = vit_config.get_config()
  if args.quick:
    config.model = "vit_tiny"
    args.batch, args.steps_per_call, args.repeats = 8, 2, 1
    args.batches = [2]
  config.batch_size = args.batch
  device = jax.devices()[0]
  print(f"device: {jax.device_count()}x {device.device_kind}"
        f" ({device.platform}); jax {jax.__version__}; {config.model},"
        f" LRPET on its MLP layers at {config.macs_reduction:.1%} fewer MACs;"
        f" median of {args.repeats}")
  print(f"training, batch {args.batch}:", flush=True)
  training(config, args)
  print("inference, float32 (speed-up = dense latency / compact latency,"
        " measured in this run):", flush=True)
  inference(config, args)


if __name__ == "__main__":
  main()
