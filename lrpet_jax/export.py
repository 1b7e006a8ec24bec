r"""Dense checkpoint → compact checkpoint plus a per-layer report.

    python -m lrpet_jax.export --variables=DENSE_DIR --workdir=OUT_DIR \
        --model=resnet56 --ratio=0.54 [--num_classes=10 --input_size=32]

``DENSE_DIR`` is an Orbax ``StandardCheckpointer`` checkpoint of the dense
model's ``{"params", "batch_stats"}`` (LRPET-projected: the factorization is
then exact; otherwise it truncates). Ranks come from ``--ratio``,
``--macs_reduction`` / ``--params_reduction`` (``ranks_for_budget``) over the
convolutions (``--project_dense`` adds Dense kernels), or
``--ranks=FILE.json`` ({"layer/kernel": rank}). Writes to ``OUT_DIR``:

    compact/             Orbax checkpoint of the compact model's variables
    ranks.json           the ranks, to rebuild the compact model
    compact_report.json  model, costs dense vs compact, per-layer rows
    compact_report.txt   the same as a table (also printed)

Restore the compact model elsewhere:

    ranks = lrpet_jax.ranks.ranks_from_dict(dense_params, json.load(open(".../ranks.json")))
    model = lrpet_jax.models.create("resnet56", ranks=ranks)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    variables = orbax.checkpoint.StandardCheckpointer().restore(".../compact", abstract)
"""

import json
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp

from lrpet_jax import accounting
from lrpet_jax import compact
from lrpet_jax import models
from lrpet_jax import ranks as ranks_lib

_VARIABLES = flags.DEFINE_string("variables", None, "Dense Orbax checkpoint.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_MODEL = flags.DEFINE_string("model", None, f"One of {', '.join(models.NAMES)}.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes of the head.")
_INPUT_SIZE = flags.DEFINE_integer("input_size", 32, "Input height = width.")
_RATIO = flags.DEFINE_float("ratio", None, "Uniform compression ratio.")
_MACS = flags.DEFINE_float("macs_reduction", None, "Target MACs cut.")
_PARAMS = flags.DEFINE_float("params_reduction", None, "Target params cut.")
_RANKS = flags.DEFINE_string("ranks", None, "JSON file of ranks.")
_PROJECT_DENSE = flags.DEFINE_bool(
    "project_dense", False, "With --ratio/--macs_reduction/--params_reduction:"
    " rank Dense kernels (the classifier) too, not only convolutions.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace OUT_DIR/compact.")


def abstract_variables(model, input_size):
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, input_size, input_size, 3)),
      train=False))


def export(variables_dir: str, workdir: str, model_name: str, *,
           num_classes: int = 10, input_size: int = 32,
           ratio: float | None = None, macs_reduction: float | None = None,
           params_reduction: float | None = None,
           ranks_file: str | None = None, project_dense: bool = False,
           overwrite: bool = False) -> dict:
  """Library form of the command; returns the report written as JSON."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  given = [x is not None for x in (ratio, macs_reduction, params_reduction,
                                   ranks_file)]
  if sum(given) != 1:
    raise ValueError("give exactly one of ratio, macs_reduction,"
                     " params_reduction and ranks")
  source = pathlib.Path(variables_dir).absolute()
  if not source.is_dir():
    raise ValueError(f"variables: no checkpoint directory at {source}")
  out = pathlib.Path(workdir).absolute()
  target = out / "compact"
  if target.exists() and not overwrite:
    raise ValueError(f"workdir: {target} exists (pass --overwrite to replace)")
  dense = models.create(model_name, num_classes)
  shape = (input_size, input_size, 3)
  abstract = abstract_variables(dense, input_size)
  checkpointer = ocp.StandardCheckpointer()
  variables = checkpointer.restore(source, abstract)
  params = variables["params"]
  include = ranks_lib.is_kernel if project_dense else ranks_lib.is_conv_kernel
  if ranks_file is not None:
    ranks = ranks_lib.ranks_from_dict(
        params, json.loads(pathlib.Path(ranks_file).read_text()))
  elif ratio is not None:
    ranks = ranks_lib.uniform_ranks(params, ratio, include=include)
  else:
    ranks = accounting.ranks_for_budget(
        dense, variables, shape, macs_reduction=macs_reduction,
        params_reduction=params_reduction, include=include)
  compact_variables = compact.factorize(variables, ranks)
  compact_model = models.create(model_name, num_classes, ranks=ranks)
  dense_cost = accounting.cost(dense, variables, shape)
  compact_cost = accounting.cost(compact_model, compact_variables, shape)
  rows = compact.layer_report(
      variables, ranks, accounting.layer_costs(dense, variables, shape))
  report = {
      "model": model_name, "num_classes": num_classes,
      "input_shape": list(shape), "dense": dense_cost,
      "compact": compact_cost,
      "macs_reduction": 1 - compact_cost["macs"] / dense_cost["macs"],
      "params_reduction": 1 - compact_cost["params"] / dense_cost["params"],
      "layers": rows,
  }
  out.mkdir(parents=True, exist_ok=True)
  checkpointer.save(target, compact_variables, force=overwrite)
  checkpointer.wait_until_finished()
  (out / "ranks.json").write_text(
      json.dumps(ranks_lib.ranks_to_dict(ranks), indent=1))
  (out / "compact_report.json").write_text(json.dumps(report, indent=1))
  table = compact.format_report(rows) + (
      f"\n\n{model_name}: MACs {dense_cost['macs']:,} → {compact_cost['macs']:,}"
      f" ({report['macs_reduction']:.1%} fewer), params"
      f" {dense_cost['params']:,} → {compact_cost['params']:,}"
      f" ({report['params_reduction']:.1%} fewer)\n")
  (out / "compact_report.txt").write_text(table)
  print(table)
  return report


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    for flag in ("variables", "workdir", "model"):
      if flags.FLAGS[flag].value is None:
        raise ValueError(f"--{flag} is required")
    export(_VARIABLES.value, _WORKDIR.value, _MODEL.value,
           num_classes=_NUM_CLASSES.value, input_size=_INPUT_SIZE.value,
           ratio=_RATIO.value, macs_reduction=_MACS.value,
           params_reduction=_PARAMS.value, ranks_file=_RANKS.value,
           project_dense=_PROJECT_DENSE.value, overwrite=_OVERWRITE.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main)
