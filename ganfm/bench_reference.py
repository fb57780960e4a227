"""The two loops users would write themselves, for `python -m ganfm.bench` to race.

(a) `tutorial_step`: the TensorFlow DCGAN tutorial's train step (one tape per network,
    both updated from one forward pass, binary cross-entropy, no feature matching).
(b) `separate_models_step`: the usual Keras recipe for feature matching: (a) plus one
    intermediate-output model per tapped layer, each a full discriminator pass of its
    own on the real and on the generated batch.

Both are called once per batch from a Python loop, as in the tutorial.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

_bce = keras.losses.BinaryCrossentropy(from_logits=True)


def _adam() -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(2e-4, 0.5, 0.999)


def tutorial_step(generator: keras.Model, discriminator: keras.Model, z_dim: int):
    """Returns a tf.function images -> losses, the tutorial's `train_step`."""
    g_opt, d_opt = _adam(), _adam()
    g_opt.build(generator.trainable_variables)
    d_opt.build(discriminator.trainable_variables)

    @tf.function
    def step(images):
        noise = tf.random.normal([tf.shape(images)[0], z_dim])
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = generator(noise, training=True)
            real_out = discriminator(images, training=True)
            fake_out = discriminator(fake, training=True)
            g_loss = _bce(tf.ones_like(fake_out), fake_out)
            d_loss = _bce(tf.ones_like(real_out), real_out) + _bce(
                tf.zeros_like(fake_out), fake_out
            )
        g_vars, d_vars = generator.trainable_variables, discriminator.trainable_variables
        g_opt.apply_gradients(zip(g_tape.gradient(g_loss, g_vars), g_vars, strict=True))
        d_opt.apply_gradients(zip(d_tape.gradient(d_loss, d_vars), d_vars, strict=True))
        return g_loss, d_loss

    return step


def separate_models_step(
    generator: keras.Model, discriminator: keras.Model, z_dim: int, layers: Sequence[str]
):
    """Returns a tf.function images -> losses: the tutorial step plus feature matching
    through one `keras.Model(d.input, d.get_layer(name).output)` per layer."""
    g_opt, d_opt = _adam(), _adam()
    g_opt.build(generator.trainable_variables)
    d_opt.build(discriminator.trainable_variables)
    taps = [keras.Model(discriminator.inputs, discriminator.get_layer(n).output) for n in layers]

    @tf.function
    def step(images):
        noise = tf.random.normal([tf.shape(images)[0], z_dim])
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = generator(noise, training=True)
            real_out = discriminator(images, training=True)
            fake_out = discriminator(fake, training=True)
            fm = 0.0
            for tap in taps:
                real_mean = tf.reduce_mean(tf.stop_gradient(tap(images, training=True)), 0)
                fake_mean = tf.reduce_mean(tap(fake, training=True), 0)
                fm += tf.reduce_mean(tf.square(real_mean - fake_mean))
            g_loss = _bce(tf.ones_like(fake_out), fake_out) + fm
            d_loss = _bce(tf.ones_like(real_out), real_out) + _bce(
                tf.zeros_like(fake_out), fake_out
            )
        g_vars, d_vars = generator.trainable_variables, discriminator.trainable_variables
        g_opt.apply_gradients(zip(g_tape.gradient(g_loss, g_vars), g_vars, strict=True))
        d_opt.apply_gradients(zip(d_tape.gradient(d_loss, d_vars), d_vars, strict=True))
        return g_loss, d_loss

    return step
