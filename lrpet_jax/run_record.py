"""What a run records about itself in its workdir, and reads back.

``config.json`` holds the resolved config of the latest start and
``commands.txt`` every start's command line; ``summary.json`` marks a
finished run. From these a new start learns whether the workdir is its own:
finished with this very config (nothing to do), holding another run's
checkpoints (refused), or to be resumed.
"""

import json
import pathlib

from absl import logging

from lrpet_jax import ranks as ranks_lib
from lrpet_jax.errors import ConfigError

# Fields that make checkpoints another run's, with the value a config.json
# written before the field existed stands for.
RUN_FIELDS = {"model": None, "num_classes": None, "method": "lrpet"}


def prepare(workdir: str) -> pathlib.Path:
  """The workdir as an absolute path (Orbax refuses relative ones); a path
  that exists and is not a directory is refused."""
  path = pathlib.Path(workdir).absolute()
  if path.exists() and not path.is_dir():
    raise ConfigError(f"workdir: {path} exists and is not a directory")
  return path


def finished_summary(config, workdir: pathlib.Path) -> dict | None:
  """The summary of a run that finished in ``workdir`` with this very config
  (``config.json``), or None: rerunning such a workdir changes nothing."""
  summary, saved = workdir / "summary.json", workdir / "config.json"
  if not (summary.is_file() and saved.is_file()):
    return None
  if json.loads(saved.read_text()) != json.loads(config.to_json()):
    return None  # another config: resume, extend or refuse as usual
  return json.loads(summary.read_text())


def check_same_run(config, workdir: pathlib.Path) -> None:
  """Before any data is loaded: a workdir holding checkpoints of another
  model, method or number of classes (by its ``config.json``) is refused.
  The ranks are compared later, against the checkpoint itself."""
  saved = workdir / "config.json"
  steps = workdir / "checkpoints"
  if not saved.is_file() or not (steps.is_dir() and any(steps.iterdir())):
    return
  before = json.loads(saved.read_text())
  for field, legacy in RUN_FIELDS.items():
    if before.get(field, legacy) != config[field]:
      raise ConfigError(
          f"workdir: holds checkpoints of {field} {before.get(field, legacy)!r}"
          f" (its config.json) but this config has {config[field]!r};"
          " use a new workdir")


def record(config, workdir: pathlib.Path, command) -> None:
  """``config.json`` (the resolved config of the latest start) and, appended,
  the command line of every start in ``commands.txt``."""
  (workdir / "config.json").write_text(config.to_json(indent=1) + "\n")
  if command:
    with open(workdir / "commands.txt", "a", encoding="utf-8") as f:
      f.write(" ".join(command) + "\n")


def record_pairs(workdir: pathlib.Path, pairing, ranks) -> None:
  """``bn_pairs.json`` — which BatchNorm follows each layer (found by
  tracing), the kernels that feed none, and the projected ones among them
  (projected without BN rectification) — and a log line."""
  ranked = set(ranks_lib.ranks_to_dict(ranks))
  unrectified = [k for k in pairing.unpaired if k in ranked]
  (workdir / "bn_pairs.json").write_text(json.dumps(
      {**pairing.to_json(), "unrectified": unrectified}, indent=1) + "\n")
  if unrectified:
    logging.warning("%d projected kernel(s) feed no BatchNorm, so BN"
                    " rectification leaves them alone: %s (bn_pairs.json)",
                    len(unrectified), ", ".join(unrectified))
  else:
    logging.info("BatchNorm found by tracing after each of the %d projected"
                 " kernels (bn_pairs.json)", len(ranked))


def log_contents(workdir: pathlib.Path) -> None:
  """The last line of a run: where everything is."""
  entries = sorted(p.name + ("/" if p.is_dir() else "")
                   for p in workdir.iterdir())
  logging.info("everything is in %s: %s (view the curves with: tensorboard"
               " --logdir %s)", workdir, " ".join(entries),
               workdir / "tensorboard")
