"""Pure loss functions. Adversarial losses and penalties are per example ([B]); the
trainer reduces them in one place with tf.nn.compute_average_loss over the global batch.

Logits are raw discriminator outputs of shape [B] or [B, 1]; D(x) = sigmoid(logit)
for the probabilistic losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf


def _flat(logits: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(logits, tf.float32), [-1])


def non_saturating_discriminator_loss(real: tf.Tensor, fake: tf.Tensor) -> tf.Tensor:
    """-log D(x) - log(1 - D(G(z))). Goodfellow et al. 2014, "Generative Adversarial Nets"."""
    return tf.nn.softplus(-_flat(real)) + tf.nn.softplus(_flat(fake))


def non_saturating_generator_loss(fake: tf.Tensor) -> tf.Tensor:
    """-log D(G(z)): the non-saturating generator loss of Goodfellow et al. 2014."""
    return tf.nn.softplus(-_flat(fake))


minimax_discriminator_loss = non_saturating_discriminator_loss


def minimax_generator_loss(fake: tf.Tensor) -> tf.Tensor:
    """log(1 - D(G(z))): the original minimax objective (Goodfellow et al. 2014)."""
    return -tf.nn.softplus(_flat(fake))


def hinge_discriminator_loss(real: tf.Tensor, fake: tf.Tensor) -> tf.Tensor:
    """max(0, 1 - D(x)) + max(0, 1 + D(G(z))). Lim & Ye 2017, "Geometric GAN"."""
    return tf.nn.relu(1.0 - _flat(real)) + tf.nn.relu(1.0 + _flat(fake))


def hinge_generator_loss(fake: tf.Tensor) -> tf.Tensor:
    """-D(G(z)) (Lim & Ye 2017; Miyato et al. 2018)."""
    return -_flat(fake)


def wasserstein_discriminator_loss(real: tf.Tensor, fake: tf.Tensor) -> tf.Tensor:
    """D(G(z)) - D(x). Arjovsky et al. 2017, "Wasserstein GAN"; pair with --gp_weight."""
    return _flat(fake) - _flat(real)


wasserstein_generator_loss = hinge_generator_loss


def least_squares_discriminator_loss(real: tf.Tensor, fake: tf.Tensor) -> tf.Tensor:
    """((D(x) - 1)^2 + D(G(z))^2) / 2. Mao et al. 2017, "Least Squares GANs"."""
    return 0.5 * (tf.square(_flat(real) - 1.0) + tf.square(_flat(fake)))


def least_squares_generator_loss(fake: tf.Tensor) -> tf.Tensor:
    """(D(G(z)) - 1)^2 / 2 (Mao et al. 2017)."""
    return 0.5 * tf.square(_flat(fake) - 1.0)


ADVERSARIAL = {
    "non_saturating": (non_saturating_discriminator_loss, non_saturating_generator_loss),
    "minimax": (minimax_discriminator_loss, minimax_generator_loss),
    "hinge": (hinge_discriminator_loss, hinge_generator_loss),
    "wasserstein": (wasserstein_discriminator_loss, wasserstein_generator_loss),
    "least_squares": (least_squares_discriminator_loss, least_squares_generator_loss),
}


def batch_sum(activations: tf.Tensor, moments: int = 1) -> tf.Tensor:
    """Sum over the batch of flattened activations, [features], in float32; with
    moments=2 also of their squares, [2 * features]: divided by the batch, the first
    and second moments, so matching them matches each feature's mean and spread."""
    flat = tf.reshape(tf.cast(activations, tf.float32), [tf.shape(activations)[0], -1])
    if moments == 2:
        flat = tf.concat([flat, tf.square(flat)], axis=1)
    return tf.reduce_sum(flat, axis=0)


def feature_distance(real_mean: tf.Tensor, fake_mean: tf.Tensor, distance: str) -> tf.Tensor:
    """Distance between two feature-mean vectors, averaged over features.

    l2: mean_k (mu_real_k - mu_fake_k)^2 (Salimans et al. 2016 use ||.||_2^2);
    l1: mean_k |mu_real_k - mu_fake_k|.
    """
    diff = real_mean - fake_mean
    if distance == "l2":
        return tf.reduce_mean(tf.square(diff))
    if distance == "l1":
        return tf.reduce_mean(tf.abs(diff))
    raise ValueError(f"unknown feature distance {distance!r}")


def feature_matching_loss(
    real_means: Mapping[str, tf.Tensor],
    fake_means: Mapping[str, tf.Tensor],
    layer_weights: Sequence[float],
    distance: str = "l2",
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """sum_l w_l * d(E[f_l(x)], E[f_l(G(z))]), with the per-layer terms.

    Salimans et al. 2016, "Improved Techniques for Training GANs", section 3.1: the
    generator matches the expected activations of intermediate discriminator layers on
    real data. Real means are targets: no gradient flows into them.
    """
    per_layer = {}
    total = tf.constant(0.0)
    for (name, fake_mean), weight in zip(fake_means.items(), layer_weights, strict=True):
        term = feature_distance(tf.stop_gradient(real_means[name]), fake_mean, distance)
        per_layer[name] = term
        total += weight * term
    return total, per_layer


def r1_penalty(real_grads: tf.Tensor) -> tf.Tensor:
    """||grad_x D(x)||^2 / 2 on real data, per example. Mescheder et al. 2018."""
    flat = tf.reshape(tf.cast(real_grads, tf.float32), [tf.shape(real_grads)[0], -1])
    return 0.5 * tf.reduce_sum(tf.square(flat), axis=1)


def gradient_penalty(interp_grads: tf.Tensor) -> tf.Tensor:
    """(||grad D(x_hat)||_2 - 1)^2 per example. Gulrajani et al. 2017, "WGAN-GP"."""
    flat = tf.reshape(tf.cast(interp_grads, tf.float32), [tf.shape(interp_grads)[0], -1])
    norm = tf.sqrt(tf.reduce_sum(tf.square(flat), axis=1) + 1e-12)
    return tf.square(norm - 1.0)
