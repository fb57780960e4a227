"""Trains a GAN with a feature-matching loss: python train.py [--flagfile=F] [--flags].

Parses flags into a frozen ganfm.config.Config and calls ganfm.train_lib.run; nothing
else lives here. A bad value exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from ganfm import config as cfg
from ganfm.cli import fail, parse_flags_or_exit, user_errors

D = cfg.Config()

# Data.
flags.DEFINE_string(
    "dataset",
    D.data.dataset,
    "digits (scikit-learn's, no download), mnist, fashion_mnist (IDX files in --data_dir, "
    "else TFDS), tfds:<name>, folder:<path> (PNG/JPEG tree) or synthetic.",
)
flags.DEFINE_string(
    "data_dir",
    D.data.data_dir,
    "mnist/fashion_mnist: folder of IDX files (e.g. /usr/share/datasets/fashion-mnist); "
    "tfds:<name>: the TFDS data dir.",
)
flags.DEFINE_integer(
    "image_size",
    D.data.image_size,
    f"Square image side, one of {cfg.SUPPORTED_IMAGE_SIZES}; 0: the data set's own size "
    "(folder: 64).",
)
flags.DEFINE_integer("channels", D.data.channels, "1 or 3; 0: the data set's own.")
# Models.
flags.DEFINE_integer("z_dim", D.model.z_dim, "Generator noise dimension.")
flags.DEFINE_integer("g_filters", D.model.g_filters, "Filters of the last generator block.")
flags.DEFINE_integer("d_filters", D.model.d_filters, "Filters of the first discriminator block.")
flags.DEFINE_boolean(
    "sync_bn",
    D.model.sync_bn,
    "Synchronized batch norm (statistics over the global batch) in every model.",
)
flags.DEFINE_string(
    "models",
    D.model.models,
    "A .py file defining build_generator(config) and build_discriminator(config) that "
    "return functional or Sequential Keras models; empty: the built-in DCGAN.",
)
# Losses.
flags.DEFINE_enum("adv_loss", D.loss.adv_loss, cfg.ADV_LOSSES, "Adversarial loss.")
flags.DEFINE_list(
    "fm_layers",
    list(D.loss.fm_layers),
    "Discriminator layers to match: names, indices into discriminator.layers, or 'all'. "
    "Empty: no feature matching.",
)
flags.DEFINE_list(
    "fm_layer_weights", [], "One weight per --fm_layers entry; empty: 1 for every layer."
)
flags.DEFINE_float("fm_weight", D.loss.fm_weight, "Weight of the feature-matching term.")
flags.DEFINE_enum(
    "fm_distance", D.loss.fm_distance, cfg.FM_DISTANCES, "Squared L2 or L1, averaged over features."
)
flags.DEFINE_integer(
    "fm_moments",
    D.loss.fm_moments,
    "1: match each feature's mean (Salimans et al. 2016); 2: its mean and second moment.",
)
flags.DEFINE_boolean(
    "fm_only",
    D.loss.fm_only,
    "Generator objective is feature matching alone, as in Salimans et al. 2016.",
)
flags.DEFINE_enum(
    "fm_target",
    D.loss.fm_target,
    cfg.FM_TARGETS,
    "Real-side statistics: the current real batch, or their moving average (steadier "
    "with small batches; kept in checkpoints).",
)
flags.DEFINE_float("fm_target_decay", D.loss.fm_target_decay, "Decay of --fm_target=ema.")
flags.DEFINE_enum(
    "fm_stats",
    D.loss.fm_stats,
    cfg.FM_STATS,
    "Feature means over the global batch (replica count does not matter) or per replica.",
)
flags.DEFINE_float("r1_weight", D.loss.r1_weight, "R1 penalty weight (gamma); 0: off.")
flags.DEFINE_float("gp_weight", D.loss.gp_weight, "WGAN-GP penalty weight (lambda); 0: off.")
# Optimizers.
flags.DEFINE_float("g_lr", D.optimizer.g_lr, "Generator Adam learning rate.")
flags.DEFINE_float("d_lr", D.optimizer.d_lr, "Discriminator Adam learning rate.")
flags.DEFINE_float("beta1", D.optimizer.beta1, "Adam beta_1 of both optimizers.")
flags.DEFINE_float("beta2", D.optimizer.beta2, "Adam beta_2 of both optimizers.")
flags.DEFINE_integer("d_steps", D.optimizer.d_steps, "Discriminator updates per generator update.")
flags.DEFINE_enum(
    "update",
    D.optimizer.update,
    cfg.UPDATES,
    "alternating: update D, then G against the updated D (the papers' scheme); "
    "simultaneous: both from one forward pass, as the TensorFlow DCGAN tutorial "
    "(about 20% fewer FLOPs per step; needs --d_steps=1).",
)
flags.DEFINE_float(
    "ema_decay",
    D.optimizer.ema_decay,
    "Decay of the generator average used for samples, evaluation and export; step t "
    "uses min(ema_decay, (1 + t) / (10 + t)), so the average forgets the random start "
    "(tf.train.ExponentialMovingAverage's num_updates rule).",
)
# Loop.
flags.DEFINE_string("model_dir", D.loop.model_dir, "Checkpoints, TensorBoard logs, samples.")
flags.DEFINE_integer("batch_size", D.loop.batch_size, "Global batch, split over replicas.")
flags.DEFINE_integer("train_steps", D.loop.train_steps, "Total generator updates.")
flags.DEFINE_integer(
    "steps_per_loop", D.loop.steps_per_loop, "Steps per compiled call (host round trip)."
)
flags.DEFINE_integer(
    "summary_every",
    D.loop.summary_every,
    "TensorBoard/sample interval (multiple of steps_per_loop).",
)
flags.DEFINE_integer(
    "checkpoint_every", D.loop.checkpoint_every, "Checkpoint interval (multiple of steps_per_loop)."
)
flags.DEFINE_integer("keep_checkpoints", D.loop.keep_checkpoints, "Checkpoints to keep.")
flags.DEFINE_list(
    "profile_steps",
    [],
    "START,END: a TensorBoard profiler trace of those steps (rounded out to whole "
    "--steps_per_loop calls), in --model_dir/plugins/profile.",
)
flags.DEFINE_integer(
    "eval_every",
    D.loop.eval_every,
    "Every N steps (a multiple of steps_per_loop): FD, KID, precision/recall and class "
    "coverage in the domain classifier's features, to TensorBoard (eval/...); the best "
    "checkpoint by FD is kept in --model_dir/best. 0: off.",
)
flags.DEFINE_integer(
    "eval_samples", D.loop.eval_samples, "Generated images per --eval_every evaluation."
)
flags.DEFINE_string(
    "classifier_cache",
    D.loop.classifier_cache,
    "Where domain classifiers are cached; empty: $GANFM_CACHE or ~/.cache/ganfm.",
)
flags.DEFINE_enum(
    "nan_policy",
    D.loop.nan_policy,
    cfg.NAN_POLICIES,
    "A NaN/Inf loss or gradient on any replica: stop (exit 3; that update is not applied "
    "and nothing after the last good checkpoint is saved) or skip_step (skip that D or G "
    "update everywhere, count it in TensorBoard as nan/skipped_*, go on).",
)
flags.DEFINE_list(
    "stats_layers",
    [],
    "Discriminator layers whose activation statistics TensorBoard shows (names, indices "
    "or 'all'); empty: the --fm_layers.",
)
# Runtime.
flags.DEFINE_enum(
    "strategy",
    D.runtime.strategy,
    cfg.STRATEGIES,
    "default (one device), one_device, mirrored (all local GPUs, or --cpu_replicas CPUs), "
    "multi_worker (MultiWorkerMirroredStrategy: TF_CONFIG, --worker_hosts or Slurm), "
    "tpu (TPUStrategy, --tpu).",
)
flags.DEFINE_string(
    "worker_hosts",
    D.runtime.worker_hosts,
    "multi_worker: every worker's host:port, comma-separated (sets TF_CONFIG).",
)
flags.DEFINE_integer(
    "task_index", D.runtime.task_index, "multi_worker with --worker_hosts: this worker's index."
)
flags.DEFINE_enum(
    "collective",
    D.runtime.collective,
    cfg.COLLECTIVES,
    "multi_worker all-reduce: auto, ring (gRPC, CPUs) or nccl (GPUs).",
)
flags.DEFINE_string(
    "tpu", D.runtime.tpu, "tpu: the TPU's name, a grpc:// address, or 'local' on a TPU VM."
)
flags.DEFINE_enum(
    "precision",
    D.runtime.precision,
    cfg.PRECISIONS,
    "fp32; mixed_bfloat16 (bfloat16 compute, float32 weights, logits and losses; TPUs "
    "and recent GPUs; no loss scaling needed); or mixed_float16 (GPUs; float16 compute "
    "with dynamic loss scaling, a step with inf/NaN gradients on any replica is skipped).",
)
flags.DEFINE_boolean(
    "jit_compile",
    D.runtime.jit_compile,
    "XLA-compile the loss-and-gradient computation (for GPUs; TPUs compile everything).",
)
flags.DEFINE_integer(
    "cpu_replicas", D.runtime.cpu_replicas, "With --strategy=mirrored: N logical CPU replicas."
)
flags.DEFINE_integer("seed", D.runtime.seed, "Seeds weights, noise and data order.")
flags.DEFINE_boolean(
    "deterministic", D.runtime.deterministic, "Deterministic ops: bitwise repeatable runs."
)

FLAGS = flags.FLAGS


def _floats(name: str, values: list[str]) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise cfg.ConfigError(f"--{name}={','.join(values)} must be numbers") from None


def _ints(name: str, values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise cfg.ConfigError(f"--{name}={','.join(values)} must be whole numbers") from None


def config_from_flags() -> cfg.Config:
    """The one function that reads flags."""
    f = FLAGS
    return cfg.Config(
        data=cfg.DataConfig(f.dataset, f.data_dir, f.image_size, f.channels),
        # Absolute, so config.json still finds the file from another directory.
        model=cfg.ModelConfig(
            f.z_dim,
            f.g_filters,
            f.d_filters,
            os.path.abspath(f.models) if f.models else "",
            f.sync_bn,
        ),
        loss=cfg.LossConfig(
            adv_loss=f.adv_loss,
            fm_layers=tuple(x.strip() for x in f.fm_layers if x.strip()),
            fm_layer_weights=_floats("fm_layer_weights", f.fm_layer_weights),
            fm_weight=f.fm_weight,
            fm_distance=f.fm_distance,
            fm_moments=f.fm_moments,
            fm_only=f.fm_only,
            fm_target=f.fm_target,
            fm_target_decay=f.fm_target_decay,
            fm_stats=f.fm_stats,
            r1_weight=f.r1_weight,
            gp_weight=f.gp_weight,
        ),
        optimizer=cfg.OptimizerConfig(
            f.g_lr, f.d_lr, f.beta1, f.beta2, f.d_steps, f.ema_decay, f.update
        ),
        loop=cfg.LoopConfig(
            f.model_dir,
            f.batch_size,
            f.train_steps,
            f.steps_per_loop,
            f.summary_every,
            f.checkpoint_every,
            f.keep_checkpoints,
            tuple(x.strip() for x in f.stats_layers if x.strip()),
            _ints("profile_steps", f.profile_steps),
            f.eval_every,
            f.eval_samples,
            f.classifier_cache,
            f.nan_policy,
        ),
        runtime=cfg.RuntimeConfig(
            strategy=f.strategy,
            cpu_replicas=f.cpu_replicas,
            seed=f.seed,
            deterministic=f.deterministic,
            worker_hosts=f.worker_hosts,
            task_index=f.task_index,
            collective=f.collective,
            tpu=f.tpu,
            jit_compile=f.jit_compile,
            precision=f.precision,
        ),
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; flags look like --name=value")
    with user_errors():
        config = config_from_flags().validate()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from ganfm import train_lib  # TensorFlow loads only once the flags are good.

        train_lib.run(config)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_or_exit)
    sys.exit(0)
