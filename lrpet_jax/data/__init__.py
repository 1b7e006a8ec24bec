"""Where the images come from and which process holds which rows.

``datasets`` (CIFAR-like sets in memory: tfds or an image folder, subsets,
epoch order, crop + flip, normalization), ``augmentations`` (the ViT
recipe's AutoAugment, random erasing, CutMix/Mixup, on the device),
``imagenet`` (ImageNet through
tf.data), ``inputs`` (the training loop's batch adapters) and ``hosts``
(processes: global arrays from each process's rows, the one writer).

Imports: ``lrpet_jax.core`` only (its shim for the flat layout's names).
"""


from lrpet_jax.core import _compat

# lrpet_jax.data was a module: its names, from datasets, with a warning.
__getattr__ = _compat.moved_attributes(__name__, __path__, "datasets")
