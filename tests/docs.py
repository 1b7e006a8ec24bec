"""The README and the pages under docs/: their Python blocks, for the tests
that run them (``tests/test_docs.py`` checks that every block is run)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = ("README.md", *sorted(f"docs/{p.name}"
                              for p in (ROOT / "docs").glob("*.md")))


def text(page: str) -> str:
  return (ROOT / page).read_text()


def blocks(page: str) -> list[str]:
  """The ```python blocks of ``page`` ("README.md" or "docs/NAME.md")."""
  return re.findall(r"```python\n(.*?)```", text(page), re.S)


def block(page: str, marker: str) -> str:
  """The one Python block of ``page`` that contains ``marker``."""
  (found,) = [b for b in blocks(page) if marker in b]
  return found
