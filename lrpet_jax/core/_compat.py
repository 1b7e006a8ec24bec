"""The flat layout's names, where a module became a subpackage."""

import importlib
import pkgutil
import warnings


def moved_attributes(package: str, path, module: str):
  """A module ``__getattr__`` for ``package`` (once a module, now a
  subpackage at ``path``): ``package.X`` is ``package.module.X``, with a
  DeprecationWarning naming it."""

  def __getattr__(name):  # pylint: disable=invalid-name
    if name in {m.name for m in pkgutil.iter_modules(path)}:
      raise AttributeError(name)  # a submodule not imported yet: the import
      # system imports it on this answer
    target = importlib.import_module(f"{package}.{module}")
    if name.startswith("__") or not hasattr(target, name):
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    warnings.warn(f"{package}.{name} is now {package}.{module}.{name}",
                  DeprecationWarning, stacklevel=2)
    return getattr(target, name)

  return __getattr__
