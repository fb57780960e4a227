"""The domain classifier whose features evaluation measures distances in.

Inception-v3 features mean little on 8x8 digits or 28x28 clothes, and its weights need
a download. A small CNN trained once on the data set's labeled training split works
offline and sees what matters for the domain; its penultimate layer is the feature
space of ganfm's FD, KID and precision/recall, and its predictions give class coverage.

It is cached under --classifier_cache, keyed by the data set, the image shape and a
fingerprint of the training images and labels, so every run and every evaluation of
one data set uses the same classifier. Training is seeded, so another machine trains
nearly the same one; compare figures across machines with the same cache to be exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from ganfm import data
from ganfm.errors import ConfigError

VERSION = 2  # Bump when the architecture or training changes: old caches are not reused.
MODEL_FILE = "classifier.keras"
INFO_FILE = "classifier.json"
FEATURES_LAYER = "features"
BATCH = 128
MIN_TRAIN_STEPS = 600
MIN_EPOCHS = 5
LEARNING_RATE = 1e-3
_SEED = 1234


def default_cache_dir() -> str:
    return os.environ.get("GANFM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ganfm")


class DomainClassifier:
    """A trained classifier: features ([N, 128]) and class predictions of uint8 images."""

    def __init__(self, model: keras.Model, info: dict):
        self.model = model
        self.info = info
        self.num_classes = int(info["num_classes"])
        self._features_and_logits = keras.Model(
            model.inputs, [model.get_layer(FEATURES_LAYER).output, model.output]
        )
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)
        self._call = tf.function(self._features_and_logits_of, input_signature=[spec])

    def _features_and_logits_of(self, images):
        return self._features_and_logits(data.to_float(images))

    @property
    def test_accuracy(self) -> float:
        return float(self.info["test_accuracy"])

    def features_and_predictions(
        self, images: np.ndarray, batch: int = 500
    ) -> tuple[np.ndarray, np.ndarray]:
        features, predicted = [], []
        for start in range(0, len(images), batch):
            f, logits = self._call(tf.constant(images[start : start + batch]))
            features.append(f.numpy())
            predicted.append(np.argmax(logits.numpy(), axis=1))
        return np.concatenate(features).astype(np.float64), np.concatenate(predicted)


def build(image_size: int, channels: int, num_classes: int) -> keras.Model:
    """conv32 -> conv64/2 -> conv128/2 -> flatten -> dense128 (features) -> logits.

    float32 whatever the run's mixed-precision policy; seeded initializers.
    """
    seeds = iter(range(_SEED, _SEED + 100))

    def init():
        return keras.initializers.GlorotUniform(seed=next(seeds))

    common = dict(activation="relu", padding="same", dtype="float32")
    images = keras.Input((image_size, image_size, channels), name="image")
    x = keras.layers.Conv2D(32, 3, kernel_initializer=init(), name="conv0", **common)(images)
    x = keras.layers.Conv2D(64, 3, 2, kernel_initializer=init(), name="conv1", **common)(x)
    x = keras.layers.Conv2D(128, 3, 2, kernel_initializer=init(), name="conv2", **common)(x)
    x = keras.layers.Flatten(name="flatten", dtype="float32")(x)  # Where things are matters.
    x = keras.layers.Dense(
        128, activation="relu", kernel_initializer=init(), name=FEATURES_LAYER, dtype="float32"
    )(x)
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=init(), name="logits", dtype="float32"
    )(x)
    return keras.Model(images, logits, name="domain_classifier")


def fingerprint(train: data.ImageSource) -> str:
    digest = hashlib.sha256(f"v{VERSION}:{train.images.shape}".encode())
    digest.update(np.ascontiguousarray(train.images).tobytes())
    digest.update(np.ascontiguousarray(train.labels, np.int64).tobytes())
    return digest.hexdigest()[:16]


def cache_path(cache_dir: str, train: data.ImageSource) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", train.name).strip("_")
    shape = f"{train.image_size}x{train.image_size}x{train.channels}"
    return os.path.join(cache_dir, "classifiers", f"{slug}-{shape}-{fingerprint(train)}")


def load_or_train(
    train: data.ImageSource, test: data.ImageSource, cache_dir: str, log=print
) -> DomainClassifier:
    """The cached classifier for this training split, training (and caching) it if needed."""
    if train.labels is None or train.images is None:
        raise ConfigError(
            f"--dataset={train.name} has no labels, so there is no domain classifier for it; "
            "its evaluation has only the Inception-v3 figures (--inception_weights)"
        )
    path = cache_path(cache_dir, train)
    if os.path.isfile(os.path.join(path, INFO_FILE)):
        with open(os.path.join(path, INFO_FILE)) as f:
            info = json.load(f)
        return DomainClassifier(keras.models.load_model(os.path.join(path, MODEL_FILE)), info)
    log(f"Training the {train.name} domain classifier once (cached in {path}) ...")
    model, info = _train(train, test)
    accuracy, num_test = info["test_accuracy"], info["num_test"]
    log(f"Domain classifier: {accuracy:.4f} accuracy on {num_test} held-out images")
    _save(model, info, path)
    return DomainClassifier(model, info)


def _train(train: data.ImageSource, test: data.ImageSource) -> tuple[keras.Model, dict]:
    num_classes = int(max(train.labels.max(), test.labels.max()) + 1)
    model = build(train.image_size, train.channels, num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    steps_per_epoch = max(1, train.num_examples // BATCH)
    epochs = max(MIN_EPOCHS, -(-MIN_TRAIN_STEPS // steps_per_epoch))
    # Our own seeded shuffles, fed by one tf.data stream: the same classifier every time.
    rng = np.random.default_rng(_SEED)
    order = np.concatenate([rng.permutation(train.num_examples) for _ in range(epochs)])
    images, labels = tf.constant(train.images), tf.constant(train.labels)

    def examples(indices):
        return data.to_float(tf.gather(images, indices)), tf.gather(labels, indices)

    stream = (
        tf.data.Dataset.from_tensor_slices(order)
        .batch(BATCH, drop_remainder=True)
        .map(examples)
        .prefetch(tf.data.AUTOTUNE)
    )
    model.fit(stream, epochs=1, shuffle=False, verbose=0)
    _, accuracy = model.evaluate(
        data.to_float(test.images).numpy(), test.labels, batch_size=500, verbose=0
    )
    info = {
        "version": VERSION,
        "dataset": train.name,
        "image_shape": [train.image_size, train.image_size, train.channels],
        "fingerprint": fingerprint(train),
        "num_classes": num_classes,
        "num_train": int(train.num_examples),
        "num_test": int(test.num_examples),
        "epochs": epochs,
        "test_accuracy": float(accuracy),
        "class_shares": (
            np.bincount(train.labels, minlength=num_classes) / train.num_examples
        ).tolist(),
    }
    return model, info


def _save(model: keras.Model, info: dict, path: str) -> None:
    """Into a temporary folder, then renamed: a killed process leaves no half cache."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        model.save(os.path.join(scratch, MODEL_FILE))
        with open(os.path.join(scratch, INFO_FILE), "w") as f:
            json.dump(info, f, indent=2)
        with contextlib.suppress(OSError):  # Another process cached it first: as good.
            os.rename(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
