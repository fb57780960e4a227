"""Per-layer activation statistics over the GLOBAL batch.

Each replica reduces its slice to partial sums (sums, sums of squares, counts, minima,
maxima, per-feature sums, histogram counts); one all-reduce per kind combines them,
so the figures are those of the whole batch, never replica 0's slice. Runs only on
summary steps, outside the training loop: steps that do not log pay nothing.
"""

from __future__ import annotations

import tensorflow as tf

HISTOGRAM_BINS = 30
SCALARS = (
    "mean",
    "std",
    "min",
    "max",
    "mean_abs",
    "zero_fraction",
    "negative_fraction",
    "l2_norm_mean",
    "dead_fraction",
)

_SUM = tf.distribute.ReduceOp.SUM


def _global_min_max(ctx, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """ReduceOp has no MIN/MAX: gather every replica's (min, max) and reduce those."""
    local = tf.reshape(tf.stack([tf.reduce_min(x), tf.reduce_max(x)]), [1, 2])
    gathered = ctx.all_gather(local, axis=0)
    return tf.reduce_min(gathered[:, 0]), tf.reduce_max(gathered[:, 1])


def _flat(activations: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(activations, tf.float32), [tf.shape(activations)[0], -1])


def layer_statistics(ctx: tf.distribute.ReplicaContext, activations: tf.Tensor) -> dict:
    """Statistics of one layer's activations [B_local, ...] over the global batch.

    Returns the SCALARS, `feature_mean` [F] (per-feature mean over the batch) and
    `histogram` [BINS, 3] (left edge, right edge, count), equal on every replica.
    `dead_fraction` is the fraction of features never above zero over the batch
    (dead ReLU units).
    """
    x = _flat(activations)
    samples = tf.cast(tf.shape(x)[0], tf.float32)
    features = tf.cast(tf.shape(x)[1], tf.float32)
    sums = ctx.all_reduce(
        _SUM,
        {
            "sum": tf.reduce_sum(x),
            "sum_sq": tf.reduce_sum(tf.square(x)),
            "sum_abs": tf.reduce_sum(tf.abs(x)),
            "zeros": tf.reduce_sum(tf.cast(tf.equal(x, 0.0), tf.float32)),
            "negatives": tf.reduce_sum(tf.cast(x < 0.0, tf.float32)),
            "l2_norms": tf.reduce_sum(tf.norm(x, axis=1)),
            "samples": samples,
            "feature_sum": tf.reduce_sum(x, axis=0),
        },
    )
    low, high = _global_min_max(ctx, x)
    # Per feature: how many samples of the global batch activate it (> 0).
    active = ctx.all_reduce(_SUM, tf.reduce_sum(tf.cast(x > 0.0, tf.float32), axis=0))
    count = sums["samples"] * features
    mean = sums["sum"] / count
    variance = tf.maximum(sums["sum_sq"] / count - tf.square(mean), 0.0)
    # Bucket edges from the global range, so every replica counts into the same bins.
    counts = ctx.all_reduce(_SUM, _bucket_counts(x, low, high))
    return {
        "mean": mean,
        "std": tf.sqrt(variance),
        "min": low,
        "max": high,
        "mean_abs": sums["sum_abs"] / count,
        "zero_fraction": sums["zeros"] / count,
        "negative_fraction": sums["negatives"] / count,
        "l2_norm_mean": sums["l2_norms"] / sums["samples"],
        "dead_fraction": tf.reduce_mean(tf.cast(tf.equal(active, 0.0), tf.float32)),
        "feature_mean": sums["feature_sum"] / sums["samples"],
        "histogram": histogram_buckets(low, high, counts),
    }


def _bucket_counts(values: tf.Tensor, low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
    high = tf.maximum(high, low + 1e-6)  # A constant layer still gets one range.
    return tf.cast(
        tf.histogram_fixed_width(tf.reshape(values, [-1]), [low, high], nbins=HISTOGRAM_BINS),
        tf.float32,
    )


def histogram_buckets(low: tf.Tensor, high: tf.Tensor, counts: tf.Tensor) -> tf.Tensor:
    """TensorBoard's histogram format: [bins, 3] rows of (left, right, count)."""
    high = tf.maximum(high, low + 1e-6)
    edges = tf.linspace(low, high, HISTOGRAM_BINS + 1)
    return tf.stack([edges[:-1], edges[1:], counts], axis=1)


def local_histogram(values: tf.Tensor) -> tf.Tensor:
    """Histogram buckets of a tensor every replica already holds in full."""
    values = tf.reshape(tf.cast(values, tf.float32), [-1])
    low, high = tf.reduce_min(values), tf.reduce_max(values)
    return histogram_buckets(low, high, _bucket_counts(values, low, high))


def norm(tensors) -> tf.Tensor:
    """Global L2 norm of a list of tensors."""
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(t, tf.float32))) for t in tensors]))
