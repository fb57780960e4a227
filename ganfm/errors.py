"""Errors a user can act on; the command-line tools turn them into one line and an exit code."""


class ConfigError(ValueError):
    """A setting or input is wrong; the message says which value and how to fix it."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; nothing after the last good checkpoint was saved."""


class Preempted(Exception):
    """SIGTERM: every worker saved a checkpoint at the reported step and stops."""


class WriteFailed(RuntimeError):
    """--model_dir could not be written during training (disk full, permissions); the
    previous checkpoint is intact."""


class WorkerLost(RuntimeError):
    """A worker of a multi-worker job died; the job must be relaunched to resume."""


EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_WORKER_LOST = 4
EXIT_WRITE_FAILED = 5
EXIT_PREEMPTED = 42  # TensorFlow PreemptionCheckpointHandler's code.
