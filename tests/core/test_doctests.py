"""The examples in the public functions' docstrings run as written."""

import doctest

import pytest

from lrpet_jax.core import projection
from lrpet_jax.core import ranks
from lrpet_jax.core import transform


@pytest.mark.parametrize("module", [projection, ranks, transform],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0, f"{module.__name__} has no example"
  assert result.failed == 0
