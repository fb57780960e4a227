"""Writes samples of a run's EMA generator.

    python -m ganfm.sample --model_dir=DIR --num=64 --output=samples.png [--seed=S]

.npy: uint8 [N, H, W, C]; .png: one grid. The same checkpoint and seed give the same
samples (the noise is a stateless function of the seed).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

from ganfm.cli import fail, parse_flags_or_exit, require_run, user_errors
from ganfm.errors import ConfigError

FLAGS = flags.FLAGS
OUTPUT_KINDS = (".png", ".npy")


def _define_flags() -> None:
    """Only when run as a program, so importing generate() defines no flags."""
    flags.DEFINE_string("model_dir", None, "A training run's --model_dir.")
    flags.DEFINE_integer("num", 64, "How many samples.")
    flags.DEFINE_string("output", "samples.png", "Output: .png (a grid) or .npy (uint8 NHWC).")
    flags.DEFINE_integer("seed", 0, "Noise seed.")
    flags.DEFINE_integer("batch", 256, "Images generated per call.")
    flags.DEFINE_string("checkpoint", "latest", "latest, best (kept by --eval_every) or a path.")


def generate(
    model_dir: str,
    num: int,
    seed: int,
    batch: int = 256,
    generator=None,
    checkpoint: str = "latest",
) -> np.ndarray:
    """uint8 [num, H, W, C] samples of a checkpoint's EMA generator (the newest by default).

    Pass `generator` (a fresh instance of the run's generator) for runs whose models
    came from Python rather than the built-in DCGAN or a --models file.
    """
    from ganfm import checkpointing, models, train_lib

    config = train_lib.load_config(model_dir)
    if generator is None:
        generator = models.build_generator(config)
    checkpointing.restore_ema_generator(model_dir, generator, checkpoint)
    return generate_with(generator, num, seed, batch)


def generate_with(generator, num: int, seed: int, batch: int = 256) -> np.ndarray:
    """uint8 samples of a generator for the noise of `seed` (the same as sample_noise's)."""
    from ganfm import data
    from ganfm.trainer import sample_noise

    noise = sample_noise(seed, num, generator.input_shape[-1])
    chunks = [
        data.to_uint8(generator(noise[i : i + batch], training=False)).numpy()
        for i in range(0, num, batch)
    ]
    return np.concatenate(chunks)


def write(samples: np.ndarray, output: str) -> None:
    from ganfm import images

    if output.endswith(".npy"):
        import io

        buffer = io.BytesIO()
        np.save(buffer, samples)
        images.atomic_write_bytes(output, buffer.getvalue())
    else:
        images.write_png(output, images.upscale(images.make_grid(samples)))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    with user_errors():
        if FLAGS.num <= 0 or FLAGS.batch <= 0:
            raise ConfigError(f"--num={FLAGS.num} and --batch={FLAGS.batch} must be > 0")
        if not FLAGS.output.endswith(OUTPUT_KINDS):
            raise ConfigError(f"--output={FLAGS.output!r} must end with .png or .npy")
        parent = os.path.dirname(os.path.abspath(FLAGS.output))
        if "://" not in FLAGS.output and not os.path.isdir(parent):
            raise ConfigError(f"--output={FLAGS.output!r}: folder {parent} does not exist")
        require_run(FLAGS.model_dir)
        samples = generate(
            FLAGS.model_dir, FLAGS.num, FLAGS.seed, FLAGS.batch, checkpoint=FLAGS.checkpoint
        )
        write(samples, FLAGS.output)
    print(f"Wrote {len(samples)} samples to {FLAGS.output}")


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
    sys.exit(0)
