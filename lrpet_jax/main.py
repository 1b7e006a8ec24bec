r"""Entry point: ``python -m lrpet_jax.main --config=configs/cifar.py --workdir=DIR``.

Any config field can be overridden, e.g. ``--config.num_epochs=10``. Rerunning
the same command resumes from the newest checkpoint in the workdir. The log
shows this project's own lines; ``--verbosity=0`` (or higher) adds every
library's INFO lines.
"""

import ast
import importlib.util
import logging as logging_std
import os
import pathlib
import re
import sys
import sysconfig
import traceback

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lrpet_jax.deploy import export_check
from lrpet_jax.pipeline import errors
from lrpet_jax.pipeline import train

# The exit status of each error reported in one line (docs/exit-statuses.md);
# any other exception is an internal error, status 4.
EXIT_STATUS = {errors.ConfigError: 2, errors.NonFiniteLoss: 1,
               export_check.ExportCheckError: 3, errors.SaveFailed: 4}

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints,"
                               " metrics and the exported compact model.")
config_flags.DEFINE_config_file("config", None, "Training configuration.",
                                lock_config=True)


class _OwnLinesOnly(logging_std.Filter):
  """Below WARNING, only this project's lines (start, progress with ETA,
  evaluations, projections, the summary); libraries' INFO chatter (Orbax
  writes some 130 lines per smoke run) needs ``--verbosity=0`` or higher."""

  def filter(self, record):
    return (record.levelno >= logging_std.WARNING
            or f"{os.sep}lrpet_jax{os.sep}" in record.pathname)


def _set_up_logging():
  if flags.FLAGS["verbosity"].present:
    return  # the user chose; absl applies it
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_OwnLinesOnly())


def start_distributed(config) -> None:
  """``jax.distributed.initialize`` with the config's coordinator, process
  count and id, each detected (SLURM, Open MPI, TPU, Kubernetes, or
  JAX_COORDINATOR_ADDRESS) where not given; one line, exit 2, if it cannot."""
  try:
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes or None,
        process_id=None if config.process_id < 0 else config.process_id)
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    print(f"error: distributed: cannot start ({type(e).__name__}: {first});"
          " outside a cluster that JAX detects, give"
          " --config.coordinator_address=HOST:PORT --config.num_processes=N"
          " --config.process_id=I (or use python -m lrpet_jax.launch)",
          file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv  # parse_flags refuses stray arguments
  if _WORKDIR.value is None:
    print("error: --workdir is required", file=sys.stderr)
    sys.exit(2)
  config = flags.FLAGS.config
  _set_up_logging()
  if config.distributed:
    start_distributed(config)
  if jax.process_index() != 0 and not flags.FLAGS["verbosity"].present:
    # One process tells the story; the others say only what went wrong.
    logging.set_verbosity(logging.WARNING)
  try:
    result = train.train_and_evaluate(config, _WORKDIR.value,
                                      command=[_python(), "-m",
                                               "lrpet_jax.main", *sys.argv[1:]])
  except tuple(EXIT_STATUS) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(next(code for kind, code in EXIT_STATUS.items()
                  if isinstance(e, kind)))
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0] if str(e) else ""
    frame = _model_frame(e)
    if frame is not None:  # the user's model failed, not the library
      print(f"error: model: {config.model} raised {type(e).__name__}"
            f" ({first}) at {frame.filename}:{frame.lineno} in {frame.name};"
            f" {_save_traceback()}", file=sys.stderr)
      sys.exit(2)
    print(f"error: internal error in {train.phase_of(e)} ({type(e).__name__}:"
          f" {first}); {_save_traceback()}", file=sys.stderr)
    sys.exit(4)
  if "signal" in result:  # saved and stopped: exit as the signal would have
    where = (f"in {result['phase']}; training saved at step"
             f" {result['stopped_at_step']}" if "phase" in result else
             f"at step {result['stopped_at_step']} (saved)")
    print(f"stopped by signal {result['signal']} {where}; rerun the same"
          " command to resume", file=sys.stderr)
    sys.exit(128 + result["signal"])


def _python() -> str:
  """The interpreter as typed (python3, python): commands.txt's command."""
  return os.path.basename(sys.executable) or "python3"


def _library_dirs() -> tuple[str, ...]:
  """Where this package and the libraries it drives live."""
  dirs = [os.path.dirname(os.path.abspath(__file__))]
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "orbax", "absl",
               "ml_collections", "etils", "tensorflow", "tensorboardX"):
    spec = importlib.util.find_spec(name)
    for location in (spec.submodule_search_locations or []) if spec else []:
      dirs.append(location)
  return tuple(os.path.join(os.path.abspath(d), "") for d in dirs)


def _model_frame(e: BaseException):
  """The innermost frame of ``e``'s traceback outside this package, the
  libraries it drives and Python (the user's model code), or None."""
  libraries = _library_dirs()
  stdlib = os.path.join(sysconfig.get_paths()["stdlib"], "")

  def library(path):
    path = os.path.abspath(path)
    return path.startswith(libraries) or (
        path.startswith(stdlib) and "-packages" not in path)

  for frame in reversed(traceback.extract_tb(e.__traceback__)):
    if not library(frame.filename):
      return frame if "<" not in frame.filename else None
  return None


def _save_traceback() -> str:
  """Writes the traceback under way to WORKDIR/error.txt (where that can be
  written); says where it is."""
  text = traceback.format_exc()
  try:
    path = pathlib.Path(_WORKDIR.value).absolute() / "error.txt"
    if path.parent.is_dir() and jax.process_index() == 0:
      path.write_text(text)
      return f"the traceback is in {path}"
  except Exception:  # pylint: disable=broad-except
    pass
  return "traceback:\n" + text


CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
HELP = """usage: python -m lrpet_jax.main --config=FILE[:ARG] --workdir=DIR \
    [--config.FIELD=VALUE ...] [--verbosity=0]

Trains under the config FILE (configs/cifar.py: the paper's CIFAR-10
setting; configs/smoke.py: the whole pipeline in about 1½ minutes), writing
checkpoints, metrics, the compact model and summary.json to DIR; rerunning
the command resumes. Exit status (one line on stderr for each but 0):
  0        done (or finished already)
  1        training diverged (the last good checkpoint kept)
  2        bad input: config, data, model (or the model's own error), workdir
  3        the exported model does not compute what the trained one does
  4        a checkpoint could not be written, or an internal error
           (WORKDIR/error.txt holds the traceback)
  128 + N  stopped by signal N (2: Ctrl-C, 15: SIGTERM), saved; rerun to
           resume
"""


def field_comments(path: pathlib.Path) -> dict[str, str]:
  """{field: its comment} from a config file's ``c.FIELD = ...  # comment``
  lines (or the comment lines just above)."""
  comments, above = {}, []
  for line in path.read_text().splitlines():
    stripped = line.strip()
    match = re.match(r"c\.(\w+)(?:, c\.\w+)* = [^#]*(?:#\s*(.*))?$", stripped)
    if stripped.startswith("# ---"):  # a section header
      above = []
    elif stripped.startswith("#"):
      above.append(stripped.lstrip("# "))
    elif match:
      for field in re.findall(r"c\.(\w+)", stripped.split("=")[0]):
        comments[field] = match.group(2) or " ".join(above)
      above = []
    else:
      above = []
  return comments


def print_help(argv: list[str]) -> None:
  """The usage, and every config field with its value under --config (default
  configs/cifar.py) and its comment (from configs/cifar.py)."""
  from ml_collections import config_flags as cf  # pylint: disable=g-import-not-at-top,reimported
  given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  source = given[0] if given else str(CONFIGS / "cifar.py")
  print(HELP)
  try:
    config = cf.config_flags._LoadConfigModule(  # pylint: disable=protected-access
        "config", source.split(":")[0]).get_config(
            *source.split(":")[1:2])
  except Exception as e:  # pylint: disable=broad-except
    print(f"(cannot load {source}: {type(e).__name__}: {e})")
    return
  overrides = _apply_overrides(config, argv)
  comments = (field_comments(CONFIGS / "cifar.py")
              if (CONFIGS / "cifar.py").is_file() else {})
  print(f"config fields ({source}), each settable as --config.FIELD=VALUE:")
  for field, value in config.items():
    print(f"  {field} = {value!r}" + (f"  # {comments[field]}"
                                       if comments.get(field) else "")
          + ("  (given)" if field in overrides else ""))


def _apply_overrides(config, argv) -> set[str]:
  """Sets the ``--config.FIELD=VALUE`` of ``argv`` on ``config`` (as their
  field's type reads them; a value that does not read stays a string);
  returns the fields set."""
  given = set()
  for arg in argv:
    name, sep, text = arg.partition("=")
    field = name[len("--config."):]
    if not (name.startswith("--config.") and sep and field in config):
      continue
    old = config[field]
    try:
      if isinstance(old, bool):
        value = text.lower() in ("true", "1", "yes")
      elif isinstance(old, (tuple, list)) or old is None:
        value = ast.literal_eval(text)
      else:
        value = type(old)(text)
    except (ValueError, SyntaxError):
      value = text
    with config.unlocked():
      config[field] = value
    given.add(field)
  return given


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure reported in one line, exit 2;
  ``--help`` prints the usage and the config fields, exit 0.

  ml_collections raises a ``KeyError`` naming a field the config does not
  have (with a suggestion); absl prints a FATAL line with exit 1 for a value
  that does not parse.
  """
  if any(a in ("--help", "-h", "-?", "--helpshort", "--helpfull")
         for a in argv[1:]):
    print_help(argv[1:])
    sys.exit(0)
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = pathlib.Path(arg.split("=", 1)[1].split(":", 1)[0])
      if not path.is_file():
        print(f"error: config: no config file at {path} (the configs are in"
              f" {CONFIGS})", file=sys.stderr)
        sys.exit(2)
  try:
    rest = flags.FLAGS(argv)
    flags.FLAGS["config"].value  # a file that does not load fails here
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: {_flag_error(e, argv)}", file=sys.stderr)
    sys.exit(2)
  if len(rest) > 1:
    print(f"error: unexpected argument(s): {' '.join(rest[1:])} (flags are"
          " --config=FILE, --workdir=DIR and --config.FIELD=VALUE; --help"
          " lists the fields)", file=sys.stderr)
    sys.exit(2)
  return rest


def _flag_error(e: Exception, argv: list[str]) -> str:
  """One line for a flag that did not parse."""
  raw = e
  while isinstance(raw, (KeyError, AttributeError)) and raw.args:
    raw = raw.args[0]  # ml_collections: AttributeError(KeyError("'x'\n..."))
  lines = [l for l in str(raw).splitlines() if l.strip()]
  text = lines[0] if lines else type(e).__name__
  if "Error whilst parsing config file" in text and len(lines) > 1:
    return f"--config: {lines[-1]}"  # the config file's own error
  if isinstance(e, (AttributeError, KeyError)):
    field = text.strip("'\" ")
    given = [a for a in argv if a.startswith(f"--config.{field}")]
    hint = re.search(r'Did you mean "([^"]+)"', str(raw))
    return (f"config.{field}: the config has no such field"
            + (f" ({given[0]})" if given else "")
            + (f"; did you mean {hint.group(1)}?" if hint else ""))
  if "--config." not in text and any(a.startswith("--config.") for a in argv):
    return f"a --config.* value does not parse: {text}"
  return text


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
