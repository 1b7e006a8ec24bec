r"""The whole pipeline in about 1½ minutes on a 2-core CPU, on the shared CIFAR-10 copy.

    python -m lrpet_jax.main --config=configs/smoke.py --workdir=/tmp/lrpet_smoke

ResNet-20 on a 1,024-image training subset: 120 steps of 32 (about 4 epochs)
at a constant learning rate of 0.05, a projection at the end of every epoch
(as in the paper) and a checkpoint and evaluation every 60 steps, then the
final projection, BN recompute, compact export and evaluation of both models
on 1,000 test images.

What it checks: that everything runs and writes the workdir (the compact
model has ~50 % fewer MACs than the dense one, and its test accuracy equals
the projected dense model's). What to expect: a model that has begun to
learn, about 20-30 % top-1 (27.2 % measured on a 2-core CPU; chance is 10 %),
not a useful classifier: that takes the paper's 400 epochs (configs/cifar.py).
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import cifar  # pylint: disable=g-import-not-at-top


def get_config():
  c = cifar.get_config()
  c.model = "resnet20"
  c.update(cifar.SHARED_CIFAR10)
  c.train_subset = 1024
  c.test_subset = 1000
  c.batch_size = 32
  c.num_epochs = 2
  c.num_steps = 120
  c.learning_rate = 0.05  # 0.1 learns less in so few steps
  c.lr_boundaries_epochs = ()  # constant: the run ends long before a decay
  c.project_every_steps = 0  # once per epoch (32 steps)
  c.checkpoint_every_steps = 60
  c.log_every_steps = 20
  c.bn_recompute_batches = 8
  c.eval_batch_size = 500
  c.steps_per_call = 1  # 120 steps: compiling a longer call would not pay off
  return c
