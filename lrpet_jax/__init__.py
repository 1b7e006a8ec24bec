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
from lrpet_jax.core.ranks import uniform_ranks
from lrpet_jax.core.transform import low_rank_projection
from lrpet_jax.core.transform import lrpet
from lrpet_jax.deploy.compact import factorize

__version__ = "0.1.0"

# Modules of the flat layout before the subpackages, and where they are now
# (``data`` and ``deploy`` are now subpackages; their __init__ does the same).
_MOVED = {
    "projection": "core.projection", "transform": "core.transform",
    "bn": "core.bn", "ranks": "core.ranks", "layer_table":
    "analysis.layer_table", "factorized": "analysis.factorized",
    "folding": "analysis.folding", "accounting": "analysis.accounting",
    "rank_policies": "ranking.policies", "rank_selection": "ranking.selection",
    "imagenet_input": "data.imagenet",
    "inputs": "data.inputs", "hosts": "data.hosts", "compact": "deploy.compact",
    "export_check": "deploy.export_check", "serving": "deploy.serving",
    "tuning": "deploy.tuning",
    "steps": "pipeline.steps", "methods": "pipeline.methods",
    "ending": "pipeline.ending", "train": "pipeline.train",
    "checkpointing": "pipeline.checkpointing", "plots": "pipeline.plots",
    "errors": "pipeline.errors", "run_config": "pipeline.config_check",
    "run_record": "pipeline.records", "run_log": "pipeline.metrics",
    "runs": "pipeline.saved_run",
}


def __getattr__(name):
  """``from lrpet_jax import train`` (the flat layout): the module at its new
  place, with a DeprecationWarning naming it."""
  if name not in _MOVED:
    raise AttributeError(f"module 'lrpet_jax' has no attribute {name!r}")
  import importlib  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top
  warnings.warn(f"lrpet_jax.{name} is now lrpet_jax.{_MOVED[name]}",
                DeprecationWarning, stacklevel=2)
  return importlib.import_module(f"lrpet_jax.{_MOVED[name]}")


def load_run(workdir):
  """A run's workdir loaded back (``lrpet_jax.pipeline.saved_run``): ``.evaluate("compact")``,
  ``.training_state()``, the models, the test data as the run saw it."""
  from lrpet_jax.pipeline import saved_run  # pylint: disable=g-import-not-at-top
  return saved_run.load_run(workdir)


__all__ = [
    "Factorized",
    "NnxModel",
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
