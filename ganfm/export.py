"""Exports a run's EMA generator as a SavedModel that needs only TensorFlow to serve.

    python -m ganfm.export --model_dir=DIR --export_dir=OUT [--checkpoint=best]

Signatures (uint8 NHWC images out, inference-mode batch norm):
  serving_default(noise: float32 [N, z_dim]) -> {"images"}
  from_seed(seed: int64 [], num: int32 [])   -> {"images"}, the same images as
      `python -m ganfm.sample --seed=SEED --num=NUM` (noise: stateless normal of the seed).

    m = tf.saved_model.load(OUT)
    images = m.signatures["from_seed"](seed=tf.constant(0, tf.int64), num=tf.constant(16))
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from ganfm.cli import fail, parse_flags_or_exit, require_run, user_errors
from ganfm.errors import ConfigError

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("model_dir", None, "A training run's --model_dir.")
    flags.DEFINE_string("export_dir", None, "Where to write the SavedModel (must not exist).")
    flags.DEFINE_string("checkpoint", "latest", "latest, best (kept by --eval_every) or a path.")


def export(model_dir: str, export_dir: str, checkpoint: str = "latest") -> str:
    """Writes the SavedModel into a temporary sibling, then renames it into place, so a
    failed export leaves nothing half-written. Returns the checkpoint exported."""
    import tensorflow as tf

    from ganfm import checkpointing, data, models, train_lib
    from ganfm.trainer import sample_noise

    if tf.io.gfile.exists(export_dir):
        raise ConfigError(
            f"--export_dir={export_dir!r} already exists; give a new directory (nothing "
            "is overwritten)"
        )
    parent = os.path.dirname(os.path.abspath(export_dir)) if "://" not in export_dir else None
    if parent and not os.path.isdir(parent):
        raise ConfigError(f"--export_dir={export_dir!r}: folder {parent} does not exist")
    config = train_lib.load_config(model_dir)
    generator = models.build_generator(config)
    path = checkpointing.restore_ema_generator(model_dir, generator, checkpoint)
    z_dim = config.model.z_dim

    class Generator(tf.Module):
        def __init__(self):
            super().__init__()
            self.generator = generator

        @tf.function(input_signature=[tf.TensorSpec([None, z_dim], tf.float32, name="noise")])
        def serve(self, noise):
            # Traced into the graph: serving needs none of ganfm's Python code.
            return {"images": data.to_uint8(self.generator(noise, training=False))}

        @tf.function(
            input_signature=[
                tf.TensorSpec([], tf.int64, name="seed"),
                tf.TensorSpec([], tf.int32, name="num"),
            ]
        )
        def from_seed(self, seed, num):
            return self.serve(sample_noise(seed, num, z_dim))

    module = Generator()
    scratch = f"{export_dir.rstrip('/')}.tmp-{os.getpid()}"
    signatures = {"serving_default": module.serve, "from_seed": module.from_seed}
    try:
        tf.saved_model.save(module, scratch, signatures=signatures)
        tf.io.gfile.rename(scratch, export_dir)
    finally:
        if tf.io.gfile.exists(scratch):
            tf.io.gfile.rmtree(scratch)
    return path


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    with user_errors():
        require_run(FLAGS.model_dir)
        if not FLAGS.export_dir:
            raise ConfigError("--export_dir is required: where to write the SavedModel")
        path = export(FLAGS.model_dir, FLAGS.export_dir, FLAGS.checkpoint)
    print(f"Exported the EMA generator of {path} to {FLAGS.export_dir}")
    print('Serve it: tf.saved_model.load(DIR).signatures["serving_default"](noise=...)')


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
    sys.exit(0)
