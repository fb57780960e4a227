"""Generator and discriminator builders, user model loading and the feature tap."""

from __future__ import annotations

import keras

from ganfm.config import Config, ConfigError
from ganfm.models import dcgan
from ganfm.models.tap import build_feature_tap, ensure_built, resolve_layers
from ganfm.models.user import load_builders

__all__ = [
    "build_feature_tap",
    "build_generator",
    "build_models",
    "builders",
    "python_models_marker",
    "prepare",
    "ensure_built",
    "resolve_layers",
]


PYTHON_MODELS = "python:"


def python_models_marker(build_models) -> str:
    """What config.json records for models passed from Python (train_lib.run)."""
    module = getattr(build_models, "__module__", "?")
    return f"{PYTHON_MODELS}{module}.{getattr(build_models, '__qualname__', '?')}"


def builders(config: Config):
    """(build_generator, build_discriminator), each config -> keras.Model."""
    data, model = config.data, config.model
    if model.models.startswith(PYTHON_MODELS):
        raise ConfigError(
            f"this run's models came from Python ({model.models[len(PYTHON_MODELS) :]}); "
            "build the generator there and pass it: ganfm.sample.generate(..., generator=g)"
        )
    if model.models:
        return load_builders(model.models)

    def build_generator(_):
        return dcgan.build_generator(data.image_size, data.channels, model.z_dim, model.g_filters)

    def build_discriminator(_):
        return dcgan.build_discriminator(data.image_size, data.channels, model.d_filters)

    return build_generator, build_discriminator


def _checked(model, role: str, input_shape: tuple[int, ...]) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise ConfigError(f"the {role} builder returned {type(model).__name__}, not a keras.Model")
    return ensure_built(model, input_shape)


def build_generator(config: Config) -> keras.Model:
    return _checked(builders(config)[0](config), "generator", (config.model.z_dim,))


def prepare(config: Config, generator, discriminator, ema_generator):
    """Checks the three are Keras models, builds Sequential ones given no Input, and
    sets every batch norm's synchronization to --sync_bn."""
    size, channels = config.data.image_size, config.data.channels
    models = (
        _checked(generator, "generator", (config.model.z_dim,)),
        _checked(discriminator, "discriminator", (size, size, channels)),
        _checked(ema_generator, "EMA generator", (config.model.z_dim,)),
    )
    for model in models:
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                # Read at call time: with it, batch statistics are all-reduced over
                # the global batch and every replica keeps the same moving averages.
                layer.synchronized = config.model.sync_bn
    return models


def build_models(config: Config) -> tuple[keras.Model, keras.Model, keras.Model]:
    """Builds (generator, discriminator, ema_generator): DCGAN, or the --models file's.

    The EMA generator is a second instance from the same builder (the trainer sets its
    weights from the generator). Call inside strategy.scope(); config.data must be
    resolved (image_size, channels).
    """
    build_g, build_d = builders(config)
    return prepare(config, build_g(config), build_d(config), build_g(config))
