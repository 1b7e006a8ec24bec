r"""ImageNet ResNet-50: 120 epochs, batch 256, lr 0.1 ×0.1 at 30/60/90, projection every 250 steps.

    python -m lrpet_jax.main --config=configs/imagenet.py --workdir=runs/r50 \
        --config.data_dir=/path/to/tensorflow_datasets

``imagenet2012`` needs the tfds extra (``python3 -m pip install -r
requirements-tfds.txt``) and the manual download tfds describes (tars in
``<data_dir>/downloads/manual``). Training crops: RandomResizedCrop 224 +
flip; evaluation: resize 256, center crop 224; top-1 and top-5 are logged.
Multi-host: add ``--config.distributed=True`` on every host.
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import cifar  # pylint: disable=g-import-not-at-top

from lrpet_jax.data import datasets  # pylint: disable=g-import-not-at-top


def get_config():
  c = cifar.get_config()
  c.model = "resnet50"
  c.num_classes = 1000
  c.dataset = "imagenet2012"
  c.image_size = 224
  c.mean, c.std = datasets.NORMALIZATION["imagenet2012"]
  c.num_epochs = 120
  c.batch_size = 256
  c.learning_rate = 0.1
  c.lr_boundaries_epochs = (30, 60, 90)
  c.project_every_steps = 250
  c.bn_recompute_batches = 200
  c.eval_batch_size = 250
  c.log_every_steps = 100
  return c
