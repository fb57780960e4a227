"""Checkpoints through tf.train.CheckpointManager.

Restore happens inside the strategy scope (train_lib), so restored values land in every
replica's copy of each variable.
"""

from __future__ import annotations

import os

import tensorflow as tf

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
        manager.checkpoint.restore(path).assert_existing_objects_matched()
    return path


def restore_ema_generator(model_dir: str, generator) -> str:
    """Loads only the EMA generator of the newest checkpoint into `generator`."""
    path = tf.train.latest_checkpoint(checkpoint_dir(model_dir))
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(model_dir)}; train first")
    tf.train.Checkpoint(ema_generator=generator).restore(path).expect_partial()
    return path
