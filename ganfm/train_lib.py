"""The outer loop: build, restore, train in steps_per_loop chunks, log, checkpoint.

`run(config)` is what train.py calls and what tests call with tiny configs; pass
`build_models` to train your own Keras models (see README, "Your own models").
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from tensorflow.io import gfile

from ganfm import checkpointing, data, distribute, images, models
from ganfm.config import CONFIG_FILE, Config, architecture_differences
from ganfm.errors import ConfigError, Preempted, TrainingDiverged, WorkerLost, WriteFailed
from ganfm.preemption import PreemptionWatch
from ganfm.progress import Progress
from ganfm.statistics_step import StatisticsStep, constants
from ganfm.summaries import Summaries
from ganfm.trainer import Trainer, sample_noise

SAMPLES_FILE = "samples.png"
NUM_GRID_SAMPLES = 64
PRINT_EVERY_SECONDS = 10.0

ModelBuilder = Callable[[Config], tuple[keras.Model, keras.Model, keras.Model]]


def resolve(config: Config, source: data.ImageSource) -> Config:
    """Fills in the image size and channels the data set decided (0 = auto)."""
    return config.replace(data=dict(image_size=source.image_size, channels=source.channels))


def check_model_dir(config: Config) -> None:
    """Refuses a --model_dir whose saved run has a different architecture or shape."""
    path = os.path.join(config.loop.model_dir, CONFIG_FILE)
    if not gfile.exists(path):
        if gfile.exists(config.loop.model_dir) and not gfile.isdir(config.loop.model_dir):
            raise ConfigError(f"--model_dir={config.loop.model_dir!r} is a file, not a directory")
        return
    saved = _read_config(path)
    diffs = architecture_differences(saved, config)
    if diffs:
        raise ConfigError(
            f"--model_dir={config.loop.model_dir!r} holds a run with other settings "
            f"({'; '.join(diffs)}); use a new --model_dir or the saved settings"
        )


def check_writable(model_dir: str) -> None:
    """Refuses a local --model_dir that cannot be created or written, before anything
    is built (remote paths such as gs:// fail at the first write instead)."""
    if "://" in model_dir:
        return
    path = os.path.abspath(model_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ConfigError(
            f"--model_dir={model_dir!r} cannot be created: {path} is a file; "
            "choose another --model_dir"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--model_dir={model_dir!r} is not writable ({path} is read-only or not "
            "yours); choose a writable --model_dir"
        )


def load_config(model_dir: str) -> Config:
    path = os.path.join(model_dir, CONFIG_FILE)
    if not gfile.exists(path):
        raise ConfigError(f"--model_dir={model_dir!r} has no {CONFIG_FILE}; train there first")
    return _read_config(path)


def _read_config(path: str) -> Config:
    try:
        with gfile.GFile(path) as f:
            return Config.from_json(f.read())
    except (OSError, ValueError, TypeError, tf.errors.OpError) as e:
        raise ConfigError(
            f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "restore it from a backup or use a new --model_dir"
        ) from None


def _write_config(config: Config) -> None:
    model_dir = config.loop.model_dir
    existed = gfile.exists(model_dir)
    try:
        gfile.makedirs(model_dir)
        images.atomic_write_bytes(os.path.join(model_dir, CONFIG_FILE), config.to_json().encode())
    except (OSError, tf.errors.OpError) as e:
        if not existed and gfile.exists(model_dir) and not gfile.listdir(model_dir):
            gfile.rmtree(model_dir)  # Empty: leave nothing behind.
        raise ConfigError(
            f"cannot write --model_dir={model_dir!r} ({checkpointing.write_error_cause(e)}); "
            "free space there or choose another --model_dir"
        ) from None


def _sample_grid(trainer: Trainer, noise: tf.Tensor) -> np.ndarray:
    return images.make_grid(data.to_uint8(trainer.generate(noise)).numpy())


def _divergence(trainer: Trainer, first: int, last: int, saved: str | None) -> str | None:
    """What went NaN/Inf in steps first..last, as a sentence; None if nothing did.

    Under mixed_float16 a skipped update is the loss scaler at work (a float16
    overflow), not a divergence; there only the losses count.
    """
    names = sorted(trainer.nonfinite)
    terms = [n for n in names if n.startswith("loss/")] or names  # Losses say most.
    if not trainer.loss_scaled:
        for network, count in zip(("discriminator", "generator"), trainer.skipped, strict=True):
            if count:
                terms.append(f"the {network}'s loss or gradients ({count} update(s) skipped)")
    if not terms:
        return None
    where = f"the last checkpoint, {saved}, is intact" if saved else "no checkpoint was saved"
    return (
        f"{', '.join(terms)} became NaN/Inf between steps {first} and {last}; {where}; "
        "lower --g_lr/--d_lr or add --r1_weight, then resume (or --nan_policy=skip_step)"
    )


def _save_checked(
    checkpoints: checkpointing.Checkpointer, trainer: Trainer, step: int
) -> str | None:
    """Saves, unless a weight went NaN/Inf: the previous checkpoint is then kept."""
    bad = trainer.nonfinite_variables()
    if bad:
        saved = checkpoints.last_saved
        kept = f"the last checkpoint, {saved}, is intact" if saved else "nothing was saved"
        raise TrainingDiverged(
            f"{len(bad)} variable(s) became NaN/Inf by step {step} ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); not saved, {kept}; lower --g_lr/--d_lr "
            "or add --r1_weight, then resume"
        )
    return checkpoints.save(step)


def _write_samples(path: str, grid: np.ndarray, saved: str | None) -> None:
    try:
        images.write_png(path, images.upscale(grid))
    except (OSError, tf.errors.OpError) as e:
        raise WriteFailed(
            f"could not write {path} ({checkpointing.write_error_cause(e)}); the last checkpoint "
            f"({saved or 'none yet'}) is intact; free space or fix --model_dir, then run "
            "the same command to resume"
        ) from None


def setup_runtime(config: Config) -> tf.distribute.Strategy:
    """Seeds, determinism and the strategy: before any model is built."""
    strategy = distribute.make_strategy(config.runtime)
    distribute.check_batch_split(config.loop.batch_size, strategy)
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.runtime.seed)
    # Set every time: Keras keeps the policy process-wide. Logits, losses and
    # statistics stay float32 (the models' output layers are float32; losses cast).
    precision = config.runtime.precision
    keras.mixed_precision.set_global_policy("float32" if precision == "fp32" else precision)
    return strategy


def _build(config: Config, strategy, build_models: ModelBuilder | None):
    """Models, trainer, checkpoint manager and restore, all inside the strategy scope
    (restoring there puts the values in every replica's copy)."""
    with strategy.scope():
        generator, discriminator, ema_generator = models.prepare(
            config, *(build_models or models.build_models)(config)
        )
        trainer = Trainer(config, generator, discriminator, ema_generator, strategy=strategy)
        checkpoints = checkpointing.Checkpointer(
            trainer.checkpoint_items(),
            config.loop.model_dir,
            config.loop.keep_checkpoints,
            trainer.step,
            chief=distribute.is_chief(strategy),
        )
        # Restoring is collective on multi-worker jobs: agree on what to restore first.
        _check_same_checkpoint(strategy, checkpoints.latest)
        restored = checkpoints.restore()
    return trainer, checkpoints, restored


def _periodic_evaluation(config: Config, trainer: Trainer):
    """The chief's --eval_every evaluator (the domain classifier trained or loaded now,
    so a data set it cannot serve fails before --model_dir is touched)."""
    if not config.loop.eval_every:
        return None
    from ganfm import classifier
    from ganfm.evaluation import Evaluator
    from ganfm.periodic_evaluation import PeriodicEvaluation

    evaluator = Evaluator(
        config,
        config.loop.eval_samples,
        config.loop.classifier_cache or classifier.default_cache_dir(),
        log=lambda line: print(line, flush=True),
    )
    if evaluator.classifier is None:
        raise ConfigError(f"--eval_every needs a domain classifier: {'; '.join(evaluator.notes)}")
    periodic = PeriodicEvaluation(trainer, evaluator, config.loop.model_dir, config.runtime.seed)
    print(periodic.floor_line(), flush=True)
    return periodic


def _check_same_checkpoint(strategy, path: str | None) -> None:
    """Every worker must restore the same checkpoint (a --model_dir that is not really
    shared would otherwise train different weights, or hang). All workers take part
    and all reach the same verdict, so a mismatch stops every one of them."""
    if distribute.num_workers(strategy) <= 1:
        return
    number = float(path.rsplit("-", 1)[1]) if path else -1.0

    @tf.function
    def moments():
        values = strategy.run(lambda: tf.constant([number, number * number], tf.float64))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, values, axis=None)

    mean, mean_square = moments().numpy()
    if mean_square - mean * mean > 0.25:
        raise ConfigError(
            f"the workers found different checkpoints (this one: {path}); every worker must "
            "see the same --model_dir (a shared file system such as NFS or GCS)"
        )


def _real_grid(source: data.ImageSource) -> np.ndarray:
    if source.images is not None:
        real = source.images[:NUM_GRID_SAMPLES]
    else:
        real = np.stack(
            [
                data.decode_image_file(path, source.image_size, source.channels).numpy()
                for path in source.files[:NUM_GRID_SAMPLES]
            ]
        )
    return images.make_grid(real)


class _Profiler:
    """A TensorBoard profiler trace of the steps in [start, end), whole loops at a time."""

    def __init__(self, steps: tuple[int, ...], logdir: str, enabled: bool):
        self.start, self.end = steps if steps else (None, None)
        self.logdir = logdir
        self.enabled = enabled and bool(steps)
        self.running = False

    def before(self, step: int) -> None:
        if self.enabled and not self.running and self.start <= step < self.end:
            tf.profiler.experimental.start(self.logdir)
            self.running = True

    def after(self, step: int, final: bool = False) -> None:
        if self.running and (step >= self.end or final):
            tf.profiler.experimental.stop()
            self.running = False
            print(f"Profiler trace of steps up to {step} in {self.logdir}/plugins/profile")


class _Window:
    """Measurements averaged over the steps since the last summary (the finite ones:
    with --nan_policy=skip_step a loop's measurement may be NaN)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, metrics: dict[str, float], steps: int) -> None:
        for name, value in metrics.items():
            if math.isfinite(value):
                self.sums[name] = self.sums.get(name, 0.0) + value * steps
                self.counts[name] = self.counts.get(name, 0) + steps
        self.steps += steps

    def means(self) -> dict[str, float]:
        return {name: total / self.counts[name] for name, total in self.sums.items()}


def run(config: Config, build_models: ModelBuilder | None = None) -> dict[str, float]:
    """Trains to config.loop.train_steps, resuming from --model_dir if it holds a run.

    build_models(config) -> (generator, discriminator, ema_generator) replaces the
    built-in DCGAN; it is called inside the strategy scope. Returns the measurements
    of the last loop (empty if there was nothing to train).
    """
    config.validate()
    # The strategy first: splitting the CPU must precede any TensorFlow op.
    strategy = setup_runtime(config)
    source = data.load_source(config.data)
    config = resolve(config, source)
    recorded = config  # What config.json says: models from Python are marked as such.
    if build_models is not None:
        recorded = config.replace(model=dict(models=models.python_models_marker(build_models)))
    check_model_dir(recorded)
    if distribute.is_chief(strategy):  # Only the chief writes into --model_dir.
        check_writable(config.loop.model_dir)
    trainer, checkpoints, restored = _build(config, strategy, build_models)
    chief = checkpoints.chief
    evaluation = _periodic_evaluation(config, trainer) if chief else None
    # Everything the user typed has been checked: only now touch --model_dir.
    if chief:
        _write_config(recorded)
    loop = config.loop
    step = int(trainer.step.numpy())
    if restored:
        print(f"Resumed from {restored} at step {step}.", flush=True)
    noise = sample_noise(config.runtime.seed, NUM_GRID_SAMPLES, config.model.z_dim)
    samples_path = os.path.join(loop.model_dir, SAMPLES_FILE)
    if step >= loop.train_steps:
        print(f"Already at step {step} >= --train_steps={loop.train_steps}; nothing to do.")
        if chief:
            images.write_png(samples_path, images.upscale(_sample_grid(trainer, noise)))
        return {}

    input_fn = data.make_input_fn(
        source, loop.batch_size, config.optimizer.d_steps, config.runtime.seed, start_step=step
    )
    iterator = iter(strategy.distribute_datasets_from_function(input_fn))
    summaries = Summaries(loop.model_dir, enabled=chief)
    statistics = StatisticsStep(trainer, loop.stats_layers)
    # A fixed real batch (its own stream) for the statistics: curves compare like with like.
    stats_input = data.make_input_fn(source, loop.batch_size, 1, config.runtime.seed + 1, 0)
    stats_batch = next(iter(strategy.distribute_datasets_from_function(stats_input)))
    if step == 0 and chief:
        summaries.image(0, "samples/real", _real_grid(source))
    images_per_step = loop.batch_size * config.optimizer.d_steps
    progress = Progress(loop.train_steps, images_per_step, step)
    print(
        f"Training {config.data.dataset} {config.data.image_size}x{config.data.image_size}x"
        f"{config.data.channels} on {strategy.num_replicas_in_sync} replica(s), "
        f"batch {loop.batch_size}, steps {step} -> {loop.train_steps}; "
        f"feature matching on {', '.join(trainer.fm_layers) or 'no layers'}; "
        f"logs in {loop.model_dir}",
        flush=True,
    )
    started = time.perf_counter()
    window = _Window()
    metrics: dict[str, float] = {}
    profiler = _Profiler(loop.profile_steps, loop.model_dir, enabled=chief)
    saved_step = step  # Restored from (or nothing to lose yet).
    with PreemptionWatch(strategy) as preemption, _worker_loss(strategy, checkpoints):
        while step < loop.train_steps:
            count = min(loop.steps_per_loop - step % loop.steps_per_loop, loop.train_steps - step)
            profiler.before(step)
            metrics = trainer.train(iterator, count)
            profiler.after(step + count)
            first, step = step + 1, step + count
            diverged = _divergence(trainer, first, step, checkpoints.last_saved)
            if diverged and loop.nan_policy == "stop":
                raise TrainingDiverged(diverged)
            progress.update(step)
            window.add(metrics, count)
            last = step == loop.train_steps
            summary_due = step % loop.summary_every == 0 or last
            if summary_due:
                seconds = time.perf_counter() - window.started
                speed = window.steps * images_per_step / max(seconds, 1e-9)
                seconds_per_step = seconds / max(window.steps, 1)
                summaries.scalars(
                    step,
                    {
                        **window.means(),
                        **constants(trainer),
                        **_skipped_counts(trainer),
                        "perf/images_per_second": speed,
                        "perf/steps_per_second": 1.0 / max(seconds_per_step, 1e-9),
                        "perf/seconds_per_step": seconds_per_step,
                    },
                )
                summaries.values(step, statistics.run(stats_batch))  # Every worker takes part.
                if chief:
                    grid = _sample_grid(trainer, noise)
                    summaries.image(step, "samples/ema", grid)
                    _write_samples(samples_path, grid, checkpoints.last_saved)
                window.reset()
            if summary_due or progress.due(PRINT_EVERY_SECONDS) or diverged:
                line = progress.line(step, metrics)
                if diverged:  # --nan_policy=skip_step: say so at once.
                    line += f"  skipped D/G updates so far: {'/'.join(map(str, skipped(trainer)))}"
                print(line, flush=True)
            eval_due = loop.eval_every > 0 and (step % loop.eval_every == 0 or last)
            if step % loop.checkpoint_every == 0 or last or eval_due:
                _save_checked(checkpoints, trainer, step)  # Every worker: collective.
                saved_step = step
            if eval_due and evaluation is not None:
                values = evaluation.run(step, checkpoints.last_saved)
                summaries.scalars(step, values)
                print(evaluation.line(step, values), flush=True)
            if not last and preemption.requested():  # Collective on clusters.
                if saved_step != step:
                    _save_checked(checkpoints, trainer, step)
                where = checkpoints.latest if chief else "the chief's --model_dir"
                profiler.after(step, final=True)
                summaries.close()
                raise Preempted(
                    f"SIGTERM: stopped at step {step} with a checkpoint ({where}); run the "
                    "same command again to resume there"
                )
    profiler.after(step, final=True)
    summaries.close()
    where = (
        f"samples in {samples_path}, checkpoint {checkpoints.latest}"
        if chief
        else (f"worker {distribute.task_id(strategy)}: the chief writes samples and checkpoints")
    )
    print(
        f"Done: step {step} in {time.perf_counter() - started:.0f}s; {where}; "
        f"weights checksum {weights_checksum(trainer):.9g}",
        flush=True,
    )
    return metrics


@contextlib.contextmanager
def _worker_loss(strategy, checkpoints: checkpointing.Checkpointer):
    """A dead peer makes collectives fail after ~10 s of missed heartbeats: turn that
    into one line that says to relaunch (every worker, same command)."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as e:
        if distribute.num_workers(strategy) <= 1:
            raise
        lines = [line.strip() for line in str(e.message).splitlines() if line.strip()]
        unhealthy = [line for line in lines if "/job:" in line and "unhealthy" not in line]
        cause = f"unhealthy: {unhealthy[0]}" if unhealthy else (lines or [""])[0][:120]
        resume = checkpoints.last_saved or "the start (no checkpoint yet)"
        raise WorkerLost(
            f"another worker of this job stopped responding ({type(e).__name__}: {cause}); "
            f"relaunch every worker with the same command to resume from {resume}"
        ) from None


def skipped(trainer: Trainer) -> tuple[int, int]:
    """D and G updates skipped over the whole run (NaN/Inf, or float16 overflow)."""
    return tuple(int(x) for x in trainer.skipped_updates.numpy().tolist())


def _skipped_counts(trainer: Trainer) -> dict[str, float]:
    d, g = skipped(trainer)
    return {"nan/skipped_d_updates": float(d), "nan/skipped_g_updates": float(g)}


def weights_checksum(trainer: Trainer) -> float:
    """Sum of |w| over both networks: equal on every worker of a correct job."""
    weights = trainer.generator.weights + trainer.discriminator.weights
    return float(sum(np.abs(np.asarray(w.numpy(), np.float64)).sum() for w in weights))
