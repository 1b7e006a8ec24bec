r"""Every arm of the paper-claims comparison at every scale, as a config.

    python -m lrpet_jax.main --config=configs/claims.py:cpu,lrpet --workdir=DIR [--config.seed=1]

``SCALE,ARM`` after the colon (big_vision style). ``experiments/run.py``
launches these; any of them can be run by hand as above.

Scales (ResNet-20 on the shared CIFAR-10 copy, ratio 0.54, unless named vit_*):
  cpu       10,000 training / 5,000 test images, 6 epochs (2-core CPU)
  cpu12     the same at 12 epochs: with ``cpu``, the budget ladder's CPU rung
  gpu       all images, 12 epochs
  ladder15  all images, 15 epochs  } the budget ladder for one GPU: does the
  ladder40  all images, 40 epochs  } LRPET–dense gap narrow with training?
  vit_cpu   configs/vit.py (the authors' ViT, AdamW, warm-up + cosine, label
            smoothing, LRPET on the MLP layers at 27.4 % fewer MACs) on
            5,000 training / 2,000 test images for 8 one-pass epochs (1 of
            warm-up); crop + flip only: without their AutoAugment, random
            erasing, CutMix/Mixup and repeated augmentation
  vit_gpu   configs/vit.py itself: all images, their 100 epochs (one GPU)

Arms (same model, data, schedule and ranks; each differs from ``lrpet`` in
the fields named):
  dense              method=dense: no projection
  lrpet              the paper's method (with log_spectra)
  lrpet_no_et        energy_transfer=False
  lrpet_no_bn        bn_rectification=False
  compact_scratch    method=compact: the factorized model from a random init
  decompose_dense    phase 1 of decompose-and-retrain: dense for the first
                     DECOMPOSE_FRACTION of the epochs, on the first part of
                     the same learning-rate schedule
  decompose_retrain  phase 2: method=compact for the remaining epochs on the
                     rest of the schedule; needs
                     --config.init_from=PHASE1_WORKDIR/dense_final
  lrpet_ratio<r>     LRPET at ratio r (the compression sweep)
  lrpet_budget       rank_policy=budget at the uniform ratio's MACs cut
  lrpet_energy<t>    rank_policy=energy, rank_energy=t
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import cifar  # pylint: disable=g-import-not-at-top,wrong-import-position
import vit  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATA = cifar.SHARED_CIFAR10
SCALES = {
    "cpu": dict(model="resnet20", **_DATA, train_subset=10000,
                test_subset=5000, num_epochs=6, lr_boundaries_epochs=(3, 4.5),
                ratio=0.54, bn_recompute_batches=20, log_every_steps=26),
    "cpu12": dict(model="resnet20", **_DATA, train_subset=10000,
                  test_subset=5000, num_epochs=12, lr_boundaries_epochs=(6, 9),
                  ratio=0.54, bn_recompute_batches=20, log_every_steps=26),
    "gpu": dict(model="resnet20", **_DATA, num_epochs=12,
                lr_boundaries_epochs=(6, 9), ratio=0.54,
                bn_recompute_batches=100, log_every_steps=100),
    "ladder15": dict(model="resnet20", **_DATA, num_epochs=15,
                     lr_boundaries_epochs=(7.5, 11.25), ratio=0.54,
                     bn_recompute_batches=100, log_every_steps=390),
    "ladder40": dict(model="resnet20", **_DATA, num_epochs=40,
                     lr_boundaries_epochs=(20, 30), ratio=0.54,
                     bn_recompute_batches=100, log_every_steps=390),
    "vit_cpu": dict(base="vit", **_DATA, train_subset=5000,
                    test_subset=2000, num_epochs=8, warmup_epochs=1,
                    log_every_steps=13, auto_augment="", random_erasing=0.0,
                    mix_prob=0.0, repeated_augmentation=1),
    "vit_gpu": dict(base="vit", **_DATA, log_every_steps=390),
}
# The config each scale starts from (default configs/cifar.py).
BASES = {"cifar": cifar, "vit": vit}
# Decompose-and-retrain decomposes after this fraction of the epochs.
DECOMPOSE_FRACTION = 2 / 3
ARMS = {
    "dense": dict(method="dense"),
    "lrpet": dict(log_spectra=True),
    "lrpet_no_et": dict(energy_transfer=False),
    "lrpet_no_bn": dict(bn_rectification=False),
    "compact_scratch": dict(method="compact"),
    # Ranks from the spectrum at the end of epoch 1 (lrpet_jax/ranking/policies.py)
    # at the MACs cut of the uniform ratio 0.54 (50.3% for ResNet-20).
    "lrpet_budget": dict(log_spectra=True, rank_policy="budget",
                         budget_macs_reduction=0.503),
}
PHASED = ("decompose_dense", "decompose_retrain")


def decompose_epoch(scale: str) -> int:
  return round(SCALES[scale]["num_epochs"] * DECOMPOSE_FRACTION)


def arm_overrides(scale: str, arm: str) -> dict:
  """The fields ``arm`` sets on top of the scale's (see the docstring)."""
  base = SCALES[scale]
  if arm in ARMS:
    return dict(ARMS[arm])
  if arm.startswith("lrpet_ratio"):
    try:
      return {"ratio": float(arm[len("lrpet_ratio"):])}
    except ValueError:
      pass
  if arm.startswith("lrpet_energy"):
    try:
      return dict(log_spectra=True, rank_policy="energy",
                  rank_energy=float(arm[len("lrpet_energy"):]))
    except ValueError:
      pass
  if arm in PHASED:
    # The same learning-rate schedule as the other arms, split at the cut.
    defaults = cifar.get_config()
    cut, epochs = decompose_epoch(scale), base["num_epochs"]
    bounds = base["lr_boundaries_epochs"]
    before = tuple(b for b in bounds if b <= cut)
    if arm == "decompose_dense":
      return dict(method="dense", num_epochs=cut, lr_boundaries_epochs=before)
    return dict(method="compact", num_epochs=epochs - cut,
                lr_boundaries_epochs=tuple(b - cut for b in bounds if b > cut),
                learning_rate=round(defaults.learning_rate
                                    * defaults.lr_decay ** len(before), 12))
  raise ValueError(
      f"configs/claims.py: unknown arm {arm!r}; one of"
      f" {', '.join([*ARMS, *PHASED])}, lrpet_ratio<r> or lrpet_energy<t>")


def get_config(arg: str = ""):
  scale, _, arm = arg.partition(",")
  if scale not in SCALES or not arm:
    raise ValueError(
        f"configs/claims.py: want SCALE,ARM with SCALE one of"
        f" {', '.join(SCALES)}; got {arg!r}")
  fields = dict(SCALES[scale])
  c = BASES[fields.pop("base", "cifar")].get_config()
  c.update(fields)
  c.update(arm_overrides(scale, arm))
  return c
