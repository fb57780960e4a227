"""Typed, frozen run configuration; the only thing the library reads settings from.

Flags (train.py) and tests build a Config; `Config.validate()` rejects bad values with
one-line messages that quote the value and say how to fix it. Never imports absl.flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from ganfm.errors import ConfigError

CONFIG_FILE = "config.json"  # In --model_dir: the settings of the run.
ADV_LOSSES = ("non_saturating", "minimax", "hinge", "wasserstein", "least_squares")
FM_DISTANCES = ("l2", "l1")
FM_TARGETS = ("batch", "ema")
FM_STATS = ("global", "local")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
COLLECTIVES = ("auto", "ring", "nccl")
UPDATES = ("alternating", "simultaneous")
PRECISIONS = ("fp32", "mixed_float16", "mixed_bfloat16")
NAN_POLICIES = ("stop", "skip_step")
BUILTIN_DATASETS = ("digits", "mnist", "fashion_mnist", "synthetic")
DATASET_PREFIXES = ("tfds:", "folder:")
# DCGAN stacks double the resolution per block from a 4x4 (or 7x7) start.
SUPPORTED_IMAGE_SIZES = (8, 16, 28, 32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    data_dir: str = ""
    image_size: int = 0  # 0: the data set's own size.
    channels: int = 0  # 0: the data set's own channel count.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    z_dim: int = 64
    g_filters: int = 32
    d_filters: int = 32
    models: str = ""  # Path to a user module with build_generator/build_discriminator.
    sync_bn: bool = True  # Batch norm over the global batch in every model.


@dataclasses.dataclass(frozen=True)
class LossConfig:
    adv_loss: str = "non_saturating"
    fm_layers: tuple[str, ...] = ("features",)
    fm_layer_weights: tuple[float, ...] = ()  # Empty: weight 1 for every layer.
    # 100 and a moving-average target: the term (a mean over features, ~1e-3) then
    # weighs like the adversarial one, and the target's batch noise is averaged away.
    # README, "Does feature matching help?": weight 1 changed nothing, a per-batch target
    # at 10-1000 made FD worse.
    fm_weight: float = 100.0
    fm_distance: str = "l2"
    fm_moments: int = 1  # 1: feature means; 2: means and second moments.
    fm_only: bool = False
    fm_target: str = "ema"
    fm_target_decay: float = 0.99
    fm_stats: str = "global"
    r1_weight: float = 0.0
    gp_weight: float = 0.0


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    d_steps: int = 1
    ema_decay: float = 0.999
    # alternating: D is updated, then G against the updated D (Goodfellow et al. 2014;
    # Salimans et al. 2016). simultaneous: both from one forward pass, as in the
    # TensorFlow DCGAN tutorial: about 20% fewer FLOPs per step.
    update: str = "alternating"


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    model_dir: str = "/tmp/ganfm"
    batch_size: int = 64  # Global: split over all replicas.
    train_steps: int = 4000
    steps_per_loop: int = 50
    summary_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    stats_layers: tuple[str, ...] = ()  # Layers with TensorBoard statistics; empty: fm_layers.
    profile_steps: tuple[int, ...] = ()  # (start, end): profiler trace of those steps.
    eval_every: int = 0  # >0: FD, KID, precision/recall, coverage every N steps; keeps best.
    eval_samples: int = 2000  # Generated (and at most reference) images per evaluation.
    classifier_cache: str = ""  # Domain classifiers' cache; empty: $GANFM_CACHE or ~/.cache.
    # A non-finite loss or gradient: stop (exit 3, last checkpoint intact) or skip_step
    # (that update is not applied, and counted).
    nan_policy: str = "stop"


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    strategy: str = "default"
    cpu_replicas: int = 0  # >0: split the CPU into this many logical devices (mirrored).
    seed: int = 0
    deterministic: bool = False
    worker_hosts: str = ""  # multi_worker: host:port,host:port (sets TF_CONFIG).
    task_index: int = 0  # multi_worker with worker_hosts: this process's index.
    collective: str = "auto"  # multi_worker all-reduce implementation.
    tpu: str = ""  # tpu: a TPU name, grpc://address, or "local" on a TPU VM.
    jit_compile: bool = False  # XLA for the loss-and-gradient computation.
    # mixed_bfloat16: bfloat16 compute, float32 weights (TPU, recent GPUs); mixed_float16:
    # float16 compute with dynamic loss scaling (GPUs).
    precision: str = "fp32"


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    loop: LoopConfig = LoopConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def replace(self, **sections: dict[str, Any]) -> Config:
        """Returns a copy with fields of named sections changed: replace(loop={...})."""
        changed = {
            name: dataclasses.replace(getattr(self, name), **fields)
            for name, fields in sections.items()
        }
        return dataclasses.replace(self, **changed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        sections = {}
        for field in dataclasses.fields(cls):
            section_cls = _SECTIONS[field.name]
            values = dict(data.get(field.name, {}))
            known = {f.name: f for f in dataclasses.fields(section_cls)}
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ConfigError(f"config section '{field.name}' has unknown keys {unknown}")
            for key, value in values.items():
                if isinstance(value, list):
                    values[key] = tuple(value)
            sections[field.name] = section_cls(**values)
        return cls(**sections)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))

    def validate(self) -> Config:
        """Raises ConfigError for the first bad value; returns self for chaining."""
        _validate(self)
        return self


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optimizer": OptimizerConfig,
    "loop": LoopConfig,
    "runtime": RuntimeConfig,
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _positive(name: str, value: float) -> None:
    _require(value > 0, f"--{name}={value} must be > 0")


def _non_negative(name: str, value: float) -> None:
    _require(value >= 0, f"--{name}={value} must be >= 0")


def _fraction(name: str, value: float) -> None:
    _require(0 <= value < 1, f"--{name}={value} must be in [0, 1)")


def _validate(config: Config) -> None:
    data, model, loss, opt, loop, rt = (
        config.data,
        config.model,
        config.loss,
        config.optimizer,
        config.loop,
        config.runtime,
    )
    _require(
        data.dataset in BUILTIN_DATASETS or data.dataset.startswith(DATASET_PREFIXES),
        f"--dataset={data.dataset!r} is unknown; use one of {', '.join(BUILTIN_DATASETS)}, "
        "tfds:<name> or folder:<path>",
    )
    if data.dataset.startswith(DATASET_PREFIXES):
        _require(
            data.dataset.split(":", 1)[1] != "",
            f"--dataset={data.dataset!r} needs a name or path after the colon",
        )
    _require(
        data.image_size == 0 or data.image_size in SUPPORTED_IMAGE_SIZES,
        f"--image_size={data.image_size} is not supported; use one of "
        f"{', '.join(map(str, SUPPORTED_IMAGE_SIZES))} (or 0 for the data set's own size)",
    )
    _require(data.channels in (0, 1, 3), f"--channels={data.channels} must be 0 (auto), 1 or 3")
    if data.data_dir and not data.dataset.startswith("tfds:"):
        _require(
            os.path.isdir(data.data_dir),
            f"--data_dir={data.data_dir!r} is not a directory; point it at the data files",
        )
    _positive("z_dim", model.z_dim)
    _positive("g_filters", model.g_filters)
    _positive("d_filters", model.d_filters)
    if model.models:
        _require(
            os.path.isfile(model.models),
            f"--models={model.models!r} is not a file; pass a .py file that defines "
            "build_generator(config) and build_discriminator(config)",
        )

    _require(
        loss.adv_loss in ADV_LOSSES,
        f"--adv_loss={loss.adv_loss!r} is unknown; use one of {', '.join(ADV_LOSSES)}",
    )
    _require(
        loss.fm_distance in FM_DISTANCES,
        f"--fm_distance={loss.fm_distance!r} is unknown; use one of {', '.join(FM_DISTANCES)}",
    )
    _require(
        loss.fm_target in FM_TARGETS,
        f"--fm_target={loss.fm_target!r} is unknown; use one of {', '.join(FM_TARGETS)}",
    )
    _require(
        loss.fm_stats in FM_STATS,
        f"--fm_stats={loss.fm_stats!r} is unknown; use one of {', '.join(FM_STATS)}",
    )
    _require(
        loss.fm_moments in (1, 2),
        f"--fm_moments={loss.fm_moments} is unsupported; use 1 (feature means) or 2 "
        "(means and second moments)",
    )
    _non_negative("fm_weight", loss.fm_weight)
    _fraction("fm_target_decay", loss.fm_target_decay)
    _non_negative("r1_weight", loss.r1_weight)
    _non_negative("gp_weight", loss.gp_weight)
    if loss.fm_layer_weights and loss.fm_layers != ("all",):  # 'all' is checked once resolved.
        _require(
            len(loss.fm_layer_weights) == len(loss.fm_layers),
            f"--fm_layer_weights has {len(loss.fm_layer_weights)} values but --fm_layers "
            f"names {len(loss.fm_layers)} layers; give one weight per layer",
        )
        for w in loss.fm_layer_weights:
            _non_negative("fm_layer_weights", w)
    if loss.fm_only:
        _require(
            loss.fm_layers and loss.fm_weight > 0,
            "--fm_only needs feature matching: set --fm_layers and --fm_weight > 0",
        )

    _positive("g_lr", opt.g_lr)
    _positive("d_lr", opt.d_lr)
    _fraction("beta1", opt.beta1)
    _fraction("beta2", opt.beta2)
    _require(opt.d_steps >= 1, f"--d_steps={opt.d_steps} must be >= 1")
    _require(
        opt.update in UPDATES,
        f"--update={opt.update!r} is unknown; use one of {', '.join(UPDATES)}",
    )
    _require(
        opt.update == "alternating" or opt.d_steps == 1,
        f"--update=simultaneous makes one D and one G update per step; "
        f"drop --d_steps={opt.d_steps}",
    )
    _fraction("ema_decay", opt.ema_decay)

    _require(loop.model_dir != "", "--model_dir is empty; give a directory for the run")
    _positive("batch_size", loop.batch_size)
    _positive("train_steps", loop.train_steps)
    _positive("steps_per_loop", loop.steps_per_loop)
    _positive("summary_every", loop.summary_every)
    _positive("checkpoint_every", loop.checkpoint_every)
    _positive("keep_checkpoints", loop.keep_checkpoints)
    if loop.profile_steps:
        _require(
            len(loop.profile_steps) == 2 and 0 <= loop.profile_steps[0] < loop.profile_steps[1],
            f"--profile_steps={','.join(map(str, loop.profile_steps))} must be START,END "
            "with 0 <= START < END, e.g. --profile_steps=100,120",
        )
    _non_negative("eval_every", loop.eval_every)
    _require(
        loop.nan_policy in NAN_POLICIES,
        f"--nan_policy={loop.nan_policy!r} is unknown; use one of {', '.join(NAN_POLICIES)}",
    )
    _require(loop.eval_samples >= 10, f"--eval_samples={loop.eval_samples} must be >= 10")
    for name in ("summary_every", "checkpoint_every", "eval_every"):
        value = getattr(loop, name)
        _require(
            value % loop.steps_per_loop == 0,
            f"--{name}={value} is not a multiple of --steps_per_loop={loop.steps_per_loop}; "
            f"use e.g. --{name}={max(1, value // loop.steps_per_loop) * loop.steps_per_loop}",
        )

    _require(
        rt.strategy in STRATEGIES,
        f"--strategy={rt.strategy!r} is unknown; use one of {', '.join(STRATEGIES)}",
    )
    _non_negative("cpu_replicas", rt.cpu_replicas)
    if rt.cpu_replicas:
        _require(
            rt.strategy == "mirrored",
            f"--cpu_replicas={rt.cpu_replicas} only applies to --strategy=mirrored",
        )
    _require(0 <= rt.seed < 2**31, f"--seed={rt.seed} must be in [0, 2**31)")
    _require(
        rt.collective in COLLECTIVES,
        f"--collective={rt.collective!r} is unknown; use one of {', '.join(COLLECTIVES)}",
    )
    if rt.worker_hosts:
        _require(
            rt.strategy == "multi_worker",
            "--worker_hosts only applies to --strategy=multi_worker",
        )
        hosts = rt.worker_hosts.split(",")
        for host in hosts:
            _require(
                host.rpartition(":")[0] != "" and host.rpartition(":")[2].isdigit(),
                f"--worker_hosts entry {host!r} is not host:port; e.g. "
                "--worker_hosts=10.0.0.1:2222,10.0.0.2:2222",
            )
        _require(
            0 <= rt.task_index < len(hosts),
            f"--task_index={rt.task_index} is not in [0, {len(hosts)}) for "
            f"{len(hosts)} --worker_hosts",
        )
    if rt.tpu:
        _require(rt.strategy == "tpu", "--tpu only applies to --strategy=tpu")
    _require(
        rt.precision in PRECISIONS,
        f"--precision={rt.precision!r} is unknown; use one of {', '.join(PRECISIONS)}",
    )


def _ema_layers(config: Config) -> tuple[str, ...]:
    """The layers whose real-feature average a checkpoint holds (--fm_target=ema)."""
    loss = config.loss
    if loss.fm_target != "ema" or loss.fm_weight == 0:
        return ()
    return loss.fm_layers


def _loss_scaled(config: Config) -> str:
    return "mixed_float16" if config.runtime.precision == "mixed_float16" else "fp32/mixed_bfloat16"


def architecture_differences(old: Config, new: Config) -> list[str]:
    """Settings that change the shape of what a checkpoint holds, as 'name: old -> new'."""
    fields = [
        ("image_size", old.data.image_size, new.data.image_size),
        ("channels", old.data.channels, new.data.channels),
        ("z_dim", old.model.z_dim, new.model.z_dim),
        ("g_filters", old.model.g_filters, new.model.g_filters),
        ("d_filters", old.model.d_filters, new.model.d_filters),
        ("models", old.model.models, new.model.models),
        ("fm_target (moving-average state)", _ema_layers(old), _ema_layers(new)),
        # Loss scaling adds optimizer state; bfloat16 and fp32 checkpoints are alike.
        ("precision", _loss_scaled(old), _loss_scaled(new)),
    ]
    return [f"--{name}: {a!r} -> {b!r}" for name, a, b in fields if a != b]
