"""The package's imports point one way: each subpackage imports only the
subpackages listed before it in ``ORDER`` (the README's layout section, and
each subpackage's ``__init__`` docstring), and the commands sit on top."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lrpet_jax"
# Lowest first. ``models`` may use ``analysis.factorized`` (the compact
# model), ``data`` only ``core``'s shim for the flat layout's names.
ORDER = ("core", "analysis", "ranking", "models", "data", "deploy", "pipeline")
COMMANDS = ("main", "export", "launch", "__init__")


def room(module: str) -> str:
  """'lrpet_jax.core.bn' -> 'core'; a top-level module -> its name."""
  return module.split(".")[1]


def imported(path: pathlib.Path) -> set[str]:
  """The lrpet_jax modules a file imports (at any depth in the file)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
        "lrpet_jax"):
      if node.module == "lrpet_jax":
        names.update(f"lrpet_jax.{a.name}" for a in node.names)
      else:
        names.add(node.module)
    elif isinstance(node, ast.Import):
      names.update(a.name for a in node.names
                   if a.name.startswith("lrpet_jax."))
  return names


def modules():
  return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_subpackage_or_is_a_command():
  for path in modules():
    parts = path.relative_to(PACKAGE).parts
    assert (parts[0] in ORDER if len(parts) > 1
            else path.stem in COMMANDS), path


def upward(path: pathlib.Path, subpackage: str) -> list[str]:
  """The imports of ``path`` (in ``subpackage``) of a command or of a
  subpackage above it."""
  level = ORDER.index(subpackage)
  return sorted(name for name in imported(path)
                if room(name) not in ORDER or ORDER.index(room(name)) > level)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(
    p.relative_to(PACKAGE)))
def test_no_module_imports_upward(path):
  parts = path.relative_to(PACKAGE).parts
  if len(parts) > 1:  # a command may import anything
    assert not upward(path, parts[0]), "/".join(parts)


def test_the_check_sees_an_upward_import(tmp_path):
  bad = tmp_path / "x.py"
  bad.write_text("from lrpet_jax.core import projection\n"
                 "from lrpet_jax.pipeline import train\n"
                 "def f():\n  from lrpet_jax import main, models\n")
  assert upward(bad, "analysis") == ["lrpet_jax.main", "lrpet_jax.models",
                                     "lrpet_jax.pipeline"]
  assert upward(bad, "pipeline") == ["lrpet_jax.main"]


def test_no_flat_layout_names():
  """The layout before the subpackages was never released: no shims."""
  import lrpet_jax  # pylint: disable=g-import-not-at-top
  from lrpet_jax import data  # pylint: disable=g-import-not-at-top
  for name in ("rank_selection", "train", "projection"):
    with pytest.raises(AttributeError):
      getattr(lrpet_jax, name)
  with pytest.raises(AttributeError):
    data.load  # pylint: disable=pointless-statement
  assert lrpet_jax.Ranks is lrpet_jax.core.ranks.Ranks
