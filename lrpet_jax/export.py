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

Restore the compact model elsewhere (``tests/test_export.py`` runs this):

    import json, jax, jax.numpy as jnp, orbax.checkpoint, lrpet_jax
    x = jnp.zeros((1, 32, 32, 3))
    dense = lrpet_jax.models.create("resnet56")
    dense_params = jax.eval_shape(lambda: dense.init(jax.random.key(0), x, train=False))["params"]
    ranks = lrpet_jax.ranks.ranks_from_dict(dense_params, json.load(open("OUT_DIR/ranks.json")))
    model = lrpet_jax.models.create("resnet56", ranks=ranks)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    variables = orbax.checkpoint.StandardCheckpointer().restore("OUT_DIR/compact", abstract)
    logits = model.apply(variables, x, train=False)
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
  try:
    variables = ocp.StandardCheckpointer().restore(source, abstract)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"variables: cannot restore {source} as the variables of --model="
        f"{model_name} with {num_classes} classes (another model, or not a"
        f" variables checkpoint; {type(e).__name__})") from None
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
  report, _ = compact.export(out, model_name, ranks, num_classes=num_classes,
                             input_shape=shape, dense_variables=variables,
                             overwrite=overwrite)
  print((out / "compact_report.txt").read_text(), end="")
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
  # TensorFlow only decodes images here; without its oneDNN kernels it also
  # prints no notice about them.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  app.run(main)
