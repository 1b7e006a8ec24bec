"""Errors the command line reports in one line."""


class ConfigError(ValueError):
  """Bad configuration or workdir: reported in one line, exit status 2."""


class NonFiniteLoss(RuntimeError):
  """Training diverged: reported in one line, exit status 1, the last good
  checkpoint kept."""


class SaveFailed(RuntimeError):
  """A checkpoint could not be written (e.g. a full disk): reported in one
  line naming it and the OS error, exit status 4, the last good checkpoint
  kept."""
