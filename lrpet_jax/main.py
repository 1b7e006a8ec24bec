r"""Entry point: ``python -m lrpet_jax.main --config=configs/cifar.py --workdir=DIR``.

Any config field can be overridden, e.g. ``--config.num_epochs=10``. Rerunning
the same command resumes from the newest checkpoint in the workdir. The log
shows this project's own lines; ``--verbosity=0`` (or higher) adds every
library's INFO lines.
"""

import logging as logging_std
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow only decodes images here; without its oneDNN kernels it also
# prints no notice about them.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lrpet_jax import train

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None:
    print("error: --workdir is required", file=sys.stderr)
    sys.exit(2)
  config = flags.FLAGS.config
  if config.distributed:
    jax.distributed.initialize()
  _set_up_logging()
  try:
    train.train_and_evaluate(config, _WORKDIR.value,
                             command=["python", "-m", "lrpet_jax.main",
                                      *sys.argv[1:]])
  except train.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except train.NonFiniteLoss as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure reported in one line, exit 2.

  ml_collections raises a bare ``AttributeError("'foo'")`` for an override of
  a field the config does not have; absl prints a FATAL line with exit 1 for
  a value that does not parse.
  """
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    lines = [l for l in str(e).splitlines() if l.strip()]
    text = lines[0] if lines else type(e).__name__
    if "Error whilst parsing config file" in text and len(lines) > 1:
      text = f"--config: {lines[-1]}"  # the config file's own error
    if isinstance(e, (AttributeError, KeyError)):
      field = text.strip("'\"")
      given = [a for a in argv if a.startswith(f"--config.{field}")]
      text = (f"config.{field}: the config has no such field"
              + (f" ({given[0]})" if given else ""))
    elif "--config." not in text and any(
        a.startswith("--config.") for a in argv):
      text = f"a --config.* value does not parse: {text}"
    print(f"error: {text}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
