import math

import numpy as np
import pytest
import tensorflow as tf

from ganfm import losses

LOG2 = math.log(2.0)


def _np(t):
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


@pytest.mark.parametrize(
    "name, real, fake, d_expected, g_expected",
    [
        # Logits 0: D = 1/2 everywhere.
        ("non_saturating", 0.0, 0.0, 2 * LOG2, LOG2),
        ("minimax", 0.0, 0.0, 2 * LOG2, -LOG2),
        # softplus(-2) + softplus(-1); generator: softplus(1).
        (
            "non_saturating",
            2.0,
            -1.0,
            math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)),
            math.log1p(math.exp(1)),
        ),
        (
            "minimax",
            2.0,
            -1.0,
            math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)),
            -math.log1p(math.exp(-1)),
        ),
        ("hinge", 0.5, -0.25, 0.5 + 0.75, 0.25),
        ("hinge", 3.0, -3.0, 0.0, 3.0),
        ("wasserstein", 2.0, -1.0, -3.0, 1.0),
        ("least_squares", 2.0, -1.0, 0.5 * (1.0 + 1.0), 0.5 * 4.0),
    ],
)
def test_adversarial_losses_match_hand_values(name, real, fake, d_expected, g_expected):
    d_loss, g_loss = losses.ADVERSARIAL[name]
    real_t = tf.constant([[real], [real]])
    fake_t = tf.constant([[fake], [fake]])
    np.testing.assert_allclose(_np(d_loss(real_t, fake_t)), [d_expected] * 2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(g_loss(fake_t)), [g_expected] * 2, rtol=1e-6, atol=1e-6)


def test_losses_are_per_example():
    out = losses.non_saturating_discriminator_loss(tf.zeros([5, 1]), tf.zeros([5, 1]))
    assert out.shape == (5,)


def test_feature_distance_values():
    a, b = tf.constant([1.0, 2.0, 3.0, 4.0]), tf.constant([1.0, 0.0, 3.0, 8.0])
    assert float(losses.feature_distance(a, b, "l2")) == pytest.approx((4 + 16) / 4)
    assert float(losses.feature_distance(a, b, "l1")) == pytest.approx((2 + 4) / 4)


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_feature_matching_zero_for_equal_statistics(distance):
    means = {"a": tf.constant([0.3, -1.0]), "b": tf.constant([2.0])}
    total, per_layer = losses.feature_matching_loss(means, dict(means), (1.0, 2.0), distance)
    assert float(total) == 0.0
    assert all(float(v) == 0.0 for v in per_layer.values())


def test_feature_matching_weights_layers():
    real = {"a": tf.constant([1.0]), "b": tf.constant([2.0])}
    fake = {"a": tf.constant([0.0]), "b": tf.constant([0.0])}
    total, per_layer = losses.feature_matching_loss(real, fake, (0.5, 3.0), "l2")
    assert float(per_layer["a"]) == pytest.approx(1.0)
    assert float(per_layer["b"]) == pytest.approx(4.0)
    assert float(total) == pytest.approx(0.5 * 1.0 + 3.0 * 4.0)


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_feature_matching_gradient_moves_fake_statistics_to_real(distance):
    """Gradient descent on the FM loss pulls generated activations toward the real mean,
    and no gradient reaches the real (target) side."""
    rng = np.random.default_rng(0)
    real_acts = tf.constant(rng.normal(2.0, 1.0, (32, 6)), tf.float32)
    fake_acts = tf.Variable(rng.normal(-1.0, 1.0, (32, 6)), dtype=tf.float32)
    real_mean = losses.batch_sum(real_acts) / 32.0
    before = None
    for _ in range(200):
        with tf.GradientTape() as tape:
            tape.watch(real_mean)
            fake_mean = losses.batch_sum(fake_acts) / 32.0
            total, _ = losses.feature_matching_loss(
                {"x": real_mean}, {"x": fake_mean}, (1.0,), distance
            )
        grad_fake, grad_real = tape.gradient(total, [fake_acts, real_mean])
        assert grad_real is None or float(tf.reduce_max(tf.abs(grad_real))) == 0.0
        before = float(total) if before is None else before
        fake_acts.assign_sub(5.0 * grad_fake)
    gap_after = np.abs(_np(losses.batch_sum(fake_acts) / 32.0) - _np(real_mean)).mean()
    assert float(total) < 0.1 * before
    assert gap_after < 0.3 * np.abs(2.0 - -1.0)


def test_batch_sum_flattens_features():
    acts = tf.ones([3, 2, 2, 5])
    assert losses.batch_sum(acts).shape == (20,)
    np.testing.assert_allclose(_np(losses.batch_sum(acts)), np.full(20, 3.0))


def test_batch_sum_with_second_moments_appends_the_sums_of_squares():
    acts = tf.constant([[1.0, -2.0], [3.0, 0.5]])
    np.testing.assert_allclose(_np(losses.batch_sum(acts, 2)), [4.0, -1.5, 10.0, 4.25])


def test_r1_and_gradient_penalty_values():
    grads = tf.constant([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(_np(losses.r1_penalty(grads)), [12.5, 0.0])
    np.testing.assert_allclose(_np(losses.gradient_penalty(grads)), [16.0, 1.0], rtol=1e-5)
