"""Benchmark: what TensorBoard statistics cost, measured side by side in one process.

    python -m ganfm.bench_stats [--steps=2000] [--summary_every=100] [--rounds=5]

Trains the default model on digits in rounds; in each round the same number of steps
runs once with the full summary work every --summary_every steps (statistics step,
event writing, sample grid) and once with none, alternating so machine noise hits
both alike. Prints images/s of each and their ratio (target: >= 0.97).
"""

from __future__ import annotations

import os
import statistics as pystats
import sys
import tempfile
import time

from absl import app, flags

from ganfm.cli import parse_flags_or_exit

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_integer("steps", 2000, "Training steps per measurement.")
    flags.DEFINE_integer("summary_every", 100, "Summary interval of the measured arm.")
    flags.DEFINE_integer("rounds", 5, "Alternating rounds (median reported).")
    flags.DEFINE_integer("batch_size", 64, "Global batch.")


def measure(steps: int, summary_every: int, rounds: int, batch_size: int) -> dict:
    from ganfm import data, images, models, train_lib
    from ganfm.config import Config
    from ganfm.statistics_step import StatisticsStep
    from ganfm.summaries import Summaries
    from ganfm.trainer import Trainer, sample_noise

    config = Config().replace(
        loop=dict(batch_size=batch_size, steps_per_loop=summary_every, summary_every=summary_every)
    )
    source = data.load_source(config.data)
    config = train_lib.resolve(config, source)
    strategy = train_lib.setup_runtime(config)
    with strategy.scope():
        trainer = Trainer(config, *models.build_models(config), strategy=strategy)
    input_fn = data.make_input_fn(source, batch_size, 1, 0, 0)
    iterator = iter(strategy.distribute_datasets_from_function(input_fn))
    statistics = StatisticsStep(trainer, ())
    stats_batch = next(iter(strategy.distribute_datasets_from_function(input_fn)))
    logdir = tempfile.mkdtemp(prefix="ganfm-bench-")
    summaries = Summaries(logdir)
    noise = sample_noise(0, 64, config.model.z_dim)

    def arm(with_summaries: bool) -> float:
        started = time.perf_counter()
        for done in range(summary_every, steps + 1, summary_every):
            trainer.train(iterator, summary_every)
            if with_summaries:
                summaries.values(done, statistics.run(stats_batch))
                grid = images.make_grid(data.to_uint8(trainer.generate(noise)).numpy())
                summaries.image(done, "samples/ema", grid)
                images.write_png(os.path.join(logdir, "samples.png"), images.upscale(grid))
        return steps * batch_size / (time.perf_counter() - started)

    arm(True)  # Warm-up: tracing of both functions.
    with_stats, without = [], []
    for _ in range(rounds):
        with_stats.append(arm(True))
        without.append(arm(False))
    summaries.close()
    ratio = pystats.median(w / o for w, o in zip(with_stats, without, strict=True))
    return {
        "with_statistics": pystats.median(with_stats),
        "without": pystats.median(without),
        "ratio": ratio,
    }


def main(argv: list[str]) -> None:
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = measure(FLAGS.steps, FLAGS.summary_every, FLAGS.rounds, FLAGS.batch_size)
    print(
        f"statistics every {FLAGS.summary_every} steps: {result['with_statistics']:.0f} img/s; "
        f"none: {result['without']:.0f} img/s; ratio {result['ratio']:.3f} "
        f"(median of {FLAGS.rounds} alternating rounds of {FLAGS.steps} steps)"
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
    sys.exit(0)
