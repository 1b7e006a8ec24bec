r"""Entry point: ``python -m lrpet_jax.main --config=configs/cifar.py --workdir=DIR``.

Any config field can be overridden, e.g. ``--config.num_epochs=10``. Rerunning
the same command resumes from the newest checkpoint in the workdir.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None:
    print("error: --workdir is required", file=sys.stderr)
    sys.exit(2)
  config = flags.FLAGS.config
  if config.get("distributed"):
    jax.distributed.initialize()
  logging.set_verbosity(logging.INFO)
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except train.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except train.NonFiniteLoss as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
