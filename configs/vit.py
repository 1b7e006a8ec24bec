r"""The authors' ViT on CIFAR-10 (their VisionTransformer/baseline.py), with LRPET on its feed-forward layers.

    python -m lrpet_jax.main --config=configs/vit.py --workdir=/tmp/vit

Their recipe (``baseline.py``): the ViT of ``lrpet_jax/models/vit.py``
(2.69M params, stochastic depth 0.1), 100 epochs of batch 128, AdamW (lr
1e-3, weight decay 5e-2), 10 warm-up epochs then cosine, label smoothing
0.1; random crop + flip, AutoAugment's CIFAR-10 policy, random erasing 0.25,
CutMix or Mixup on half the batches (α = β = 1), and repeated augmentation
3: their ``RASampler(len_factor=3)`` makes each epoch three passes over the
training set (1,171 steps), so the 100 epochs are 300 passes and the
warm-up, the cosine and the once-per-epoch projection count those epochs.
LRPET: AdamW followed by the projection once per epoch (``optax.chain``),
on the Linear layers of the MLP blocks as their ``lrpet.py`` selects
(``project_layers="mlp"``), at the uniform ratio whose compact model has
27.4 % fewer MACs (their FLOPs cut); no BatchNorm, so no rectification.

Their scheduler's warm-up start and cosine floor (``utils/scheduler.py``,
not in their repository's copy) are taken as 0 here.
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import cifar  # pylint: disable=g-import-not-at-top


def get_config():
  c = cifar.get_config()
  c.model = "vit_cifar"
  c.num_epochs = 100
  c.batch_size = 128
  c.optimizer = "adamw"
  c.learning_rate = 1e-3
  c.weight_decay = 5e-2
  c.lr_schedule = "cosine"
  c.lr_boundaries_epochs = ()
  c.warmup_epochs = 10
  c.label_smoothing = 0.1
  c.auto_augment = "cifar10"
  c.random_erasing = 0.25
  c.mix_prob = 0.5
  c.mixup_alpha = c.cutmix_beta = 1.0
  c.repeated_augmentation = 3
  c.project_layers = "mlp"
  c.macs_reduction = 0.274
  return c
