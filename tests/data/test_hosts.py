"""data/hosts on its own: global_rows builds rows(index) shard by shard."""

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from lrpet_jax.data import hosts


def test_global_rows_is_rows_of_the_index_flat_and_stacked():
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  images = np.arange(20 * 2 * 3).reshape(20, 2, 3).astype(np.float32)
  rows = lambda i: images[i]
  index = np.array([7, 3, 19, 0])
  out = hosts.global_rows(rows, index, NamedSharding(mesh, P("data")))
  np.testing.assert_array_equal(np.asarray(out), images[index])
  stacked = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])  # (steps, batch)
  out = hosts.global_rows(rows, stacked, NamedSharding(mesh, P(None, "data")))
  assert out.shape == (2, 4, 2, 3)
  np.testing.assert_array_equal(np.asarray(out), images[stacked])


def test_pad_to_a_multiple_by_hand():
  assert [hosts.pad_to(n, 4) for n in (0, 1, 4, 5, 8)] == [0, 4, 4, 8, 8]
  assert hosts.is_writer()  # one process: process 0 writes
