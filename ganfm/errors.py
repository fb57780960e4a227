"""Errors a user can act on; the command-line tools turn them into one line and an exit code."""


class ConfigError(ValueError):
    """A setting or input is wrong; the message says which value and how to fix it."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; nothing after the last good checkpoint was saved."""


EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
