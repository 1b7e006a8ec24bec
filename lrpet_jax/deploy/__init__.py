"""The compact model and what ships it.

``compact`` (the compact checkpoint and report from a projected dense
model), ``serving`` (the ``jax.export`` serving artifact, BatchNorm folded),
``export_check`` (each shipped form against the trained model), ``tuning``
(per-layer latency tuning of the compact model) and ``from_checkpoint`` (a
dense checkpoint to all of these: the library behind
``python -m lrpet_jax.export``).

Imports: ``lrpet_jax.core``, ``analysis``, ``ranking``, ``models``, ``data``.
"""


def __getattr__(name):
  """``lrpet_jax.deploy.X`` of the flat layout, where ``lrpet_jax.deploy`` was
  a module: ``X`` from ``from_checkpoint``, with a DeprecationWarning naming it."""
  import importlib  # pylint: disable=g-import-not-at-top
  import pkgutil  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top
  if name in {m.name for m in pkgutil.iter_modules(__path__)}:
    raise AttributeError(name)  # a submodule not imported yet: the import
    # system imports it on this answer
  module = importlib.import_module("lrpet_jax.deploy.from_checkpoint")
  if name.startswith("__") or not hasattr(module, name):
    raise AttributeError(f"module 'lrpet_jax.deploy' has no attribute {name!r}")
  warnings.warn(f"lrpet_jax.deploy.{name} is now lrpet_jax.deploy.from_checkpoint.{name}",
                DeprecationWarning, stacklevel=2)
  return getattr(module, name)
