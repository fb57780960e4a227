"""TensorBoard output: one writer, written eagerly by the outer loop.

Values come back from the compiled step already reduced over the global batch (a
tf.summary call inside strategy.run would record replica 0 only).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata


class Summaries:
    """A tf.summary writer; a no-op when disabled (processes other than the chief)."""

    def __init__(self, logdir: str, enabled: bool = True):
        self._writer = tf.summary.create_file_writer(logdir) if enabled else None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """One uint8 [H, W, C] image."""
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            tf.summary.image(name, np.asarray(image)[None], max_outputs=1)

    def histogram(self, step: int, name: str, buckets: np.ndarray) -> None:
        """Precomputed [bins, 3] (left, right, count) buckets, e.g. all-reduced ones."""
        self.values(step, {name: np.asarray(buckets)})

    def values(self, step: int, values: dict[str, np.ndarray]) -> None:
        """Scalars (0-d) and histograms ([bins, 3]) by their shape, in one writer scope."""
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            for name, value in values.items():
                if np.ndim(value) == 0:
                    tf.summary.scalar(name, float(value))
                else:
                    tf.summary.write(
                        name,
                        tf.constant(value, tf.float64),
                        metadata=histogram_metadata.create_summary_metadata(name, ""),
                    )

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
