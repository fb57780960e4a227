"""Checkpoints through tf.train.CheckpointManager, chief-only on multi-worker jobs.

Restore happens inside the strategy scope (train_lib), so restored values land in every
replica's copy of each variable.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from ganfm.errors import ConfigError

CHECKPOINT_SUBDIR = "checkpoints"


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
                    f"checkpoint {path} does not fit these models ({_first_line(e)}); "
                    "use a new --model_dir or the settings the run was started with"
                ) from None
        self.last_saved = path
        return path

    def save(self, step: int) -> str | None:
        if self.chief:
            self.last_saved = self._manager.save(checkpoint_number=step)
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


def _first_line(error: Exception, limit: int = 200) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def restore_ema_generator(model_dir: str, generator) -> str:
    """Loads only the EMA generator of the newest checkpoint into `generator`."""
    path = tf.train.latest_checkpoint(checkpoint_dir(model_dir))
    if path is None:
        raise ConfigError(f"no checkpoint in {checkpoint_dir(model_dir)}; train there first")
    try:
        # Every generator weight must come from the checkpoint: never sample an
        # untrained or mismatched generator. The rest of the checkpoint is not needed.
        status = tf.train.Checkpoint(ema_generator=generator).restore(path)
        status.assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError) as e:
        raise ConfigError(
            f"the EMA generator in {path} does not fit the generator built from "
            f"config.json ({_first_line(e)})"
        ) from None
    return path
