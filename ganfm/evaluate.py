"""Scores a run's EMA generator: FD, KID, precision/recall and class coverage.

    python -m ganfm.evaluate --model_dir=DIR [--num_samples=10000] [--checkpoint=best]

Prints a table of the generated images' figures beside the held-out real images'
(the floor), and writes them as JSON beside the checkpoint (ckpt-N.eval.json).
See ganfm.evaluation for the protocol. Works offline for digits, mnist and
fashion_mnist; Inception-v3 figures are added when its weights are available.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from ganfm.cli import fail, parse_flags_or_exit, require_run, user_errors
from ganfm.errors import ConfigError

FLAGS = flags.FLAGS
EVAL_SUFFIX = ".eval.json"


def _define_flags() -> None:
    from ganfm.classifier import default_cache_dir

    flags.DEFINE_string("model_dir", None, "A training run's --model_dir.")
    flags.DEFINE_integer("num_samples", 10000, "Generated (and at most reference) images.")
    flags.DEFINE_integer("seed", 0, "Noise seed of the generated images.")
    flags.DEFINE_integer("batch", 500, "Images generated per call.")
    flags.DEFINE_string("checkpoint", "latest", "latest, best (kept by --eval_every) or a path.")
    flags.DEFINE_string(
        "inception_weights",
        "",
        "InceptionV3 no-top weights file for Inception FID/KID; empty: the Keras cache or a "
        "download; none: skip them.",
    )
    flags.DEFINE_string(
        "classifier_cache",
        default_cache_dir(),
        "Where domain classifiers are cached ($GANFM_CACHE or ~/.cache/ganfm).",
    )


def evaluate(
    model_dir: str,
    num_samples: int,
    seed: int = 0,
    checkpoint: str = "latest",
    inception_weights: str = "none",
    classifier_cache: str | None = None,
    batch: int = 500,
) -> tuple[dict, str]:
    """(report, path of the JSON written beside the checkpoint)."""
    from ganfm import checkpointing, classifier, evaluation, images, models, sample, train_lib

    config = train_lib.load_config(model_dir)
    generator = models.build_generator(config)
    path = checkpointing.restore_ema_generator(model_dir, generator, checkpoint)
    evaluator = evaluation.Evaluator(
        config,
        num_samples,
        classifier_cache or classifier.default_cache_dir(),
        inception_weights,
        log=lambda line: print(line, flush=True),
    )
    generated = sample.generate_with(generator, num_samples, seed, batch)
    report = {
        "checkpoint": path,
        "step": checkpointing.checkpoint_step(path),
        "seed": seed,
        **evaluator.report(generated),
    }
    output = path + EVAL_SUFFIX
    images.atomic_write_bytes(output, json.dumps(report, indent=2).encode())
    return report, output


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    with user_errors():
        require_run(FLAGS.model_dir)
        if FLAGS.num_samples < 10 or FLAGS.batch <= 0:
            raise ConfigError(
                f"--num_samples={FLAGS.num_samples} must be >= 10 and --batch={FLAGS.batch} > 0"
            )
        from ganfm.evaluation import format_report

        report, output = evaluate(
            FLAGS.model_dir,
            FLAGS.num_samples,
            FLAGS.seed,
            FLAGS.checkpoint,
            FLAGS.inception_weights,
            FLAGS.classifier_cache,
            FLAGS.batch,
        )
    print(f"Evaluated {report['checkpoint']}")
    print(format_report(report))
    print(f"Wrote {output}")


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
    sys.exit(0)
