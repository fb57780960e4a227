import keras
import numpy as np
import pytest
import tensorflow as tf

from ganfm.config import SUPPORTED_IMAGE_SIZES, Config, ConfigError
from ganfm.models import build_feature_tap, build_models, dcgan, resolve_layers


class CountingIdentity(keras.layers.Layer):
    """Counts how often the discriminator actually runs (eager calls)."""

    calls = 0

    def call(self, x):
        CountingIdentity.calls += 1
        return x


def counting_discriminator():
    images = keras.Input((8, 8, 1), name="image")
    x = CountingIdentity(name="count")(images)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(x)
    x = keras.layers.LeakyReLU(0.2, name="act_a")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="conv_b")(x)
    x = keras.layers.Flatten(name="features")(x)
    return keras.Model(images, keras.layers.Dense(1, name="logits")(x))


def test_one_discriminator_pass_returns_logits_and_every_tapped_layer():
    d = counting_discriminator()
    tap = build_feature_tap(d, ["act_a", "features"])
    x = tf.random.normal([3, 8, 8, 1])
    CountingIdentity.calls = 0
    out = tap(x)
    assert CountingIdentity.calls == 1
    assert sorted(out) == ["act_a", "features", "logits"]
    # The usual recipe (one intermediate model per layer) runs the discriminator again.
    CountingIdentity.calls = 0
    for name in ("act_a", "features"):
        keras.Model(d.inputs, d.get_layer(name).output)(x)
    d(x)
    assert CountingIdentity.calls == 3
    for name in ("act_a", "features"):
        separate = keras.Model(d.inputs, d.get_layer(name).output)(x)
        np.testing.assert_allclose(out[name].numpy(), separate.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["logits"].numpy(), d(x).numpy(), rtol=1e-6)


def test_tap_adds_no_variables():
    d = dcgan.build_discriminator(16, 3, 8)
    tap = build_feature_tap(d, ["block1_act", "features"])
    assert {id(v) for v in tap.weights} == {id(v) for v in d.weights}
    assert len(tap.weights) == len(d.weights)


def test_generator_and_discriminator_variables_are_disjoint():
    config = Config().replace(data=dict(image_size=16, channels=3))
    g, d, ema = build_models(config)
    ids = [{id(v.value) for v in m.weights} for m in (g, d, ema)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]


@pytest.mark.parametrize("size", SUPPORTED_IMAGE_SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_builds_every_supported_size_with_stable_names(size, channels):
    d = dcgan.build_discriminator(size, channels, 4)
    names = [layer.name for layer in d.layers]
    assert names[:3] == ["image", "block0_conv", "block0_act"]
    assert names[-2:] == ["features", "logits"]
    g = dcgan.build_generator(size, channels, 8, 4)
    images = g(tf.random.normal([2, 8]))
    assert images.shape == (2, size, size, channels)
    assert float(tf.reduce_max(tf.abs(images))) <= 1.0
    assert d(images).shape == (2, 1)


def test_resolve_names_indices_and_all():
    d = counting_discriminator()
    # d.layers: image, count, conv_a, act_a, conv_b, features, logits
    assert resolve_layers(d, ["3", "features"]) == ["act_a", "features"]
    assert resolve_layers(d, ["-2"]) == ["features"]
    assert resolve_layers(d, ["all"]) == ["count", "conv_a", "act_a", "conv_b", "features"]


@pytest.mark.parametrize("spec", [["nope"], ["99"], ["0"], ["logits"]])
def test_unknown_layer_is_an_error_listing_valid_ones(spec):
    with pytest.raises(ConfigError) as info:
        resolve_layers(counting_discriminator(), spec)
    assert "act_a" in str(info.value) and "features" in str(info.value)


def test_sequential_discriminator_can_be_tapped():
    d = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, name="c1"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    d.build((None, 8, 8, 1))
    tap = build_feature_tap(d, resolve_layers(d, ["c1", "1"]))
    out = tap(tf.zeros([2, 8, 8, 1]))
    assert out["c1"].shape == (2, 6, 6, 4) and out["flat"].shape == (2, 144)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3)
        self.flat = keras.layers.Flatten()
        self.out = keras.layers.Dense(1)

    def call(self, x, training=False):
        return self.out(self.flat(self.conv(x)))


def test_subclassed_discriminator_gets_a_clear_error():
    d = Subclassed()
    d(tf.zeros([1, 8, 8, 1]))
    with pytest.raises(ConfigError) as info:
        build_feature_tap(d, ["conv2d"])
    message = str(info.value)
    assert "subclassed" in message and "functional API" in message


def test_subclassed_discriminator_without_feature_matching_is_fine():
    d = Subclassed()
    d(tf.zeros([1, 8, 8, 1]))
    out = build_feature_tap(d, [])(tf.zeros([2, 8, 8, 1]))
    assert list(out) == ["logits"] and out["logits"].shape == (2, 1)
