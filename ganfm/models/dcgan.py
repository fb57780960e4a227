"""DCGAN generator and discriminator (Radford et al. 2016) as Keras functional models.

Layer names are stable and readable so --fm_layers can name them: the discriminator is
`image, block0_conv, block0_act, block1_conv, block1_act, ..., features, logits` for
every image size; `features` (the flattened last block) is the default tapped layer.

The generator's batch norm is synchronized: under a multi-replica strategy it
normalizes over the global batch, so the replica count does not change what is learned.
The discriminator has no batch norm and no dropout: both would make its outputs depend
on how the batch is split (see DESIGN.md).
"""

from __future__ import annotations

import math

import keras

from ganfm.config import SUPPORTED_IMAGE_SIZES, ConfigError

MAX_FILTERS = 512


def _start_and_blocks(image_size: int) -> tuple[int, int]:
    """Smallest resolution and number of 2x up/down-sampling blocks for a size."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ConfigError(
            f"--image_size={image_size} is not supported; use one of "
            f"{', '.join(map(str, SUPPORTED_IMAGE_SIZES))}"
        )
    start = 7 if image_size == 28 else 4
    return start, int(round(math.log2(image_size // start)))


def build_generator(image_size: int, channels: int, z_dim: int, filters: int) -> keras.Model:
    """Noise [B, z_dim] -> images [B, S, S, C] in [-1, 1] (tanh)."""
    start, blocks = _start_and_blocks(image_size)
    width = min(MAX_FILTERS, filters * 2 ** (blocks - 1))
    noise = keras.Input((z_dim,), name="noise")
    x = keras.layers.Dense(start * start * width, use_bias=False, name="project")(noise)
    x = keras.layers.Reshape((start, start, width), name="project_reshape")(x)
    x = keras.layers.BatchNormalization(synchronized=True, name="project_bn")(x)
    x = keras.layers.ReLU(name="project_act")(x)
    for i in range(1, blocks + 1):
        width = min(MAX_FILTERS, filters * 2 ** (blocks - i))
        x = keras.layers.Conv2DTranspose(
            width, 4, strides=2, padding="same", use_bias=False, name=f"up{i}_deconv"
        )(x)
        x = keras.layers.BatchNormalization(synchronized=True, name=f"up{i}_bn")(x)
        x = keras.layers.ReLU(name=f"up{i}_act")(x)
    x = keras.layers.Conv2D(channels, 3, padding="same", name="to_image")(x)
    images = keras.layers.Activation("tanh", name="image", dtype="float32")(x)
    return keras.Model(noise, images, name="generator")


def build_discriminator(image_size: int, channels: int, filters: int) -> keras.Model:
    """Images [B, S, S, C] -> logits [B, 1], through named, tappable blocks."""
    _, blocks = _start_and_blocks(image_size)
    images = keras.Input((image_size, image_size, channels), name="image")
    x = keras.layers.Conv2D(filters, 3, padding="same", name="block0_conv")(images)
    x = keras.layers.LeakyReLU(0.2, name="block0_act")(x)
    for i in range(1, blocks + 1):
        width = min(MAX_FILTERS, filters * 2**i)
        x = keras.layers.Conv2D(width, 4, strides=2, padding="same", name=f"block{i}_conv")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"block{i}_act")(x)
    x = keras.layers.Flatten(name="features")(x)
    logits = keras.layers.Dense(1, name="logits", dtype="float32")(x)
    return keras.Model(images, logits, name="discriminator")
