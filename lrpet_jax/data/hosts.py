"""The process layout: who writes, and global arrays from each process's rows.

One run may span several processes (``jax.distributed``), each with its own
devices; the mesh spans all of them. Every process runs the same program on
global arrays; files are written by one process (``is_writer``: process 0),
while Orbax checkpoints are saved by all, as Orbax requires.

``global_rows`` builds a global array, sharded over the mesh's ``data``
axis, from rows every process can compute (an index into host data):
each process fills only the shards of its own devices, so the global batch
is the same whatever the number of processes and devices.
"""

from collections.abc import Callable

import jax
import numpy as np


def is_writer() -> bool:
  """The process that writes the workdir's files (process 0)."""
  return jax.process_index() == 0


def global_rows(rows: Callable[[np.ndarray], np.ndarray], index: np.ndarray,
                sharding) -> jax.Array:
  """The array ``rows(index)``, built shard by shard on this process's devices.

  Args:
    rows: host rows for an index array (e.g. ``lambda i: images[i]``).
    index: the global index array; its axis sharded over ``data`` (the
      sharding's partition spec) is split among the devices.
    sharding: the global array's sharding (``NamedSharding``).
  """
  probe = rows(index.reshape(-1)[:1])
  shape = index.shape + probe.shape[1:]
  return jax.make_array_from_callback(
      shape, sharding, lambda where: rows(index[where[:index.ndim]]))


def pad_to(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple
