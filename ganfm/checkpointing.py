"""Checkpoints through tf.train.CheckpointManager.

Restore happens inside the strategy scope (train_lib), so restored values land in every
replica's copy of each variable.
"""

from __future__ import annotations

import os

import tensorflow as tf

from ganfm.errors import ConfigError

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(model_dir: str) -> str:
    return os.path.join(model_dir, CHECKPOINT_SUBDIR)


def make_manager(items: dict, model_dir: str, keep: int, step: tf.Variable):
    checkpoint = tf.train.Checkpoint(**items)
    return tf.train.CheckpointManager(
        checkpoint, checkpoint_dir(model_dir), max_to_keep=keep, step_counter=step
    )


def restore_latest(manager: tf.train.CheckpointManager) -> str | None:
    """Restores the newest checkpoint, if any; every saved object must match."""
    path = manager.latest_checkpoint
    if path:
        try:
            manager.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise ConfigError(
                f"checkpoint {path} does not fit these models ({_first_line(e)}); "
                "use a new --model_dir or the settings the run was started with"
            ) from None
    return path


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
