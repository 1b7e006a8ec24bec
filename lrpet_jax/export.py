r"""Dense checkpoint → compact checkpoint, a per-layer report and a
standalone inference artifact, optionally tuned for latency.

    python -m lrpet_jax.export --variables=DENSE_DIR --workdir=OUT_DIR \
        --model=resnet56 --ratio=0.54 [--num_classes=10 --input_size=32] \
        [--tune_for=cpu --batch=256]

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
    serving/             model.jax_export + spec.json: the model to ship,
                         BatchNorm folded, as a serialized jax.export
                         function of raw pixels (``lrpet_jax.serving``)

With ``--tune_for=cpu|gpu --batch=N`` (on a machine of that kind) each
projected layer gets the fastest exact form measured here at batch N: dense,
factorized, or factorized at a rank rounded up to a multiple of 8 or 16
(``lrpet_jax.tuning``); never slower than the dense model as a whole, or
every layer stays dense. Adds ``tuned/`` (Orbax checkpoint),
``tuned_ranks.json`` (None: dense layer) and ``tuning_report.{json,txt}``
(per-layer forms with their measured times), and ``serving/`` holds the
tuned model.

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
from lrpet_jax import folding
from lrpet_jax import models
from lrpet_jax import ranks as ranks_lib
from lrpet_jax import serving
from lrpet_jax import tuning

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
_TUNE_FOR = flags.DEFINE_enum(
    "tune_for", None, ["cpu", "gpu"], "Tune each layer's form for latency on"
    " this backend (must be this machine's).")
_BATCH = flags.DEFINE_integer("batch", 256, "With --tune_for: the batch size"
                              " to tune for.")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"],
                           "With --tune_for: the computation dtype to tune"
                           " and serve in.")
_MEAN = flags.DEFINE_list("mean", None, "Per-channel input mean of pixels in"
                          " [0, 1] for the serving artifact (default: the"
                          " data set's of the model: CIFAR or ImageNet).")
_STD = flags.DEFINE_list("std", None, "Per-channel input std (see --mean).")

CIFAR_NORMALIZATION = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50")


def abstract_variables(model, input_size):
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, input_size, input_size, 3)),
      train=False))


def export(variables_dir: str, workdir: str, model_name: str, *,
           num_classes: int = 10, input_size: int = 32,
           ratio: float | None = None, macs_reduction: float | None = None,
           params_reduction: float | None = None,
           ranks_file: str | None = None, project_dense: bool = False,
           overwrite: bool = False, tune_for: str | None = None,
           batch: int = 256, compute_dtype: str = "float32",
           normalization=None) -> dict:
  """Library form of the command; returns the report written as JSON (with
  a ``tuning`` entry when tuned)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  given = [x is not None for x in (ratio, macs_reduction, params_reduction,
                                   ranks_file)]
  if sum(given) != 1:
    raise ValueError("give exactly one of ratio, macs_reduction,"
                     " params_reduction and ranks")
  if tune_for is not None and tune_for != jax.default_backend():
    raise ValueError(
        f"tune_for: {tune_for!r} but this machine's backend is"
        f" {jax.default_backend()!r}; tune on the kind of machine you deploy to")
  if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
    raise ValueError(f"batch: must be an int >= 1, got {batch!r}")
  if compute_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype: {compute_dtype!r} is not float32 or"
                     " bfloat16")
  if normalization is None:
    normalization = (IMAGENET_NORMALIZATION if model_name in IMAGENET_MODELS
                     else CIFAR_NORMALIZATION)
  for name, values in zip(("mean", "std"), normalization):
    if len(values) != 3:
      raise ValueError(f"{name}: needs 3 values (one per channel), got"
                       f" {list(values)}")
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
                             overwrite=overwrite, normalization=normalization)
  print((out / "compact_report.txt").read_text(), end="")
  if tune_for is not None:
    report["tuning"] = tuned_export(
        out, model_name, variables, ranks, num_classes=num_classes,
        input_shape=shape, batch=batch, compute_dtype=compute_dtype,
        normalization=normalization)
  return report


def tuned_export(out: pathlib.Path, model_name, variables, ranks, *,
                 num_classes, input_shape, batch, compute_dtype,
                 normalization) -> dict:
  """``tuning.tune`` here, then ``tuned/``, ``tuned_ranks.json``,
  ``tuning_report.*`` and the tuned model in ``serving/``."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  dtype = jnp.bfloat16 if compute_dtype == "bfloat16" else None
  tuned_ranks, report = tuning.tune(
      model_name, variables, ranks, num_classes=num_classes,
      input_shape=input_shape, batch=batch, dtype=dtype,
      log=lambda line: print(f"tuning: {line}", file=sys.stderr, flush=True))
  tuned_vars = compact.factorize(variables, tuned_ranks)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(out / "tuned", tuned_vars, force=True)
  checkpointer.wait_until_finished()
  (out / "tuned_ranks.json").write_text(json.dumps(
      ranks_lib.ranks_to_dict(tuned_ranks), indent=1))
  (out / "tuning_report.json").write_text(json.dumps(report, indent=1) + "\n")
  (out / "tuning_report.txt").write_text(tuning.format_report(report))
  model = models.create(model_name, num_classes, ranks=tuned_ranks, dtype=dtype)
  serving.write(out / "serving", model, folding.fold(
      tuned_vars, models.bn_pairs(variables["params"])),
      input_shape=input_shape, mean=normalization[0], std=normalization[1],
      dtype=dtype, description={
          "model": model_name, "num_classes": num_classes,
          "form": f"tuned for {report['backend']} ({report['device']}) at"
                  f" batch {batch}, {report['dtype']}; BatchNorm folded",
          "ranks": ranks_lib.ranks_to_dict(tuned_ranks)})
  print(tuning.format_report(report), end="")
  return report


def _normalization_flags():
  if (_MEAN.value is None) != (_STD.value is None):
    raise ValueError("give both --mean and --std, or neither")
  if _MEAN.value is None:
    return None
  try:
    return (tuple(float(v) for v in _MEAN.value),
            tuple(float(v) for v in _STD.value))
  except ValueError:
    raise ValueError(f"mean/std: not numbers: {_MEAN.value} {_STD.value}"
                     ) from None


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
           project_dense=_PROJECT_DENSE.value, overwrite=_OVERWRITE.value,
           tune_for=_TUNE_FOR.value, batch=_BATCH.value,
           compute_dtype=_DTYPE.value, normalization=_normalization_flags())
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # TensorFlow only decodes images here; without its oneDNN kernels it also
  # prints no notice about them.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  app.run(main)
