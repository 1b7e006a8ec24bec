"""deploy/variables_file on its own: variables round-trip bit for bit, with
and without an abstract layout, and a second save replaces the first."""

import jax
import numpy as np

from lrpet_jax.deploy import variables_file


def variables(value):
  rng = np.random.default_rng(int(value))
  return {"params": {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4))
                              .astype(np.float32) + value}},
          "batch_stats": {"bn": {"mean": np.full(4, value, np.float32)}}}


def test_round_trip_bit_for_bit_and_replace(tmp_path):
  path = tmp_path / "compact"
  variables_file.save(path, variables(1.0))
  back = variables_file.restore(path)
  jax.tree.map(np.testing.assert_array_equal, back, variables(1.0))
  variables_file.save(path, variables(2.0))  # force: replaces
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          variables(0.0))
  back = variables_file.restore(path, abstract)
  jax.tree.map(np.testing.assert_array_equal, back, variables(2.0))
  assert back["params"]["conv"]["kernel"].dtype == np.float32
