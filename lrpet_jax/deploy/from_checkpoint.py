"""A dense checkpoint as a deployable compact model: the library behind
``python -m lrpet_jax.export``, which documents the files it writes.

``compact_from_checkpoint`` restores a dense Orbax checkpoint, selects ranks
with the training pipeline's own rule (``selection``), writes the
compact checkpoint, report and serving artifact (``compact.write``) and,
with ``tune_for``, the latency-tuned model (``write_tuned``,
``lrpet_jax.deploy.tuning``).
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp

from lrpet_jax import models
from lrpet_jax.analysis import factorized
from lrpet_jax.analysis import folding
from lrpet_jax.analysis import nnx_models
from lrpet_jax.analysis import tracing
from lrpet_jax.core import _trees
from lrpet_jax.core import projection
from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.data import datasets as data_lib
from lrpet_jax.data import inputs
from lrpet_jax.deploy import compact
from lrpet_jax.deploy import serving
from lrpet_jax.deploy import tuning
from lrpet_jax.deploy import variables_file
from lrpet_jax.ranking import selection

# The dtypes an artifact is tuned and served in (``models.COMPUTE_DTYPES``
# but float64, a precision for checks in training), and the model dtype each
# builds.
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def _check(tune_for, batch, compute_dtype, normalization) -> None:
  if tune_for is not None and tune_for != jax.default_backend():
    raise ValueError(
        f"tune_for: {tune_for!r} but this machine's backend is"
        f" {jax.default_backend()!r}; tune on the kind of machine you deploy to")
  if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
    raise ValueError(f"batch: must be an int >= 1, got {batch!r}")
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype: {compute_dtype!r} is not float32 or"
                     " bfloat16")
  for name, values in zip(("mean", "std"), normalization):
    if len(values) != 3:
      raise ValueError(f"{name}: needs 3 values (one per channel), got"
                       f" {list(values)}")


def restore_dense(source: pathlib.Path, dense, spec: str, num_classes: int,
                  input_shape):
  """``dense``'s variables restored from ``source``, or a one-line error."""
  if not source.is_dir():
    raise ValueError(f"variables: no checkpoint directory at {source}")
  abstract = tracing.abstract_variables(dense, input_shape)
  try:
    return variables_file.restore(source, abstract)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"variables: cannot restore {source} as the variables of --model="
        f"{spec} with {num_classes} classes (another model, or not a"
        f" variables checkpoint; {type(e).__name__})") from None


def _normalization(spec, dataset, normalization, variables_dir
                   ) -> data_lib.Normalization:
  """The given one; else ``dataset``'s constants; else the one recorded by
  the run whose workdir holds ``variables_dir`` (its ``input.json``);
  else the constants of the zoo model's data set."""
  if normalization is not None:
    return normalization
  recorded = inputs.recorded_normalization(
      pathlib.Path(variables_dir).absolute().parent)
  if dataset is None and recorded is not None:
    return recorded
  dataset = dataset or models.DATASETS.get(spec)
  if not dataset:
    raise ValueError("mean: a model outside the zoo needs --mean and --std"
                     " (or --dataset) for the serving artifact")
  if dataset not in data_lib.NORMALIZATION:
    raise ValueError(f"dataset: no normalization constants for {dataset!r}"
                     f" (known: {', '.join(data_lib.NORMALIZATION)}); give"
                     " --mean and --std")
  return data_lib.NORMALIZATION[dataset]


def compact_from_checkpoint(
    variables_dir: str, workdir: str, spec: str, *,
    rule: selection.RankRule, num_classes: int = 10,
    image_size: int = 32, model_flag: str = "train", overwrite: bool = False,
    tune_for: str | None = None, batch: int = 256,
    compute_dtype: str = "float32", dataset: str | None = None,
    normalization: data_lib.Normalization | None = None,
    strict: bool = False) -> dict:
  """What ``python -m lrpet_jax.export`` does; returns the report written as
  JSON (with a ``tuning`` entry when tuned).

  ``spec``: a zoo name or ``package.module:factory`` (``models.build``),
  whose training flag is ``model_flag``. ``normalization``: the serving
  artifact's input normalization; default the constants of ``dataset``, or
  the run's own (``input.json`` beside ``variables_dir``), or the
  constants of the data set a zoo model is built for. Bad arguments raise a one-line
  ValueError naming the argument, before anything is written.
  """
  models.check_name(spec)
  normalization = _normalization(spec, dataset, normalization, variables_dir)
  _check(tune_for, batch, compute_dtype, normalization)
  out = pathlib.Path(workdir).absolute()
  if (out / "compact").exists() and not overwrite:
    raise ValueError(f"workdir: {out / 'compact'} exists (pass --overwrite to"
                     " replace)")
  shape = (image_size, image_size, 3)
  dense = models.with_train_flag(models.build(spec, num_classes), model_flag)
  if tune_for is not None and isinstance(dense, nnx_models.NnxModel):
    raise ValueError("tune_for: latency tuning times each layer as a Linen"
                     " module; it does not take an NNX model yet")
  variables = restore_dense(pathlib.Path(variables_dir).absolute(), dense,
                            spec, num_classes, shape)
  table = tracing.table(tracing.eval_apply(dense), variables, shape)
  pairs = tracing.Pairing.of(table)
  ranks = selection.select(rule, dense, variables, shape, table=table)
  lossy = truncation(variables["params"], ranks)
  if lossy:
    if strict:
      raise ValueError(f"strict: {lossy}")
    print(f"warning: {lossy}", file=sys.stderr)
  description = {"model": spec, "num_classes": num_classes}
  report, _ = compact.write(out, dense, ranks, pairs, input_shape=shape,
                            description=description, dense_variables=variables,
                            overwrite=overwrite, normalization=normalization)
  print((out / "compact_report.txt").read_text(), end="")
  report["truncates"] = bool(lossy)
  if tune_for is not None:
    in_dtype = models.with_train_flag(models.build(
        spec, num_classes, COMPUTE_DTYPES[compute_dtype]), model_flag)
    report["tuning"] = write_tuned(
        out, in_dtype, variables, ranks, pairs, input_shape=shape,
        batch=batch, description=description, normalization=normalization)
  return report


# A kernel keeping less of its energy at its rank was not trained to it.
EXACT_ENERGY = 0.999


def truncation(params, ranks, worst: int = 3) -> str | None:
  """None if every ranked kernel of ``params`` is (nearly) of its rank
  already (energy kept ≥ ``EXACT_ENERGY``: the compact model is the
  checkpoint's model); else one line saying the export truncates, with the
  ``worst`` layers' energy kept."""
  kernels = _trees.leaves_by_path(params)
  kept = sorted((projection.energy_kept(kernels[k], r), "/".join(k))
                for k, r in _trees.leaves_by_path(ranks).items() if r is not None)
  low = [(e, name) for e, name in kept if not e >= EXACT_ENERGY]
  if not low:
    return None
  shown = ", ".join(f"{name} {e:.3f}" for e, name in low[:worst])
  return (f"{len(low)} of {len(kept)} kernels are not at their export rank"
          f" (energy kept {shown}{', ...' if len(low) > worst else ''}): the"
          " compact model truncates them and is not the checkpoint's model"
          " (a run that was never projected to these ranks?); --strict"
          " refuses")


def write_tuned(out: pathlib.Path, model, variables, ranks, pairs, *,
                input_shape, batch, description, normalization) -> dict:
  """``tuning.tune`` of ``model`` (in the dtype to serve in) here, then
  ``tuned/``, ``tuned_ranks.json``, ``tuning_report.*`` and the tuned model
  in ``serving/``."""
  tuned_ranks, report = tuning.tune(
      model, variables, ranks, pairs, input_shape=input_shape, batch=batch,
      log=lambda line: print(f"tuning: {line}", file=sys.stderr, flush=True))
  tuned_vars = compact.factorize(variables, tuned_ranks)
  variables_file.save(out / "tuned", tuned_vars)
  ranks_lib.Ranks.of_tree(tuned_ranks).write(out / "tuned_ranks.json")
  dtype = None if report["dtype"] == "float32" else jnp.dtype(report["dtype"])
  tuned = factorized.Factorized(model, tuned_ranks)
  folded = folding.fold(tuned_vars, pairs)
  artifact = serving.write(
      out / "serving", tuned, folded, input_shape=input_shape,
      mean=normalization[0], std=normalization[1], dtype=dtype,
      description={**description,
                   "ranks": ranks_lib.as_json(tuned_ranks),
                   "form": f"tuned for {report['backend']} ({report['device']})"
                           f" at batch {batch}, {report['dtype']}; BatchNorm"
                           " folded"})
  report["export_check"] = compact.checked(
      out / "serving", None, normalization, input_shape,
      reference=(model, compact.truncated(variables, tuned_ranks)),
      compact=(tuned, tuned_vars),
      folded=(tuned, folded), serving_file=artifact, dtype=report["dtype"])
  (out / "tuning_report.json").write_text(json.dumps(report, indent=1) + "\n")
  (out / "tuning_report.txt").write_text(tuning.format_report(report))
  print(tuning.format_report(report), end="")
  return report
