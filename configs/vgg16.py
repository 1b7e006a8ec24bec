r"""CIFAR-10 VGG-16 (with BatchNorm) under LRPET, with the authors' rank floors.

    python -m lrpet_jax.main --config=configs/vgg16.py --workdir=runs/vgg16

As ``configs/cifar.py`` (400 epochs, batch 128, lr 0.1 ×0.1 at 200 and 300),
with the model VGG-16 and the floors that the authors' ``cifar10_train.py``
(canyyang/LRPET, model "vgg16_bn") puts on uniform-ratio ranks: the first
convolution keeps rank ≥ 18 (2/3 of its 27 = 3·3·3 rows), every other
convolution rank ≥ 43 (≈2/3 of the narrowest layer's 64 channels).
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import cifar  # pylint: disable=g-import-not-at-top


def get_config():
  c = cifar.get_config()
  c.model = "vgg16"
  c.rank_floor = 43
  c.first_rank_floor = 18
  return c
