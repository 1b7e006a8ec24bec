"""A dense checkpoint as a deployable compact model (the library behind
``python -m lrpet_jax.export``, which documents the files it writes).

``export`` restores a dense Orbax checkpoint, selects ranks (a ratio, a MACs
or params budget, or a ranks file), writes the compact checkpoint, report and
serving artifact (``compact.export``) and, with ``tune_for``, the
latency-tuned model (``tuned_export``, ``lrpet_jax.tuning``).
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp

from lrpet_jax import accounting
from lrpet_jax import compact
from lrpet_jax import folding
from lrpet_jax import models
from lrpet_jax import ranks as ranks_lib
from lrpet_jax import serving
from lrpet_jax import tuning


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
  """What ``python -m lrpet_jax.export`` does; returns the report written as
  JSON (with a ``tuning`` entry when tuned). Bad arguments raise a one-line
  ValueError naming the argument, before anything is written."""
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
