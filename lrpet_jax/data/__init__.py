"""Where the images come from and which process holds which rows.

``datasets`` (CIFAR-like sets in memory: tfds or an image folder, subsets,
epoch order, crop + flip, normalization), ``augmentations`` (the ViT
recipe's AutoAugment, random erasing, CutMix/Mixup, on the device),
``imagenet`` (ImageNet through
tf.data), ``inputs`` (the training loop's batch adapters) and ``hosts``
(processes: global arrays from each process's rows, the one writer).

Imports: nothing else of the package.
"""

