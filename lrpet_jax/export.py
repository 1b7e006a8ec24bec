r"""Dense checkpoint → compact checkpoint, a per-layer report and a
standalone inference artifact, optionally tuned for latency.

    python -m lrpet_jax.export --variables=DENSE_DIR --workdir=OUT_DIR \
        --model=resnet56 --ratio=0.54 [--num_classes=10 --image_size=32] \
        [--tune_for=cpu --batch=256]

``--model`` is a zoo name or ``package.module:factory``: your own model, a
function ``(num_classes=, dtype=) -> nn.Module`` or a Flax NNX factory
``(num_classes=, dtype=, rngs=) -> nnx.Module`` (``--model_flag`` names a
Linen model's training flag if that is not ``train``; ``--dataset`` or ``--mean``/``--std``
give its input normalization). ``DENSE_DIR`` is an Orbax
``StandardCheckpointer`` checkpoint of the dense
model's ``{"params", "batch_stats"}`` (LRPET-projected: the factorization is
then exact; otherwise it truncates, which a ``warning:`` line says with the
worst layers' energy kept, and ``--strict`` refuses). Ranks are chosen as in training
(``lrpet_jax.ranking.selection``): from ``--ratio``, ``--macs_reduction`` /
``--params_reduction`` (the uniform ratio that best meets the cut) over the
convolutions (``--project_dense`` adds Dense kernels), or
``--ranks_file=FILE.json`` ({"layer/kernel": rank}, e.g. a run's ``ranks.json``),
then raised to ``--rank_floor`` / ``--first_rank_floor``. Writes to
``OUT_DIR``:

    compact/             Orbax checkpoint of the compact model's variables
    ranks.json           the ranks, to rebuild the compact model
    compact_report.json  model, costs dense vs compact, per-layer rows
    compact_report.txt   the same as a table (also printed)
    serving/             model.jax_export + spec.json: the model to ship,
                         BatchNorm folded, as a serialized jax.export
                         function of raw pixels (``lrpet_jax.deploy.serving``)

With ``--tune_for=cpu|gpu --batch=N`` (on a machine of that kind) each
projected layer gets the fastest exact form measured here at batch N: dense,
factorized, or factorized at a rank rounded up to a multiple of 8 or 16
(``lrpet_jax.deploy.tuning``); never slower than the dense model as a whole, or
every layer stays dense. Adds ``tuned/`` (Orbax checkpoint),
``tuned_ranks.json`` (None: dense layer) and ``tuning_report.{json,txt}``
(per-layer forms with their measured times), and ``serving/`` holds the
tuned model.

Restore the compact model elsewhere (``tests/deploy/test_export.py`` runs this):

    import json, jax, jax.numpy as jnp, orbax.checkpoint, lrpet_jax
    x = jnp.zeros((1, 32, 32, 3))
    dense = lrpet_jax.models.create("resnet56")
    dense_params = jax.eval_shape(lambda: dense.init(jax.random.key(0), x, train=False))["params"]
    ranks = lrpet_jax.core.ranks.Ranks.read("OUT_DIR/ranks.json")
    model = lrpet_jax.models.create("resnet56", ranks=ranks)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    variables = orbax.checkpoint.StandardCheckpointer().restore("OUT_DIR/compact", abstract)
    logits = model.apply(variables, x, train=False)
"""

import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

from lrpet_jax import models
from lrpet_jax.data import datasets
from lrpet_jax.deploy import export_check
from lrpet_jax.deploy import from_checkpoint
from lrpet_jax.ranking import selection

_VARIABLES = flags.DEFINE_string("variables", None, "Dense Orbax checkpoint.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_MODEL = flags.DEFINE_string(
    "model", None, f"One of {', '.join(models.NAMES)}, or"
    " package.module:factory (a function (num_classes=, dtype=) -> nn.Module,"
    " or (num_classes=, dtype=, rngs=) -> nnx.Module).")
_MODEL_FLAG = flags.DEFINE_string(
    "model_flag", "train", "The name of the model's training flag.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "The data set whose normalization the serving artifact"
    " applies (default: the zoo model's); or give --mean and --std.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes of the head.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 32, "Input height = width (as --config.image_size).")
_RATIO = flags.DEFINE_float("ratio", None, "Uniform compression ratio.")
_MACS = flags.DEFINE_float("macs_reduction", None, "Target MACs cut.")
_PARAMS = flags.DEFINE_float("params_reduction", None, "Target params cut.")
_RANKS_FILE = flags.DEFINE_string(
    "ranks_file", None, "JSON file of ranks, e.g. a run's ranks.json (as"
    " --config.ranks_file).")
_PROJECT_DENSE = flags.DEFINE_bool(
    "project_dense", False, "With --ratio/--macs_reduction/--params_reduction:"
    " rank Dense kernels (the classifier) too, not only convolutions.")
_PROJECT_LAYERS = flags.DEFINE_string(
    "project_layers", "", "The layers to rank by role (comma-separated conv,"
    " mlp, attention, classifier, embedding) or re:REGEX on kernel paths, as"
    " --config.project_layers in training; default: convolutions.")
_FLOOR = flags.DEFINE_integer("rank_floor", 0, "> 0: every rank at least"
                              " this (as --config.rank_floor in training).")
_FIRST_FLOOR = flags.DEFINE_integer("first_rank_floor", 0, "> 0: the first"
                                    " layer's rank at least this.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace OUT_DIR/compact.")
_STRICT = flags.DEFINE_bool(
    "strict", False, "Refuse (exit 2) a checkpoint whose kernels are not"
    " already at the export's ranks (energy kept < 0.999: the compact model"
    " would truncate them); without it, a warning line.")
_TUNE_FOR = flags.DEFINE_enum(
    "tune_for", None, ["cpu", "gpu"], "Tune each layer's form for latency on"
    " this backend (must be this machine's).")
_BATCH = flags.DEFINE_integer("batch", 256, "With --tune_for: the batch size"
                              " to tune for.")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32",
                           list(from_checkpoint.COMPUTE_DTYPES),
                           "With --tune_for: the computation dtype to tune"
                           " and serve in.")
_MEAN = flags.DEFINE_list("mean", None, "Per-channel input mean of pixels in"
                          " [0, 1] for the serving artifact (default: the"
                          " data set's of the model: CIFAR or ImageNet).")
_STD = flags.DEFINE_list("std", None, "Per-channel input std (see --mean).")

def _normalization_flags():
  if (_MEAN.value is None) != (_STD.value is None):
    raise ValueError("give both --mean and --std, or neither")
  if _MEAN.value is None:
    return None
  try:
    return datasets.Normalization(tuple(float(v) for v in _MEAN.value),
                              tuple(float(v) for v in _STD.value))
  except ValueError:
    raise ValueError(f"mean/std: not numbers: {_MEAN.value} {_STD.value}"
                     ) from None


def _rank_rule() -> selection.RankRule:
  """The flags as the training config's rank fields (``RankRule``)."""
  chosen = {name: flag.value for name, flag in (
      ("ratio", _RATIO), ("macs_reduction", _MACS),
      ("params_reduction", _PARAMS), ("ranks_file", _RANKS_FILE))
            if flag.value is not None}
  if len(chosen) != 1:
    raise ValueError("give exactly one of --ratio, --macs_reduction,"
                     " --params_reduction and --ranks_file")
  return selection.RankRule(
      **{"ratio": 0.0, **chosen}, project_dense=_PROJECT_DENSE.value,
      project_layers=_PROJECT_LAYERS.value, rank_floor=_FLOOR.value, first_rank_floor=_FIRST_FLOOR.value)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    for flag in ("variables", "workdir", "model"):
      if flags.FLAGS[flag].value is None:
        raise ValueError(f"--{flag} is required")
    report = from_checkpoint.compact_from_checkpoint(
        _VARIABLES.value, _WORKDIR.value, _MODEL.value, rule=_rank_rule(),
        num_classes=_NUM_CLASSES.value, image_size=_IMAGE_SIZE.value,
        model_flag=_MODEL_FLAG.value, overwrite=_OVERWRITE.value,
        tune_for=_TUNE_FOR.value, batch=_BATCH.value,
        compute_dtype=_DTYPE.value, dataset=_DATASET.value,
        normalization=_normalization_flags(), strict=_STRICT.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except export_check.ExportCheckError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  out = pathlib.Path(_WORKDIR.value).absolute()
  check = report.get("tuning", report)["export_check"]
  worst = max(check.get(k, 0.0) for k in ("compact", "folded", "serving"))
  print(f"wrote {out}: {' '.join(sorted(p.name + ('/' if p.is_dir() else '') for p in out.iterdir()))}"
        f" (serving/ checked against the dense model"
        f"{' as truncated to the ranks' if report.get('truncates') else ''}:"
        f" largest difference {worst:.1e})")


if __name__ == "__main__":
  app.run(main)
