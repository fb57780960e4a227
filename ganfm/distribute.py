"""The one place a tf.distribute.Strategy (and its cluster resolver) is created.

Every other module only sees the Strategy object, plus `is_chief` and `task_id` for
the side effects only one process may have (summaries, samples, the real checkpoint).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os

import tensorflow as tf

from ganfm.config import ConfigError, RuntimeConfig

_COLLECTIVES = {
    "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
    "ring": tf.distribute.experimental.CommunicationImplementation.RING,
    "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
}


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
    if runtime.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=cluster_resolver(runtime),
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=_COLLECTIVES[runtime.collective]
            ),
        )
    if runtime.strategy == "tpu":
        return _tpu_strategy(runtime.tpu)
    raise ConfigError(f"--strategy={runtime.strategy!r} is unknown")


def cluster_resolver(runtime: RuntimeConfig):
    """The cluster of a multi-worker job: --worker_hosts, TF_CONFIG, or Slurm's srun.

    --worker_hosts/--task_index are turned into TF_CONFIG, so every tool that reads it
    (TensorFlow's own included) sees the same cluster.
    """
    if runtime.worker_hosts:
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": runtime.worker_hosts.split(",")},
                "task": {"type": "worker", "index": runtime.task_index},
            }
        )
    if os.environ.get("TF_CONFIG"):
        _check_tf_config(os.environ["TF_CONFIG"])
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_NODELIST" in os.environ:
        # Where Slurm already chose the GPUs, renumbering them would pick other ones.
        return tf.distribute.cluster_resolver.SlurmClusterResolver(
            auto_set_gpu="CUDA_VISIBLE_DEVICES" not in os.environ
        )
    raise ConfigError(
        "--strategy=multi_worker needs a cluster: set TF_CONFIG, pass --worker_hosts and "
        "--task_index, or start the job with srun under Slurm"
    )


def _check_tf_config(text: str) -> None:
    try:
        spec = json.loads(text)
        workers = spec["cluster"].get("worker", []) + spec["cluster"].get("chief", [])
        task = spec["task"]
        index, kind = int(task["index"]), task["type"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"TF_CONFIG does not parse ({type(e).__name__}: {e}); it must look like "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    if kind not in spec["cluster"] or not 0 <= index < len(spec["cluster"][kind]):
        raise ConfigError(
            f"TF_CONFIG task {kind}:{index} is not in its cluster {sorted(spec['cluster'])}"
        )
    if not workers:
        raise ConfigError("TF_CONFIG lists no workers")


def _tpu_strategy(tpu: str) -> tf.distribute.TPUStrategy:
    """Connects to the TPU (a name, grpc://address, or 'local' on a TPU VM)."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot reach a TPU with --tpu={tpu!r} ({first[:200]}); on a TPU VM use "
            "--tpu=local, elsewhere the TPU's name; see BUILD.md"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def task_id(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0)


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Processes in the job (1 unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(resolver, tf.distribute.cluster_resolver.TPUClusterResolver):
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return max(1, len(jobs.get("worker", [])) + len(jobs.get("chief", [])))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes summaries, samples and checkpoints."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(resolver, tf.distribute.cluster_resolver.TPUClusterResolver):
        return True
    jobs = resolver.cluster_spec().as_dict()
    task_type = resolver.task_type
    if not jobs or task_type in (None, "chief"):
        return True
    return task_type == "worker" and resolver.task_id == 0 and "chief" not in jobs


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
