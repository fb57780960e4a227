"""Shared command-line plumbing: absl flag errors and user errors become one line on
stderr and exit code 2 (others for a run that stopped: see ganfm.errors), never a
traceback."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

from absl import flags, logging

from ganfm.config import CONFIG_FILE
from ganfm.errors import (
    EXIT_DIVERGED,
    EXIT_PREEMPTED,
    EXIT_USER_ERROR,
    EXIT_WORKER_LOST,
    EXIT_WRITE_FAILED,
    ConfigError,
    Preempted,
    TrainingDiverged,
    WorkerLost,
    WriteFailed,
)


def fail(message: object, code: int = EXIT_USER_ERROR) -> NoReturn:
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ganfm"
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def parse_flags_or_exit(argv: list[str]) -> list[str]:
    """absl flags_parser for app.run: bad flags exit 2 with one line (absl exits 1).

    Library INFO logs (TensorFlow's checkpoint saver, for one) are hidden unless the
    user asks for them with --verbosity/-v; the progress line goes to stdout.
    """
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e}; see --helpfull")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    return rest


@contextlib.contextmanager
def user_errors():
    """Turns the errors of ganfm.errors raised inside into one line and their exit code."""
    try:
        yield
    except ConfigError as e:
        fail(e)
    except TrainingDiverged as e:
        fail(e, EXIT_DIVERGED)
    except Preempted as e:
        fail(e, EXIT_PREEMPTED)
    except WorkerLost as e:
        fail(e, EXIT_WORKER_LOST)
    except WriteFailed as e:
        fail(e, EXIT_WRITE_FAILED)


def require_run(model_dir: str | None) -> None:
    """For tools that read a finished run: --model_dir must hold one."""
    if not model_dir:
        raise ConfigError("--model_dir is required: a training run's --model_dir")
    local = "://" not in model_dir  # gs:// and the like: checked once loaded.
    if local and not os.path.isfile(os.path.join(model_dir, CONFIG_FILE)):
        raise ConfigError(f"--model_dir={model_dir!r} has no {CONFIG_FILE}; train there first")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
