r"""Does energy transfer alleviate the gradient vanishing that projection causes?

Trains LRPET with and without energy transfer (same seed, data, schedule and
ranks; the pipeline's own step, ``experiment.Experiment.step_fn``) and records, at
every projection (once per epoch) and for every projected layer:

- the gradient norm over the ``--window`` steps just before the projection
  (the projecting step included: its gradient is taken before the
  truncation) and the ``--window`` steps just after it, and their ratio
  post/pre (< 1: the gradients shrank after the projection);
- the weight norm the projection removed, 1 − ‖P(W′)‖ / ‖W′‖, where W′ is
  the kernel after the step's SGD update (≈ 0 with energy transfer, which
  keeps the norm of W′·a; without it the tail's share is lost), and how far
  it moved the kernel, ‖W′ − P(W′)‖ / ‖W′‖;
- the training-loss jump L(P(W′)) − L(W′), both on the same fixed batch of
  training images, in training mode.

    python -m experiments.energy_transfer [--seeds 0,1,2] [--quick]

Writes ``experiments/results/mechanisms/energy_transfer.json``; the report
compares the two arms by paired differences over seeds. With ``--quick``
(a smoke check) the record goes to ``runs/quick/`` (git-ignored), never
over the results.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

from lrpet_jax.core import _trees
from lrpet_jax.data import datasets as data_lib
from lrpet_jax.pipeline import experiment

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cifar_config():
  """configs/cifar.py's get_config(), loaded by path (configs/ is not a
  package, and putting it on sys.path would shadow module names)."""
  spec = importlib.util.spec_from_file_location("cifar_config",
                                                ROOT / "configs" / "cifar.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()

OUT = ROOT / "experiments" / "results" / "mechanisms" / "energy_transfer.json"
QUICK_OUT = ROOT / "runs" / "quick" / "energy_transfer.json"
# CPU scale: ResNet-20 on 10,000 training images, 4 epochs of 78 steps. The
# learning rate drops mid-epoch, away from the projections (at epoch ends),
# so that no before/after window straddles a drop.
SCALE = dict(model="resnet20", dataset="image_folder:../shared/datasets/cifar10",
             mean=data_lib.NORMALIZATION["cifar10"].mean,
             std=data_lib.NORMALIZATION["cifar10"].std, train_subset=10000, test_subset=1000, num_epochs=4,
             lr_boundaries_epochs=(2.5, 3.5), ratio=0.54)


def make_config(seed, energy_transfer, overrides):
  config = _cifar_config()
  config.update(overrides)
  config.seed, config.energy_transfer = seed, energy_transfer
  return config


def one_run(config, d, window, probe_images):
  """Per-step gradient norms, and per projection the removed norm and the
  loss jump, of one LRPET run."""
  shape = (32, 32, 3)
  n = len(d.train_labels)
  steps_per_epoch = n // config.batch_size
  total = config.num_epochs * steps_per_epoch
  exp = experiment.from_config(config, input_shape=shape,
                               steps_per_epoch=steps_per_epoch, method="lrpet")
  method, model, normalization = exp.method, exp.method.model, exp.normalization
  state = exp.initial_state()
  calls = {p: exp.step_fn(project=p, grad_norms=True) for p in (False, True)}
  layers = sorted(_trees.leaves_by_path(method.setting.ranks))
  names = ["/".join(k[:-1]) for k in layers]
  probe_x = data_lib.normalize(jnp.asarray(probe_images[0]), normalization)
  probe_y = jnp.asarray(probe_images[1])

  @jax.jit
  def probe_loss(params, batch_stats):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats},
                            probe_x, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, probe_y).mean()

  window_state = experiment.empty_window()
  norms, projections = [], []
  for step in range(total):
    idx = data_lib.batch_indices(config.seed, step, n, config.batch_size)
    projecting = method.projects(step)
    state, window_state, aux = calls[projecting](
        state, window_state, d.train_images[idx], d.train_labels[idx])
    flat = _trees.leaves_by_path(jax.device_get(aux["grad_norms"]))
    norms.append([float(flat[k]) for k in layers])
    if projecting:
      pre = _trees.leaves_by_path(jax.device_get(aux["pre_projection_params"]))
      post = _trees.leaves_by_path(jax.device_get(state.params))
      projections.append({
          "step": step + 1,
          # 1 − ‖P(W′)‖/‖W′‖: the norm the projection took away.
          "removed_norm": [float(1 - np.linalg.norm(post[k])
                                 / np.linalg.norm(pre[k])) for k in layers],
          # ‖W′ − P(W′)‖/‖W′‖: how far the projection moved the kernel.
          "change": [float(np.linalg.norm(pre[k] - post[k])
                           / np.linalg.norm(pre[k])) for k in layers],
          "loss_jump": float(probe_loss(state.params, state.batch_stats)
                             - probe_loss(aux["pre_projection_params"],
                                          state.batch_stats))})
  norms = np.asarray(norms)  # (steps, layers)
  for p in projections:
    s = p["step"]  # 1-based: steps s-window+1..s before, s+1..s+window after
    if s + window > total:
      p["grad_ratio"] = None
      continue
    pre = norms[s - window:s].mean(0)
    post = norms[s:s + window].mean(0)
    p["grad_pre"], p["grad_post"] = pre.tolist(), post.tolist()
    p["grad_ratio"] = (post / pre).tolist()
  return {"layers": names, "steps": total, "projections": projections,
          "grad_norms": norms.tolist()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--window", type=int, default=5)
  parser.add_argument("--out", default=None,
                      help=f"default {OUT.relative_to(ROOT)}; with --quick"
                      f" {QUICK_OUT.relative_to(ROOT)} (git-ignored: a quick"
                      " check never replaces results)")
  parser.add_argument("--quick", action="store_true",
                      help="2 epochs of 4 steps of 64 on 256 images, one"
                      " seed")
  args = parser.parse_args(argv)
  overrides = dict(SCALE)
  seeds = [int(s) for s in args.seeds.split(",")]
  if args.quick:
    overrides.update(train_subset=256, test_subset=100, num_epochs=2,
                     batch_size=64)
    seeds, args.window = seeds[:1], 2
  record = {"scale": overrides, "window": args.window, "runs": []}
  for seed in seeds:
    base = make_config(seed, True, overrides)
    d = data_lib.load(base.dataset, base.get("data_dir"), base.train_subset,
                      base.test_subset, seed)
    probe = np.random.default_rng(seed + 100).choice(
        len(d.train_labels), min(256, len(d.train_labels)), replace=False)
    for et in (True, False):
      started = time.time()
      config = make_config(seed, et, overrides)
      run = one_run(config, d, args.window,
                    (d.train_images[probe], d.train_labels[probe]))
      run.update(seed=seed, energy_transfer=et,
                 wall_time_s=time.time() - started)
      record["runs"].append(run)
      for p in run["projections"]:
        ratio = ("—" if p["grad_ratio"] is None
                 else f"{np.median(p['grad_ratio']):.3f}")
        print(f"seed {seed} ET {et!s:5} step {p['step']:4}: median grad"
              f" post/pre {ratio}, median removed norm"
              f" {np.median(p['removed_norm']):.3f}, loss jump"
              f" {p['loss_jump']:+.4f}", flush=True)
  out = pathlib.Path(args.out or (QUICK_OUT if args.quick else OUT))
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
