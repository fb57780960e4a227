"""Splits the CPU into logical devices before TensorFlow starts, so MirroredStrategy
tests can run several replicas on a CPU-only machine, and gives tiny run configs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

LOGICAL_CPUS = 4
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * LOGICAL_CPUS,
)

from ganfm.config import Config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_FLAGS = os.path.join(REPO, "launch", "presets", "smoke.flags")


def run_python(*args, timeout=600, **env):
    """Runs `python *args` in the repository, as a user would; returns the result."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_ports(n):
    """n free TCP ports on 127.0.0.1 (for worker processes)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def checkpoint_values(model_dir_or_path) -> dict:
    """Every saved tensor of a checkpoint (a path, or a run's newest one) by its key."""
    path = str(model_dir_or_path)
    if os.path.isdir(path):
        path = tf.train.latest_checkpoint(os.path.join(path, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    skip = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter")
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if not k.startswith(skip)
    }


def max_difference(a: dict, b: dict, prefix: str = "") -> float:
    """Largest absolute difference over the keys starting with prefix (same key sets)."""
    assert set(a) == set(b)
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


def tiny_config(model_dir, **sections) -> Config:
    """A few-second run on 8x8 digits with very narrow models."""
    base = Config().replace(
        data=dict(dataset="digits", image_size=8),
        model=dict(z_dim=8, g_filters=8, d_filters=8),
        loop=dict(
            model_dir=str(model_dir),
            batch_size=16,
            train_steps=4,
            steps_per_loop=2,
            summary_every=2,
            checkpoint_every=2,
        ),
        runtime=dict(deterministic=True, seed=3),
    )
    return base.replace(**sections)


@pytest.fixture
def tiny(tmp_path):
    """tiny(**sections) -> Config writing under a fresh temporary folder."""
    counter = iter(range(1000))

    def make(**sections):
        return tiny_config(tmp_path / f"run{next(counter)}", **sections)

    return make


@pytest.fixture(scope="session")
def classifier_cache(request, tmp_path_factory):
    """Domain classifiers kept in pytest's cache across sessions (keyed by a fingerprint of
    the data and the classifier's version): each trains once per checkout. Without the
    cache plugin (-p no:cacheprovider), once per session."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return str(tmp_path_factory.mktemp("ganfm_classifiers"))
    return str(cache.mkdir("ganfm_classifiers"))
