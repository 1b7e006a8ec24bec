r"""Does BN rectification make the low-rank approximation more accurate?

Measured directly, without training: for trained dense models (one workdir
per seed, ``--config.method=dense``), every convolution is projected once,
at each ratio, with and without BN rectification, each with and without
energy transfer, and compared with the dense model:

- per layer, on real training images: the relative error of the BatchNorm
  output, ‖BN(W∗x) − BN(P(W)∗x)‖ / ‖BN(W∗x)‖, where x is the layer's input
  in the dense model and BN uses its running statistics;
- the test top-1 of the projected model right after the projection, with the
  running BatchNorm statistics and with precise BN (statistics recomputed
  from training batches).

    python -m experiments.bn_rectification --dense=W0,W1,W2 [--quick]
    python -m experiments.bn_rectification --quick

Without ``--dense``, ``--quick`` first trains its own small dense model
(ResNet-8, 16 steps on the shared CIFAR-10 copy, in ``runs/quick/``).

Each workdir's ``config.json`` gives the model, data, subsets, seed and
normalization it was trained with. Writes
``experiments/results/mechanisms/bn_rectification.json``; the report turns it
into a verdict (paired differences over seeds). With ``--quick``
(a smoke check) the record goes to ``runs/quick/`` (git-ignored), never
over the results.
"""

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from lrpet_jax import models
from lrpet_jax.analysis import tracing
from lrpet_jax.core import bn
from lrpet_jax.core import projection
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.data import datasets as data_lib
from lrpet_jax.pipeline import steps
import ml_collections  # pylint: disable=g-bad-import-order

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "mechanisms" / "bn_rectification.json"
QUICK_OUT = ROOT / "runs" / "quick" / "bn_rectification.json"
RATIOS = (0.3, 0.54, 0.7, 0.8)
VARIANTS = {  # name: (bn_rectification, energy_transfer)
    "rect_et": (True, True), "rect": (True, False),
    "plain_et": (False, True), "plain": (False, False)}


def load_run(workdir: pathlib.Path):
  """(config, dense variables, data) of a finished dense run."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(
      json.loads((workdir / "config.json").read_text()))
  model = models.create(config.model, config.num_classes)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  variables = ocp.StandardCheckpointer().restore(
      (workdir / "dense_final").absolute(), abstract)
  d = data_lib.load(config.dataset, config.get("data_dir"),
                    config.train_subset, config.test_subset, config.seed)
  return config, model, variables, d


def quick_dense_run() -> pathlib.Path:
  """A small finished dense run for ``--quick`` (kept in ``runs/quick/``: a
  second quick run reuses it)."""
  sys.path.insert(0, str(ROOT / "configs"))
  import smoke  # pylint: disable=g-import-not-at-top
  from lrpet_jax.pipeline import train  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.update(dict(
      method="dense", model="resnet8", num_steps=16, train_subset=256,
      test_subset=200, bn_recompute_batches=1, checkpoint_every_steps=16,
      dataset=f"image_folder:{ROOT.parent / 'shared' / 'datasets' / 'cifar10'}"))
  workdir = QUICK_OUT.parent / "bn_rectification_dense"
  train.train_and_evaluate(config, str(workdir))
  return workdir


def normalization(config):
  return data_lib.Normalization(tuple(config.mean), tuple(config.std))


def normalized(images, config):
  return data_lib.normalize(jnp.asarray(images), normalization(config))


def conv_inputs(model, variables, x):
  """{layer path: (its input, the conv without its bias)} for every nn.Conv
  of the dense model."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  found = {}

  def record(next_fun, args, kwargs, context):
    if (isinstance(context.module, nn.Conv)
        and context.method_name == "__call__"):
      m = context.module
      found[tuple(m.path)] = (args[0], m.clone(parent=None, use_bias=False))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x, train=False)
  return found


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def bn_output_errors(variables, projected, inputs, pairs, eps=1e-5):
  """{layer: ‖BN(W∗x) − BN(P(W)∗x)‖ / ‖BN(W∗x)‖} over the given inputs."""
  params = variables["params"]
  stats = variables["batch_stats"]
  errors = {}
  for path, (x, conv) in inputs.items():
    key = "/".join(path + ("kernel",))
    if key not in pairs:
      continue
    bn_path = tuple(pairs[key].split("/"))
    gamma, beta = _at(params, bn_path)["scale"], _at(params, bn_path)["bias"]
    mean, var = _at(stats, bn_path)["mean"], _at(stats, bn_path)["var"]
    norm = lambda y: (y - mean) / jnp.sqrt(var + eps) * gamma + beta
    w, pw = _at(params, path)["kernel"], _at(projected, path)["kernel"]
    y = norm(conv.apply({"params": {"kernel": w}}, x))
    yp = norm(conv.apply({"params": {"kernel": pw}}, x))
    errors["/".join(path)] = float(jnp.linalg.norm(y - yp)
                                   / jnp.linalg.norm(y))
  return errors


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dense", default=None,
                      help="comma-separated workdirs of finished dense runs"
                      " (--quick without it: a small one of its own)")
  parser.add_argument("--ratios", default=",".join(map(str, RATIOS)))
  parser.add_argument("--images", type=int, default=None,
                      help="training images for the per-layer errors (512;"
                      " --quick: 64)")
  parser.add_argument("--bn_batches", type=int, default=None,
                      help="batches of 128 for precise BN (20; --quick: 2)")
  parser.add_argument("--out", default=None,
                      help=f"default {OUT.relative_to(ROOT)}; with --quick"
                      f" {QUICK_OUT.relative_to(ROOT)} (git-ignored: a quick"
                      " check never replaces results)")
  parser.add_argument("--quick", action="store_true",
                      help="one ratio, 64 images, 2 BN batches")
  args = parser.parse_args(argv)
  if args.dense is None:
    if not args.quick:
      parser.error("--dense is required (or --quick, which trains its own)")
    args.dense = str(quick_dense_run())
  ratios = [float(r) for r in args.ratios.split(",")]
  if args.quick:
    ratios = ratios[1:2]
  if args.images is None:
    args.images = 64 if args.quick else 512
  if args.bn_batches is None:
    args.bn_batches = 2 if args.quick else 20

  record = {"ratios": ratios, "variants": {k: dict(
      bn_rectification=v[0], energy_transfer=v[1]) for k, v in VARIANTS.items()},
            "images": args.images, "bn_batches": args.bn_batches, "runs": []}
  for workdir in args.dense.split(","):
    workdir = pathlib.Path(workdir)
    started = time.time()
    config, model, variables, d = load_run(workdir)
    pairs = tracing.bn_pairs(tracing.eval_apply(model), variables,
                             d.train_images.shape[1:]).pairs
    evaluate = steps.make_eval_fn(model, normalization(config))
    test = [(d.test_images[i:i + 500], d.test_labels[i:i + 500])
            for i in range(0, len(d.test_labels), 500)]
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(len(d.train_labels), args.images, replace=False)
    x = normalized(d.train_images[sample], config)
    inputs = conv_inputs(model, variables, x)
    order = rng.permutation(len(d.train_labels))
    bn_batches = [normalized(d.train_images[order[i * 128:(i + 1) * 128]],
                             config) for i in range(args.bn_batches)]
    apply_fn = lambda v, b: model.apply(v, b, train=True,
                                        mutable=["batch_stats"])
    run = {"workdir": str(workdir), "seed": config.seed, "model": config.model,
           "dense_top1": evaluate(variables, test)["top1"], "results": []}
    scales = bn.bn_out_scales(variables["params"], variables["batch_stats"],
                              pairs)
    for ratio in ratios:
      ranks = ranks_lib.uniform_ranks(variables["params"], ratio)
      for name, (rect, et) in VARIANTS.items():
        projected = projection.project_params(
            variables["params"], ranks, out_scales=scales if rect else None,
            energy_transfer=et)
        errors = bn_output_errors(variables, projected, inputs, pairs)
        running = evaluate({**variables, "params": projected}, test)["top1"]
        precise_stats = bn.recompute_batch_stats(
            apply_fn, {**variables, "params": projected}, bn_batches)
        precise = evaluate({"params": projected,
                            "batch_stats": precise_stats}, test)["top1"]
        run["results"].append({
            "ratio": ratio, "variant": name, "layer_errors": errors,
            "mean_layer_error": float(np.mean(list(errors.values()))),
            "top1_running_bn": running, "top1_precise_bn": precise})
        print(f"seed {config.seed} ratio {ratio} {name:9}: mean BN-output"
              f" error {run['results'][-1]['mean_layer_error']:.4f}, top-1"
              f" {running:.4f} (running BN) {precise:.4f} (precise BN)",
              flush=True)
    run["wall_time_s"] = time.time() - started
    record["runs"].append(run)
  out = pathlib.Path(args.out or (QUICK_OUT if args.quick else OUT))
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=1) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
