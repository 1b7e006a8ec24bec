"""lrpet_jax: LRPET (low-rank projection with energy transfer) in JAX.

Guo et al., "Compact Model Training by Low-Rank Projection with Energy
Transfer", TNNLS 2024, arXiv:2204.05566.
"""

from lrpet_jax import models
from lrpet_jax.analysis import tracing
from lrpet_jax.analysis.accounting import cost
from lrpet_jax.analysis.accounting import ranks_for_budget
from lrpet_jax.analysis.factorized import Factorized
from lrpet_jax.analysis.nnx_models import NnxModel
from lrpet_jax.core.bn import bn_out_scales
from lrpet_jax.core.bn import recompute_batch_stats
from lrpet_jax.core.projection import energy_kept
from lrpet_jax.core.projection import project_kernel
from lrpet_jax.core.projection import project_params
from lrpet_jax.core.ranks import Ranks
from lrpet_jax.core.ranks import uniform_ranks
from lrpet_jax.core.transform import low_rank_projection
from lrpet_jax.core.transform import lrpet
from lrpet_jax.deploy.compact import factorize

__version__ = "0.1.0"

def load_run(workdir):
  """A run's workdir loaded back (``lrpet_jax.pipeline.saved_run``): ``.evaluate("compact")``,
  ``.training_state()``, the models, the test data as the run saw it."""
  from lrpet_jax.pipeline import saved_run  # pylint: disable=g-import-not-at-top
  return saved_run.load_run(workdir)


__all__ = [
    "Factorized",
    "NnxModel",
    "Ranks",
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
