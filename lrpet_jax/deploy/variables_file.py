"""A model's variables as an Orbax checkpoint directory (``compact/``,
``dense_final/``, ``tuned/``): written and read back the one way.

Every process takes part in a save (Orbax's collective); the save has
finished when ``save`` returns.
"""

import pathlib
from typing import Any


def save(path: pathlib.Path, variables: Any, *, force: bool = True) -> None:
  """Writes ``variables`` to the directory ``path`` (replacing it with
  ``force``) and waits until it is complete."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(pathlib.Path(path).absolute(), variables, force=force)
  checkpointer.wait_until_finished()


def restore(path: pathlib.Path, abstract: Any = None) -> Any:
  """The variables at ``path``, laid out as ``abstract`` (its
  ``ShapeDtypeStruct``s) when given."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.StandardCheckpointer().restore(pathlib.Path(path).absolute(),
                                            abstract)
