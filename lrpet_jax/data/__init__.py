"""Where the images come from and which process holds which rows.

``datasets`` (CIFAR-like sets in memory: tfds or an image folder, subsets,
epoch order, augmentation, normalization), ``imagenet`` (ImageNet through
tf.data), ``inputs`` (the training loop's batch adapters) and ``hosts``
(processes: global arrays from each process's rows, the one writer).

Imports: nothing else of ``lrpet_jax``.
"""


def __getattr__(name):
  """``lrpet_jax.data.X`` of the flat layout, where ``lrpet_jax.data`` was
  a module: ``X`` from ``datasets``, with a DeprecationWarning naming it."""
  import importlib  # pylint: disable=g-import-not-at-top
  import pkgutil  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top
  if name in {m.name for m in pkgutil.iter_modules(__path__)}:
    raise AttributeError(name)  # a submodule not imported yet: the import
    # system imports it on this answer
  module = importlib.import_module("lrpet_jax.data.datasets")
  if name.startswith("__") or not hasattr(module, name):
    raise AttributeError(f"module 'lrpet_jax.data' has no attribute {name!r}")
  warnings.warn(f"lrpet_jax.data.{name} is now lrpet_jax.data.datasets.{name}",
                DeprecationWarning, stacklevel=2)
  return getattr(module, name)
