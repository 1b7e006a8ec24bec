r"""The whole pipeline in a few minutes on a 2-core CPU, on the shared CIFAR-10 copy.

    python -m lrpet_jax.main --config=configs/smoke.py --workdir=/tmp/lrpet_smoke

ResNet-20 on a 1,024-image training subset: 40 steps of 32, a projection every
10 steps and a checkpoint every 20, then final projection, BN recompute,
compact export and evaluation of both models on 1,000 test images.
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import cifar  # pylint: disable=g-import-not-at-top


def get_config():
  c = cifar.get_config()
  c.model = "resnet20"
  c.dataset = "image_folder:../shared/datasets/cifar10"
  c.train_subset = 1024
  c.test_subset = 1000
  c.batch_size = 32
  c.num_epochs = 2
  c.num_steps = 40
  c.project_every_steps = 10
  c.checkpoint_every_steps = 20
  c.log_every_steps = 10
  c.bn_recompute_batches = 8
  c.eval_batch_size = 500
  c.steps_per_call = 1  # 40 steps: compiling a longer call would not pay off
  return c
