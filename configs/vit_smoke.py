r"""configs/vit.py in about a minute on a 2-core CPU, on the shared CIFAR-10 copy.

    python -m lrpet_jax.main --config=configs/vit_smoke.py --workdir=/tmp/vit_smoke

The authors' ViT and their whole recipe (AdamW, warm-up + cosine, label
smoothing, AutoAugment, random erasing, CutMix/Mixup, repeated augmentation
3, LRPET on the MLP layers at 27.4 % fewer MACs) on a 64-image training
subset: 12 steps of 32 (2 epochs of 3 passes, one of warm-up), a projection
at the end of each epoch, then the final phases on 100 test images. What it
checks: that a transformer runs through everything; not an accuracy.
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import cifar  # pylint: disable=g-import-not-at-top
import vit  # pylint: disable=g-import-not-at-top


def get_config():
  c = vit.get_config()
  c.update(cifar.SHARED_CIFAR10)
  c.train_subset = 64
  c.test_subset = 100
  c.batch_size = 32
  c.num_epochs = 2
  c.warmup_epochs = 1
  c.checkpoint_every_steps = 6
  c.log_every_steps = 3
  c.eval_batch_size = 100
  c.steps_per_call = 1
  return c
