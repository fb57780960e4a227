"""Layers that behave correctly under multi-replica strategies."""

from __future__ import annotations

import zlib

import keras
import tensorflow as tf

# Keras layers that draw random numbers from a SeedGenerator: under tf.distribute every
# replica gets the same draw (keras-team/keras#20611), silently.
_RANDOM_LAYERS = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
    "RandomFlip",
    "RandomCrop",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomContrast",
    "RandomBrightness",
)
SAME_ON_EVERY_REPLICA = tuple(
    getattr(keras.layers, name) for name in _RANDOM_LAYERS if hasattr(keras.layers, name)
)


@keras.saving.register_keras_serializable(package="ganfm")
class ReplicaDropout(keras.layers.Layer):
    """Dropout whose mask differs on every replica and repeats from run to run.

    The mask is a stateless draw seeded by (seed, layer name, call count, replica id); the call
    count is a variable, so it is checkpointed and a resumed run draws what an
    uninterrupted one would. Use it instead of keras.layers.Dropout in models trained
    on several replicas.
    """

    def __init__(self, rate: float, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"ReplicaDropout rate={rate} must be in [0, 1)")
        self.rate = float(rate)
        self.seed = int(seed)

    def build(self, input_shape):
        # Every replica counts the same calls; only the first replica's write is kept.
        self.calls = self.add_weight(
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="calls",
        )

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        ctx = tf.distribute.get_replica_context()
        replica = tf.cast(ctx.replica_id_in_sync_group if ctx else 0, tf.int64)
        count = tf.cast(self.calls.value, tf.int64)
        self.calls.assign_add(tf.constant(1, tf.int64))
        # The layer's name keeps two ReplicaDropout layers of one model apart.
        layer_key = self.seed * 2**32 + zlib.crc32(self.name.encode())
        seed = tf.stack([tf.constant(layer_key, tf.int64), count * 65536 + replica])
        keep = tf.random.stateless_uniform(tf.shape(inputs), seed=seed) >= self.rate
        scaled = inputs / tf.cast(1.0 - self.rate, inputs.dtype)
        return tf.where(keep, scaled, tf.zeros_like(inputs))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def same_noise_layers(model: keras.Model) -> list[str]:
    """Names of layers in model whose randomness repeats across replicas."""
    return [
        layer.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, SAME_ON_EVERY_REPLICA)
    ]
