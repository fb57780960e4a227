"""Benchmark: ganfm's train step against the loops users would write, side by side.

    python -m ganfm.bench [--image_size=28] [--batch_size=256] [--steps=20] [--rounds=3]
    python -m ganfm.bench --quick          # a few steps of every section (CI)

Sections (--sections, default all but replicas):
  core        (a) the TF DCGAN tutorial loop, no feature matching; (b) feature matching
              through separate intermediate-output models; (c) ganfm's train step with
              feature matching on the same layers, default settings. Images/s, c/a,
              c/b, and (c)'s FLOP/s against the measured matmul peak.
  loop        --steps_per_loop 1 against 20, on this model and on a tiny one.
  strategy    --strategy=mirrored on one device against the default strategy.
  statistics  the cost of the TensorBoard statistics at --summary_every=100.
  precision   fp32, mixed_bfloat16, mixed_float16.
  jit         --jit_compile off and on.
  input       each data source alone, against what training consumes.
  scaling     image sizes 32, 64, 128 and batches 64, 256 (each in its own process,
              for its peak memory).
  replicas    --strategy=mirrored over 1..N GPUs (or --cpu_replicas logical CPUs):
              images/s per replica and scaling efficiency.

Arms of a section alternate within each of --rounds rounds, so machine noise hits them
alike; figures are medians over rounds, ratios medians of per-round ratios. Every arm
trains from the same constant batch (the input pipeline is measured on its own).
"""

from __future__ import annotations

import json
import os
import resource
import statistics as pystats
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from ganfm.cli import parse_flags_or_exit

FLAGS = flags.FLAGS
SECTIONS = (
    "core",
    "loop",
    "strategy",
    "statistics",
    "precision",
    "jit",
    "input",
    "scaling",
    "replicas",
)
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s != "replicas")


def _define_flags() -> None:
    flags.DEFINE_integer("image_size", 28, "Image size of the benchmarked model.")
    flags.DEFINE_integer("batch_size", 256, "Global batch.")
    flags.DEFINE_integer("steps", 20, "Training steps per arm per round (a multiple of 20).")
    flags.DEFINE_integer("rounds", 3, "Alternating rounds; medians are reported.")
    flags.DEFINE_list("fm_layers", ["block1_act", "features"], "Tapped layers of (b) and (c).")
    flags.DEFINE_list("sections", list(DEFAULT_SECTIONS), f"Any of {', '.join(SECTIONS)}.")
    flags.DEFINE_list("scaling_sizes", ["32", "64", "128"], "Image sizes of 'scaling'.")
    flags.DEFINE_list("scaling_batches", ["64", "256"], "Batches of 'scaling'.")
    flags.DEFINE_integer("scaling_steps", 4, "Steps per configuration of 'scaling'.")
    flags.DEFINE_integer("cpu_replicas", 0, "'replicas' without GPUs: split the CPU into N.")
    flags.DEFINE_string(
        "fashion_mnist_dir", "/usr/share/datasets/fashion-mnist", "Fashion-MNIST for 'input'."
    )
    flags.DEFINE_bool("quick", False, "A few steps of every section at a tiny size (CI).")
    flags.DEFINE_string("json", "", "Also write every figure to this JSON file.")


# -- building blocks ----------------------------------------------------------------


def base_config(image_size: int, batch: int, fm_layers, **runtime):
    from ganfm.config import Config

    return Config().replace(
        data=dict(dataset="synthetic", image_size=image_size, channels=1),
        loss=dict(fm_layers=tuple(fm_layers)),
        loop=dict(batch_size=batch, steps_per_loop=20, summary_every=100, checkpoint_every=100),
        runtime=runtime,
    )


def constant_batch(config):
    import tensorflow as tf

    size, batch = config.data.image_size, config.loop.batch_size
    return tf.random.stateless_uniform([batch, size, size, 1], [0, 1], minval=-1.0, maxval=1.0)


class TrainerArm:
    """ganfm's Trainer on a constant batch; `run(steps)` in loops of steps_per_loop."""

    def __init__(self, config, real=None, strategy=None):
        import tensorflow as tf

        from ganfm import models, train_lib
        from ganfm.trainer import Trainer

        self.config = config
        # setup_runtime also sets the precision policy; 'replicas' brings its own strategy.
        self.strategy = strategy or train_lib.setup_runtime(config)
        with self.strategy.scope():
            self.trainer = Trainer(config, *models.build_models(config), strategy=self.strategy)
        self.real = real = constant_batch(config) if real is None else real

        def input_fn(ctx):
            local = config.loop.batch_size // ctx.num_replicas_in_sync
            return tf.data.Dataset.from_tensors(real[None, :local]).repeat()

        self.iterator = iter(self.strategy.distribute_datasets_from_function(input_fn))
        self.steps_per_loop = config.loop.steps_per_loop
        self.run(self.steps_per_loop)  # Trace and warm up.

    def run(self, steps: int) -> None:
        for _ in range(max(1, steps // self.steps_per_loop)):
            self.trainer.train(self.iterator, self.steps_per_loop)


class ReferenceArm:
    """One of bench_reference's loops: a Python loop over batches, as in the tutorial."""

    def __init__(self, config, real, kind: str):
        import keras
        import tensorflow as tf

        from ganfm import bench_reference, models

        keras.mixed_precision.set_global_policy("float32")
        generator, discriminator, _ = models.build_models(config)
        z = config.model.z_dim
        if kind == "tutorial":
            self.step = bench_reference.tutorial_step(generator, discriminator, z)
        else:
            layers = config.loss.fm_layers
            self.step = bench_reference.separate_models_step(generator, discriminator, z, layers)
        self.iterator = iter(tf.data.Dataset.from_tensors(real).repeat())
        self.run(1)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            losses = self.step(next(self.iterator))
        losses[0].numpy()  # Wait for the last step.


def race(arms: dict, steps: int, rounds: int, batch: int) -> tuple[dict, dict]:
    """({arm: images/s (median)}, {arm: [seconds per round]}), arms alternating within rounds."""
    seconds = {name: [] for name in arms}
    for _ in range(rounds):
        for name, arm in arms.items():
            started = time.perf_counter()
            arm.run(steps)
            seconds[name].append(time.perf_counter() - started)
    return {
        name: pystats.median(steps * batch / t for t in ts) for name, ts in seconds.items()
    }, seconds


def ratio(seconds: dict, numerator: str, denominator: str) -> float:
    """Speed ratio numerator/denominator: the median of per-round ratios."""
    pairs = zip(seconds[numerator], seconds[denominator], strict=True)
    return pystats.median(d / n for n, d in pairs)


def peak_memory_mib() -> float:
    """This process's peak resident memory. VmHWM, because ru_maxrss survives exec and
    would report the parent's peak in a child."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _line(text: str) -> None:
    print(text, flush=True)


# -- sections -------------------------------------------------------------------------


def section_core(opts, results: dict) -> None:
    import tensorflow as tf

    from ganfm import flops

    config = base_config(opts.image_size, opts.batch_size, opts.fm_layers)
    real = constant_batch(config)
    arms = {
        "a_tutorial": ReferenceArm(config, real, "tutorial"),
        "b_separate_models": ReferenceArm(config, real, "separate"),
        "c_ganfm": TrainerArm(config, real),
        "c_simultaneous": TrainerArm(config.replace(optimizer=dict(update="simultaneous")), real),
    }
    speed, seconds = race(arms, opts.steps, opts.rounds, opts.batch_size)
    trainer = arms["c_ganfm"].trainer
    spec = tf.TensorSpec([1, *real.shape], tf.float32)
    step_flops = flops.graph_flops(tf.function(trainer._replica_step).get_concrete_function(spec))
    tutorial_flops = flops.graph_flops(
        arms["a_tutorial"].step.get_concrete_function(tf.TensorSpec(real.shape, tf.float32))
    )
    peak = flops.matmul_peak()
    per_image = step_flops / opts.batch_size
    achieved = per_image * speed["c_ganfm"]
    results["core"] = dict(
        images_per_second=speed,
        c_over_a=ratio(seconds, "c_ganfm", "a_tutorial"),
        c_over_b=ratio(seconds, "c_ganfm", "b_separate_models"),
        simultaneous_over_a=ratio(seconds, "c_simultaneous", "a_tutorial"),
        simultaneous_over_b=ratio(seconds, "c_simultaneous", "b_separate_models"),
        flops_per_image_c=per_image,
        flops_per_image_a=tutorial_flops / opts.batch_size,
        achieved_flops=achieved,
        matmul_peak_flops=peak,
        fraction_of_peak=achieved / peak,
    )
    r = results["core"]
    _line(
        f"core ({opts.image_size}x{opts.image_size}, batch {opts.batch_size}, fm on "
        f"{','.join(opts.fm_layers)}):"
    )
    for name, value in speed.items():
        _line(f"  {name:<20} {value:8.0f} img/s")
    _line(f"  c/a {r['c_over_a']:.3f} (target >= 0.9)   c/b {r['c_over_b']:.3f} (target >= 1.25)")
    _line(
        f"  with --update=simultaneous (the tutorial's scheme): c/a {r['simultaneous_over_a']:.3f}"
        f"   c/b {r['simultaneous_over_b']:.3f}"
    )
    _line(
        f"  FLOPs per image: c {per_image / 1e6:.1f} M, a {r['flops_per_image_a'] / 1e6:.1f} M "
        f"(registered op counts over the ops that run in one traced step); c achieves "
        f"{achieved / 1e9:.2f} GFLOP/s = {r['fraction_of_peak']:.1%} of the measured "
        f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )


def _trainer_race(opts, configs: dict, batch=None) -> tuple[dict, dict]:
    batch = batch or opts.batch_size
    arms = {name: TrainerArm(config) for name, config in configs.items()}
    return race(arms, opts.steps, opts.rounds, batch)


def section_loop(opts, results: dict) -> None:
    sizes = {"model": (opts.image_size, opts.batch_size, 32), "tiny": (8, 16, 8)}
    results["loop"] = {}
    for label, (size, batch, filters) in sizes.items():
        configs = {}
        for spl in (1, 20):
            config = base_config(size, batch, opts.fm_layers)
            configs[f"steps_per_loop={spl}"] = config.replace(
                model=dict(g_filters=filters, d_filters=filters),
                loop=dict(steps_per_loop=spl),
            )
        speed, seconds = _trainer_race(opts, configs, batch=batch)
        r = ratio(seconds, "steps_per_loop=20", "steps_per_loop=1")
        results["loop"][label] = dict(images_per_second=speed, ratio_20_over_1=r)
        _line(
            f"loop, {label} ({size}x{size}, batch {batch}, filters {filters}): "
            + "  ".join(f"{k} {v:.0f} img/s" for k, v in speed.items())
            + f"   20/1 = {r:.3f} (target >= 1; > 1 for tiny)"
        )


def section_strategy(opts, results: dict) -> None:
    base = base_config(opts.image_size, opts.batch_size, opts.fm_layers)
    configs = {"default": base, "mirrored_1": base.replace(runtime=dict(strategy="mirrored"))}
    speed, seconds = _trainer_race(opts, configs)
    r = ratio(seconds, "mirrored_1", "default")
    results["strategy"] = dict(images_per_second=speed, mirrored_over_default=r)
    _line(
        f"strategy: default {speed['default']:.0f} img/s, mirrored (1 replica) "
        f"{speed['mirrored_1']:.0f} img/s, ratio {r:.3f} (target >= 0.95)"
    )


def section_statistics(opts, results: dict) -> None:
    """Per-summary cost (statistics step, event writes, sample grid) against the cost
    of the 100 training steps between summaries, measured alternately."""
    from ganfm import data, images
    from ganfm.statistics_step import StatisticsStep
    from ganfm.summaries import Summaries
    from ganfm.trainer import sample_noise

    config = base_config(opts.image_size, opts.batch_size, opts.fm_layers)
    arm = TrainerArm(config)
    trainer = arm.trainer
    statistics = StatisticsStep(trainer, ())
    batch = next(arm.iterator)
    logdir = tempfile.mkdtemp(prefix="ganfm-bench-")
    summaries = Summaries(logdir)
    noise = sample_noise(0, 64, config.model.z_dim)
    every = 100

    def summary(step):
        summaries.values(step, statistics.run(batch))
        grid = images.make_grid(data.to_uint8(trainer.generate(noise)).numpy())
        summaries.image(step, "samples/ema", grid)
        summaries.flush()

    summary(0)  # Trace.
    step_seconds, summary_seconds = [], []
    for r in range(opts.rounds):
        started = time.perf_counter()
        arm.run(opts.steps)
        step_seconds.append((time.perf_counter() - started) / opts.steps)
        started = time.perf_counter()
        summary(r + 1)
        summary_seconds.append(time.perf_counter() - started)
    summaries.close()
    cost = pystats.median(
        s / (every * t) for s, t in zip(summary_seconds, step_seconds, strict=True)
    )
    results["statistics"] = dict(
        seconds_per_summary=pystats.median(summary_seconds),
        seconds_per_step=pystats.median(step_seconds),
        cost_at_summary_every_100=cost,
    )
    _line(
        f"statistics: {pystats.median(summary_seconds) * 1e3:.0f} ms per summary against "
        f"{pystats.median(step_seconds) * 1e3:.0f} ms per step: {cost:.2%} of training time "
        "at --summary_every=100 (target <= 3%)"
    )


def section_precision(opts, results: dict) -> None:
    from ganfm.config import PRECISIONS

    base = base_config(opts.image_size, opts.batch_size, opts.fm_layers)
    configs = {p: base.replace(runtime=dict(precision=p)) for p in PRECISIONS}
    speed, seconds = _trainer_race(opts, configs)
    rel = {p: ratio(seconds, p, "fp32") for p in PRECISIONS}
    results["precision"] = dict(images_per_second=speed, relative_to_fp32=rel)
    _line(
        "precision: "
        + "  ".join(f"{p} {speed[p]:.0f} img/s ({rel[p]:.2f}x)" for p in PRECISIONS)
        + " (CPUs have no fast float16 kernels; bfloat16 is fast on CPUs with AVX512_BF16"
        " or AMX, and on GPUs and TPUs)"
    )


def section_jit(opts, results: dict) -> None:
    base = base_config(opts.image_size, opts.batch_size, opts.fm_layers)
    configs = {"off": base, "jit_compile": base.replace(runtime=dict(jit_compile=True))}
    speed, seconds = _trainer_race(opts, configs)
    r = ratio(seconds, "jit_compile", "off")
    results["jit"] = dict(images_per_second=speed, jit_over_off=r)
    _line(
        f"jit: off {speed['off']:.0f} img/s, --jit_compile {speed['jit_compile']:.0f} img/s, "
        f"ratio {r:.3f} (off by default except on TPUs, which compile everything)"
    )


def _folder_of_pngs(size: int, count: int) -> str:
    import numpy as np

    from ganfm import images

    root = tempfile.mkdtemp(prefix="ganfm-bench-folder-")
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 1), dtype=np.uint8)
        images.write_png(os.path.join(root, f"{i:05d}.png"), pixels)
    return root


def section_input(opts, results: dict) -> None:
    import tensorflow as tf

    from ganfm import data
    from ganfm.config import DataConfig

    size, batch = opts.image_size, opts.batch_size
    consumed = results.get("core", {}).get("images_per_second", {}).get("c_ganfm")
    if consumed is None:
        arm = TrainerArm(base_config(size, batch, opts.fm_layers))
        started = time.perf_counter()
        arm.run(opts.steps)
        consumed = opts.steps * batch / (time.perf_counter() - started)
    sources = {
        "digits": DataConfig(dataset="digits", image_size=size),
        "synthetic": DataConfig(dataset="synthetic", image_size=size, channels=1),
        "folder": DataConfig(
            dataset=f"folder:{_folder_of_pngs(size, 2 * batch)}", image_size=size, channels=1
        ),
    }
    if os.path.exists(opts.fashion_mnist_dir):
        sources["fashion_mnist"] = DataConfig(
            dataset="fashion_mnist", data_dir=opts.fashion_mnist_dir, image_size=size
        )
    strategy = tf.distribute.get_strategy()
    speeds = {}
    batches = max(5, opts.steps * 2)
    for name, config in sources.items():
        source = data.load_source(config)
        input_fn = data.make_input_fn(source, batch, 1, 0, 0)
        iterator = iter(strategy.distribute_datasets_from_function(input_fn))
        next(iterator)
        started = time.perf_counter()
        for _ in range(batches):
            element = next(iterator)
        element.numpy()
        speeds[name] = batches * batch / (time.perf_counter() - started)
    results["input"] = dict(
        images_per_second=speeds,
        training_consumes=consumed,
        headroom={k: v / consumed for k, v in speeds.items()},
    )
    _line(
        f"input ({size}x{size}, batch {batch}; training consumes {consumed:.0f} img/s): "
        + "  ".join(f"{k} {v:.0f} img/s ({v / consumed:.1f}x)" for k, v in speeds.items())
        + " (target >= 2x)"
    )


def section_scaling(opts, results: dict) -> None:
    """One process per configuration: its peak memory is its own."""
    rows = []
    for size in map(int, opts.scaling_sizes):
        for batch in map(int, opts.scaling_batches):
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [
                    sys.executable,
                    "-m",
                    "ganfm.bench",
                    "--sections=train",
                    f"--image_size={size}",
                    f"--batch_size={batch}",
                    f"--steps={opts.steps}",
                    "--rounds=1",
                    f"--fm_layers={','.join(opts.fm_layers)}",
                    f"--json={out.name}",
                ]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                with open(out.name) as f:
                    row = json.load(f)["train"]
            rows.append(dict(image_size=size, batch_size=batch, **row))
            _line(
                f"scaling: {size:>3}x{size:<3} batch {batch:>3}: {row['images_per_second']:8.1f} "
                f"img/s, {row['flops_per_image'] / 1e9:.3f} GFLOPs/image, peak memory "
                f"{row['peak_memory_mib']:.0f} MiB"
            )
    results["scaling"] = rows


def section_train(opts, results: dict) -> None:
    """Arm (c) alone (scaling runs it in a subprocess)."""
    import tensorflow as tf

    from ganfm import flops

    config = base_config(opts.image_size, opts.batch_size, opts.fm_layers)
    arm = TrainerArm(config.replace(loop=dict(steps_per_loop=opts.steps)))
    started = time.perf_counter()
    arm.run(opts.steps)
    speed = opts.steps * opts.batch_size / (time.perf_counter() - started)
    spec = tf.TensorSpec([1, *arm.real.shape], tf.float32)
    step = tf.function(arm.trainer._replica_step).get_concrete_function(spec)
    results["train"] = dict(
        images_per_second=speed,
        flops_per_image=flops.graph_flops(step) / opts.batch_size,
        peak_memory_mib=peak_memory_mib(),
    )


def section_replicas(opts, results: dict) -> None:
    import tensorflow as tf

    from ganfm import distribute

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        devices = [f"/gpu:{i}" for i in range(len(gpus))]
    elif opts.cpu_replicas > 1:
        devices = distribute.split_cpu(opts.cpu_replicas)
    else:
        _line("replicas: no GPUs; pass --cpu_replicas=N to exercise it on logical CPUs")
        return
    base = base_config(opts.image_size, opts.batch_size, opts.fm_layers)
    rows = []
    single = None
    for n in sorted({1, *[2**k for k in range(1, 8) if 2**k <= len(devices)], len(devices)}):
        batch = opts.batch_size * n  # Weak scaling: the per-replica batch is fixed.
        strategy = distribute._mirrored(devices[:n])
        config = base.replace(loop=dict(batch_size=batch))
        arm = TrainerArm(config, strategy=strategy)
        started = time.perf_counter()
        arm.run(opts.steps)
        speed = opts.steps * batch / (time.perf_counter() - started)
        single = single or speed
        rows.append(
            dict(
                replicas=n,
                images_per_second=speed,
                per_replica=speed / n,
                efficiency=speed / (n * single),
            )
        )
        _line(
            f"replicas: {n} x {'GPU' if gpus else 'logical CPU'} (batch {opts.batch_size} each): "
            f"{speed:.0f} img/s, {speed / n:.0f} per replica, scaling efficiency "
            f"{speed / (n * single):.2f}"
        )
    results["replicas"] = rows


RUNNERS = {
    "core": section_core,
    "loop": section_loop,
    "strategy": section_strategy,
    "statistics": section_statistics,
    "precision": section_precision,
    "jit": section_jit,
    "input": section_input,
    "scaling": section_scaling,
    "replicas": section_replicas,
    "train": section_train,
}


def main(argv: list[str]) -> None:
    del argv
    import tensorflow as tf

    from ganfm.cli import fail

    tf.get_logger().setLevel("ERROR")  # Retracing notes for each arm's fresh Trainer.
    opts = FLAGS
    if opts.quick:
        opts.image_size, opts.batch_size, opts.steps, opts.rounds = 8, 16, 20, 1
        opts.scaling_sizes, opts.scaling_batches = ["8", "16"], ["8"]
    unknown = [s for s in opts.sections if s not in RUNNERS]
    if unknown:
        fail(f"--sections: unknown {', '.join(unknown)}; use any of {', '.join(SECTIONS)}")
    if opts.steps <= 0 or (opts.steps % 20 and opts.sections != ["train"]):
        fail(f"--steps={opts.steps} must be a positive multiple of 20 (the loop section's 20)")
    if opts.cpu_replicas > 1:
        from ganfm import distribute

        distribute.split_cpu(opts.cpu_replicas)
    results = {}
    started = time.perf_counter()
    for name in opts.sections:
        RUNNERS[name](opts, results)
    if opts.sections != ["train"]:
        _line(
            f"peak memory of this process {peak_memory_mib():.0f} MiB; "
            f"{time.perf_counter() - started:.0f} s in all"
        )
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
