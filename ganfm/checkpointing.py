"""Checkpoints through tf.train.CheckpointManager, chief-only on multi-worker jobs.

Restore happens inside the strategy scope (train_lib), so restored values land in every
replica's copy of each variable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile

import tensorflow as tf

from ganfm.errors import ConfigError, WriteFailed

CHECKPOINT_SUBDIR = "checkpoints"
BEST_SUBDIR = "best"
BEST_FILE = "best.json"
LATEST, BEST = "latest", "best"


def checkpoint_dir(model_dir: str) -> str:
    return os.path.join(model_dir, CHECKPOINT_SUBDIR)


class Checkpointer:
    """Saves and restores a run's state in <model_dir>/checkpoints.

    Every worker of a multi-worker job must take part in every save (saving reads
    variables through collectives; a chief-only save hangs). Only the chief keeps what
    it writes; the others write into a temporary directory and delete it. All workers
    restore from the chief's directory, so a multi-worker --model_dir must be on a
    file system every worker sees (NFS, GCS, ...).
    """

    def __init__(
        self, items: dict, model_dir: str, keep: int, step: tf.Variable, chief: bool = True
    ):
        self.checkpoint = tf.train.Checkpoint(**items)
        self.directory = checkpoint_dir(model_dir)
        self.chief = chief
        self.last_saved: str | None = None  # The newest checkpoint this run restored or wrote.
        self._step = step
        self._keep = keep
        if chief:
            self._manager = tf.train.CheckpointManager(
                self.checkpoint, self.directory, max_to_keep=keep, step_counter=step
            )

    @property
    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(self.directory)

    def restore(self) -> str | None:
        """Restores the newest checkpoint, if any; every saved object must match."""
        path = self.latest
        if path:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise ConfigError(
                    f"checkpoint {path} does not fit these models ({first_line(e)}); "
                    "use a new --model_dir or the settings the run was started with"
                ) from None
        self.last_saved = path
        return path

    def save(self, step: int) -> str | None:
        if self.chief:
            try:
                self.last_saved = self._manager.save(checkpoint_number=step)
            except (OSError, tf.errors.OpError) as e:
                # The manager names a checkpoint in its state file only once it is
                # complete: the previous one is still the latest. Drop the pieces.
                partial = os.path.join(self.directory, f"ckpt-{step}")
                for leftover in tf.io.gfile.glob(partial + ".*") + tf.io.gfile.glob(
                    partial + "_temp*"
                ):
                    with contextlib.suppress(OSError, tf.errors.OpError):
                        if tf.io.gfile.isdir(leftover):
                            tf.io.gfile.rmtree(leftover)
                        else:
                            tf.io.gfile.remove(leftover)
                kept = self.last_saved or "none was saved yet"
                raise WriteFailed(
                    f"could not write checkpoint {partial} ({write_error_cause(e)}); the previous "
                    f"checkpoint ({kept}) is intact; free space or fix --model_dir, then "
                    "run the same command to resume"
                ) from None
            return self.last_saved
        scratch = tempfile.mkdtemp(prefix="ganfm-worker-checkpoint-")
        try:
            manager = tf.train.CheckpointManager(
                self.checkpoint, scratch, max_to_keep=1, step_counter=self._step
            )
            manager.save(checkpoint_number=step)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None


_FILE_SYSTEM_CAUSES = (
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",
    "File too large",
)


def write_error_cause(error: Exception) -> str:
    """The file system's reason in a failed write ("No space left on device"), which
    TensorFlow buries at the end of a long message; else the first line."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    return next((c for c in _FILE_SYSTEM_CAUSES if c in text), None) or first_line(error)


def first_line(error: Exception, limit: int = 200) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def best_dir(model_dir: str) -> str:
    return os.path.join(model_dir, BEST_SUBDIR)


def read_best(model_dir: str) -> dict | None:
    """{"checkpoint": path, "step": N, "fd": ...} of the best checkpoint kept, if any."""
    path = os.path.join(best_dir(model_dir), BEST_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        best = json.load(f)
    best["checkpoint"] = os.path.join(best_dir(model_dir), best["name"])
    return best


def keep_best(model_dir: str, checkpoint: str, record: dict) -> str:
    """Copies `checkpoint` into <model_dir>/best and points best.json at it.

    Crash-safe: the new files are complete before best.json (written atomically)
    names them, and the previous best is deleted only after that.
    """
    from ganfm.images import atomic_write_bytes  # Keeps this module free of image code.

    directory = best_dir(model_dir)
    tf.io.gfile.makedirs(directory)
    previous = read_best(model_dir)
    name = os.path.basename(checkpoint)
    for source in tf.io.gfile.glob(checkpoint + ".*"):
        if source.endswith(".eval.json") or ".tmp-" in source:
            continue
        tf.io.gfile.copy(source, os.path.join(directory, os.path.basename(source)), overwrite=True)
    atomic_write_bytes(
        os.path.join(directory, BEST_FILE),
        json.dumps({**record, "name": name}, indent=2, sort_keys=True).encode(),
    )
    if previous and previous["name"] != name:
        for old in tf.io.gfile.glob(previous["checkpoint"] + ".*"):
            tf.io.gfile.remove(old)
    return os.path.join(directory, name)


def checkpoint_step(path: str) -> int | None:
    """N of a CheckpointManager checkpoint path (.../ckpt-N); None for other names."""
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else None


def find_checkpoint(model_dir: str, which: str = LATEST) -> str:
    """The newest checkpoint ("latest"), the best by FD ("best"), or a checkpoint path."""
    if which == LATEST:
        path = tf.train.latest_checkpoint(checkpoint_dir(model_dir))
        if path is None:
            raise ConfigError(f"no checkpoint in {checkpoint_dir(model_dir)}; train there first")
        return path
    if which == BEST:
        best = read_best(model_dir)
        if best is None:
            raise ConfigError(
                f"{model_dir} has no best checkpoint; train with --eval_every to keep one, "
                "or use --checkpoint=latest"
            )
        return best["checkpoint"]
    if not tf.io.gfile.exists(which + ".index"):
        raise ConfigError(
            f"--checkpoint={which!r} is not a checkpoint (no {which}.index); give latest, best "
            "or a path such as DIR/checkpoints/ckpt-1000"
        )
    return which


def restore_ema_generator(model_dir: str, generator, which: str = LATEST) -> str:
    """Loads only the EMA generator of a checkpoint (see find_checkpoint) into `generator`."""
    path = find_checkpoint(model_dir, which)
    try:
        # Every generator weight must come from the checkpoint: never sample an
        # untrained or mismatched generator. The rest of the checkpoint is not needed.
        status = tf.train.Checkpoint(ema_generator=generator).restore(path)
        status.assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError) as e:
        raise ConfigError(
            f"the EMA generator in {path} does not fit the generator built from "
            f"config.json ({first_line(e)})"
        ) from None
    return path
