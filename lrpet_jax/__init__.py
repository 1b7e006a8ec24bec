"""lrpet_jax: LRPET (low-rank projection with energy transfer) in JAX.

Guo et al., "Compact Model Training by Low-Rank Projection with Energy
Transfer", TNNLS 2024, arXiv:2204.05566.
"""

from lrpet_jax import models
from lrpet_jax import tracing
from lrpet_jax.bn import bn_out_scales
from lrpet_jax.bn import recompute_batch_stats
from lrpet_jax.compact import factorize
from lrpet_jax.factorized import Factorized
from lrpet_jax.accounting import cost
from lrpet_jax.accounting import ranks_for_budget
from lrpet_jax.projection import energy_kept
from lrpet_jax.projection import project_kernel
from lrpet_jax.projection import project_params
from lrpet_jax.ranks import uniform_ranks
from lrpet_jax.transform import low_rank_projection
from lrpet_jax.transform import lrpet

__version__ = "0.1.0"


def load_run(workdir):
  """A run's workdir loaded back (``lrpet_jax.runs``): ``.evaluate("compact")``,
  ``.training_state()``, the models, the test data as the run saw it."""
  from lrpet_jax import runs  # pylint: disable=g-import-not-at-top
  return runs.load_run(workdir)


__all__ = [
    "Factorized",
    "bn_out_scales",
    "cost",
    "energy_kept",
    "factorize",
    "load_run",
    "low_rank_projection",
    "lrpet",
    "models",
    "project_kernel",
    "project_params",
    "ranks_for_budget",
    "recompute_batch_stats",
    "tracing",
    "uniform_ranks",
]
