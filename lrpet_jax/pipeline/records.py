"""What a run records about itself in its workdir, and reads back.

``config.json`` holds the resolved config of the latest start,
``commands.txt`` every start's command line, ``input.json`` the image
decoder and the input mean and std in use; ``summary.json`` marks a
finished run. From these a new start learns whether the workdir is its own:
finished with this very config (nothing to do), holding another run's
checkpoints (refused), or to be resumed.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import shlex
import socket
import tempfile
import time

from absl import logging

from lrpet_jax.core import ranks as ranks_lib
from lrpet_jax.data import inputs
from lrpet_jax.data import hosts
from lrpet_jax.pipeline.errors import ConfigError

# Fields that make checkpoints another run's, with the value a config.json
# written before the field existed stands for.
RUN_FIELDS = {"model": None, "num_classes": None, "method": "lrpet"}


def prepare(workdir: str) -> pathlib.Path:
  """The workdir as an absolute path (Orbax refuses relative ones), refused
  in one line if it is a file, or if it could not be created or written
  (probed with an empty temporary folder, removed at once: nothing is left
  behind)."""
  path = pathlib.Path(workdir).absolute()
  if path.exists() and not path.is_dir():
    raise ConfigError(f"workdir: {path} exists and is not a directory")
  existing = next(p for p in (path, *path.parents) if p.exists())
  verb = "written" if existing == path else "created"
  if not existing.is_dir():
    raise ConfigError(f"workdir: {path} cannot be created: {existing} is a"
                      " file")
  try:
    os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".lrpet_probe_"))
  except OSError as e:
    raise ConfigError(f"workdir: {path} cannot be {verb} ({type(e).__name__}:"
                      f" {e.strerror or e})") from None
  return path


# Fields that say how to run, not what: they may differ between the starts of
# one run. They change what is logged, kept and evaluated in which batches,
# how the processes find each other, and how the steps are grouped into
# compiled calls: never the steps themselves (the last only by float
# round-off: exact in float64, as at another device count).
NOT_COMPARED = ("extend", "log_every_steps", "keep_checkpoints",
                "eval_batch_size", "steps_per_call", "checkpoint_every_steps",
                "distributed", "coordinator_address", "num_processes",
                "process_id")
LOCK = ".lock"


def _take(f, workdir: pathlib.Path) -> None:
  """Locks the open lock file ``f``, or refuses naming the run holding it."""
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    raise ConfigError(
        f"workdir: another run is using {workdir} ({f.read().strip()});"
        " wait for it to end, or use another workdir") from None


def check_not_busy(workdir: pathlib.Path) -> None:
  """Before anything is loaded: the workdir's lock is free (``exclusive``
  takes it once the data is in)."""
  if hosts.is_writer() and (workdir / LOCK).is_file():
    with open(workdir / LOCK, "r", encoding="utf-8") as f:
      _take(f, workdir)


@contextlib.contextmanager
def exclusive(workdir: pathlib.Path):
  """While entered, this process holds ``WORKDIR/.lock`` (an ``flock``, let
  go when the process ends, however it ends); a second run in the same
  workdir is refused in one line naming the first. One process of a
  multi-process run takes it."""
  if not hosts.is_writer():
    yield
    return
  workdir.mkdir(parents=True, exist_ok=True)
  with open(workdir / LOCK, "a+", encoding="utf-8") as f:
    _take(f, workdir)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started"
            f" {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


# Fields added after config.json was first written whose default is not off,
# with the value that does what the older versions did (the rank and mixing
# parameters are read only when rank_policy or mix_prob turns them on).
BEFORE_THE_FIELD = {"rank_policy": "uniform", "rank_energy": 0.9,
                    "rank_decision_epoch": 1, "optimizer": "sgd",
                    "lr_schedule": "step", "repeated_augmentation": 1,
                    "mixup_alpha": 1.0, "cutmix_beta": 1.0}


def changed_fields(config, workdir: pathlib.Path) -> list[str]:
  """The fields whose values differ from the workdir's ``config.json``, as
  ``"name old → new"``. A field the saved config lacks (a run of an older
  version, before the field existed) stands for what the older version did:
  its ``BEFORE_THE_FIELD`` value, else off (0, False, None or empty)."""
  saved = json.loads((workdir / "config.json").read_text())
  now = json.loads(config.to_json())
  before = {k: BEFORE_THE_FIELD[k] for k in BEFORE_THE_FIELD if k in now}
  before.update(saved)
  return [f"{k} {before.get(k)!r} → {now.get(k)!r}"
          for k in sorted(set(before) | set(now))
          if k not in NOT_COMPARED and before.get(k) != now.get(k)
          and (k in before or now[k])]


def finished_summary(config, workdir: pathlib.Path) -> dict | None:
  """The summary of a run that finished in ``workdir`` with this very config
  (``config.json``), or None: rerunning such a workdir changes nothing."""
  summary, saved = workdir / "summary.json", workdir / "config.json"
  if not (summary.is_file() and saved.is_file()):
    return None
  if changed_fields(config, workdir):
    return None  # another config: see check_not_finished_otherwise
  return json.loads(summary.read_text())


def check_not_finished_otherwise(config, workdir: pathlib.Path) -> None:
  """A workdir whose run finished, or started (it has checkpoints), under
  another config is refused, naming the changed fields (all but
  ``NOT_COMPARED``), unless ``config.extend`` (then it goes on from its
  newest checkpoint under this config, e.g. to train for more steps)."""
  if config.extend or not (workdir / "config.json").is_file():
    return
  finished = (workdir / "summary.json").is_file()
  steps = workdir / "checkpoints"
  if not (finished or (steps.is_dir() and any(steps.iterdir()))):
    return
  changed = changed_fields(config, workdir)
  if changed and finished:
    raise ConfigError(
        f"workdir: holds a run that finished under another config (changed:"
        f" {'; '.join(changed)}); use a new workdir, or --config.extend=True"
        " to go on from its last checkpoint")
  if changed:
    raise ConfigError(
        f"workdir: holds an unfinished run started under another config"
        f" (changed: {'; '.join(changed)}); rerun with its config to resume,"
        " use a new workdir, or --config.extend=True to go on from its last"
        " checkpoint under this one")


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
  every start's command line in ``commands.txt``, as ``cd DIR && COMMAND``
  (relative paths in the config are relative to DIR: ``launch_dir``)."""
  (workdir / "config.json").write_text(config.to_json(indent=1) + "\n")
  if command:
    with open(workdir / "commands.txt", "a", encoding="utf-8") as f:
      f.write(f"cd {shlex.quote(os.getcwd())} && {shlex.join(command)}\n")


def input_record(source) -> dict:
  """What ``input.json`` and the summary say of a run's inputs: the decoder
  that made its pixels (with versions), and the mean and std that normalize
  them, with where those come from."""
  return {"decoder": source.decoder,
          "mean": list(source.normalization.mean),
          "std": list(source.normalization.std),
          "normalization_from": source.normalization_source}


def record_input(workdir: pathlib.Path, source) -> None:
  """``input.json`` (``input_record``), read back on resume, by ``load_run``
  and by the export command."""
  (workdir / inputs.INPUT_FILE).write_text(
      json.dumps(input_record(source), indent=1) + "\n")


def recorded_input(workdir: pathlib.Path) -> dict | None:
  """What ``record_input`` wrote, or None."""
  path = workdir / inputs.INPUT_FILE
  return json.loads(path.read_text()) if path.is_file() else None


def launch_dir(workdir: pathlib.Path) -> pathlib.Path:
  """The directory the latest start ran in (``commands.txt``), else here."""
  path = workdir / "commands.txt"
  lines = path.read_text().splitlines() if path.is_file() else []
  if lines and lines[-1].startswith("cd "):
    return pathlib.Path(shlex.split(lines[-1].split(" && ", 1)[0])[1])
  return pathlib.Path.cwd()


def record_pairs(workdir: pathlib.Path, pairing, ranks, table=None,
                 unranked=None) -> None:
  """``bn_pairs.json`` — which BatchNorm follows each layer (found by
  tracing), the kernels that feed none, and the projected ones among them
  (projected without BN rectification), which BatchNorms fold into their
  layer and why the others stay — ``layers.json`` (the layer table: each
  kernel's kind, shape, calls, MACs, whether it can be ranked and its
  rank) and log lines, one naming the layers left unranked."""
  ranked = ranks_lib.as_json(ranks)
  if table is not None:
    (workdir / "layers.json").write_text(json.dumps(
        {"layers": [{**l.to_json(), "rank": ranked.get(l.name)}
                    for l in table.layers],
         "unranked": unranked or {}}, indent=1) + "\n")
  if unranked:
    logging.warning("%d layer(s) left unranked, with no exact factorized"
                    " form here: %s (layers.json)", len(unranked),
                    "; ".join(f"{k}: {v}" for k, v in unranked.items()))
  if pairing.kept:
    logging.info("BatchNorm(s) left unfolded in the serving model: %s"
                 " (bn_pairs.json)", "; ".join(
                     f"{k}: {v}" for k, v in pairing.kept.items()))
  unrectified = [k for k in pairing.unpaired if k in ranked]
  (workdir / "bn_pairs.json").write_text(json.dumps(
      {**pairing.to_json(), "unrectified": unrectified}, indent=1) + "\n")
  if unrectified and not (pairing.pairs or pairing.folds or pairing.kept):
    logging.info("the model has no BatchNorm: BN rectification does not"
                 " apply; its %d projected kernels are projected as they"
                 " are (bn_pairs.json)", len(unrectified))
  elif unrectified:
    logging.warning("%d projected kernel(s) feed no BatchNorm, so BN"
                    " rectification leaves them alone: %s (bn_pairs.json)",
                    len(unrectified), ", ".join(unrectified))
  else:
    logging.info("BatchNorm found by tracing after each of the %d projected"
                 " kernels (bn_pairs.json)", len(ranked))


def log_contents(workdir: pathlib.Path) -> None:
  """The last line of a run: where everything is."""
  entries = sorted(p.name + ("/" if p.is_dir() else "")
                   for p in workdir.iterdir() if not p.name.startswith("."))
  logging.info("everything is in %s: %s (view the curves with: tensorboard"
               " --logdir %s)", workdir, " ".join(entries),
               shlex.quote(str(workdir / "tensorboard")))
