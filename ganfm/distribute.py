"""The one place a tf.distribute.Strategy is created.

Multi-worker and TPU strategies (and their cluster resolvers) belong here too; every
other module only sees the Strategy object.
"""

from __future__ import annotations

import contextlib
import itertools

import tensorflow as tf

from ganfm.config import ConfigError, RuntimeConfig


def split_cpu(num_devices: int) -> list[str]:
    """Splits the first physical CPU into logical devices; returns the first num_devices.

    Must run before TensorFlow initializes its devices. A process that already has at
    least num_devices logical CPUs (a test's conftest, an earlier call) reuses them.
    """
    cpus = tf.config.list_physical_devices("CPU")
    # RuntimeError: already initialized; whether there are enough devices is checked below.
    with contextlib.suppress(RuntimeError):
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices
        )
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < num_devices:
        raise ConfigError(
            f"--cpu_replicas={num_devices} but TensorFlow already started with "
            f"{len(logical)} CPU devices; set it before any TensorFlow work in the process"
        )
    return [d.name for d in logical[:num_devices]]


def make_strategy(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    """Builds the strategy named by --strategy."""
    gpus = tf.config.list_physical_devices("GPU")
    if runtime.strategy == "default":
        return tf.distribute.get_strategy()
    if runtime.strategy == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if runtime.strategy == "mirrored":
        # All local GPUs (or the CPU) unless --cpu_replicas splits the CPU.
        return _mirrored(split_cpu(runtime.cpu_replicas) if runtime.cpu_replicas else None)
    raise ConfigError(f"--strategy={runtime.strategy!r} is unknown")


_mirrored_count = itertools.count()
_KEYS_PER_STRATEGY = 100_000


def _mirrored(devices: list[str] | None) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy with collective keys of its own.

    Every MirroredStrategy starts its collective group keys at 1; a second one with a
    different replica count in the same process (a notebook, a test session) then joins
    the first one's groups and aborts ("joining a group with size 4, but that group has
    size 2"). TensorFlow's own tests avoid this with the class attribute set here.
    """
    cls = tf.distribute.MirroredStrategy
    previous = getattr(cls, "_collective_key_base", None)
    if previous is None:
        return cls(devices)
    cls._collective_key_base = next(_mirrored_count) * _KEYS_PER_STRATEGY
    try:
        return cls(devices)
    finally:
        cls._collective_key_base = previous


def check_batch_split(global_batch: int, strategy: tf.distribute.Strategy) -> int:
    """Returns the per-replica batch; the global batch must split evenly."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ConfigError(
            f"--batch_size={global_batch} does not split over {replicas} replicas; "
            f"use a multiple of {replicas}, "
            f"e.g. --batch_size={max(1, global_batch // replicas) * replicas}"
        )
    return global_batch // replicas
