"""Inception-v3 pool features, the usual FID/KID protocol, when weights are available.

The protocol: images resized (bilinear) to 299x299, gray repeated to RGB, scaled to
[-1, 1] (keras.applications.inception_v3.preprocess_input), the 2048 global-average-pool
features of ImageNet-trained InceptionV3 without its top. Figures are comparable with
other Keras-based FIDs; TF1's original graph and pytorch-fid differ slightly in resizing.
"""

from __future__ import annotations

import os
import socket

import keras
import numpy as np
import tensorflow as tf

from ganfm.errors import ConfigError

SIZE = 299
KERAS_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
DOWNLOAD_TIMEOUT_SECONDS = 30
OFF = "none"


class InceptionFeatures:
    def __init__(self, model: keras.Model, source: str):
        self.model = model
        self.source = source  # Where the weights came from, for the report.
        self._call = tf.function(self._features, reduce_retracing=True)

    def _features(self, images):
        x = tf.image.resize(tf.cast(images, tf.float32), [SIZE, SIZE], method="bilinear")
        if x.shape[-1] == 1:
            x = tf.repeat(x, 3, axis=-1)
        return self.model(keras.applications.inception_v3.preprocess_input(x), training=False)

    def __call__(self, images: np.ndarray, batch: int = 50) -> np.ndarray:
        """uint8 [N, H, W, C] -> float64 [N, 2048]."""
        chunks = [
            self._call(tf.constant(images[i : i + batch])).numpy()
            for i in range(0, len(images), batch)
        ]
        return np.concatenate(chunks).astype(np.float64)


def _build(weights) -> keras.Model:
    return keras.applications.InceptionV3(
        include_top=False, pooling="avg", weights=weights, input_shape=(SIZE, SIZE, 3)
    )


def load(weights: str) -> tuple[InceptionFeatures | None, str]:
    """(features, "") or (None, why not). weights: a file, "" (Keras cache or download),
    or "none" (off)."""
    if weights == OFF:
        return None, "Inception-v3 FID/KID: off (--inception_weights=none)"
    if weights:
        if not tf.io.gfile.exists(weights):
            raise ConfigError(
                f"--inception_weights={weights!r} does not exist; give an InceptionV3 "
                f"no-top weights file ({KERAS_WEIGHTS_FILE}) or leave it empty to download"
            )
        model = _build(None)
        try:
            model.load_weights(weights)
        except Exception as e:  # h5py and Keras raise many types for a wrong file.
            raise ConfigError(
                f"--inception_weights={weights!r} is not InceptionV3 no-top weights "
                f"({type(e).__name__}); use {KERAS_WEIGHTS_FILE} from keras.applications"
            ) from None
        return InceptionFeatures(model, weights), ""
    cached = os.path.join(os.path.expanduser("~"), ".keras", "models", KERAS_WEIGHTS_FILE)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
    try:
        model = _build("imagenet")  # The Keras cache, else a download.
    except Exception as e:  # Offline: URL, DNS and timeout errors of every kind.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        reason = reason if len(reason) <= 80 else "..." + reason[-77:]  # The cause is last.
        return None, (
            f"Inception-v3 FID/KID skipped: no weights in {cached} and the download failed "
            f"({reason}); pass --inception_weights=FILE (a copy of {KERAS_WEIGHTS_FILE})"
        )
    finally:
        socket.setdefaulttimeout(previous)
    return InceptionFeatures(model, "imagenet (keras.applications)"), ""
