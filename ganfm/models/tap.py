"""The feature tap: logits and chosen intermediate activations from ONE forward pass.

It is a functional model over the discriminator's own layers, so it owns no variables
and costs one discriminator pass, unlike the usual recipe of one intermediate-output
model per layer set (each a full pass of its own).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from ganfm.config import ConfigError

LOGITS = "logits"


def _is_graph_model(model: keras.Model) -> bool:
    """Functional and Sequential models have symbolic inner outputs; subclassed do not."""
    if isinstance(model, keras.Sequential):
        return True
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")


def _logits_tensor(discriminator: keras.Model):
    """The symbolic output (a built Sequential model has no .output of its own)."""
    if isinstance(discriminator, keras.Sequential):
        return discriminator.layers[-1].output
    return discriminator.output


def tappable_layer_names(discriminator: keras.Model) -> list[str]:
    """Layers whose output can be tapped, in the order of discriminator.layers."""
    names = []
    logits = _logits_tensor(discriminator)
    for layer in discriminator.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.output is logits:
            continue
        names.append(layer.name)
    return names


def resolve_layers(discriminator: keras.Model, spec: Sequence[str]) -> list[str]:
    """Turns --fm_layers entries (names, indices into .layers, or 'all') into names."""
    if list(spec) == ["all"]:
        return tappable_layer_names(discriminator)
    valid = tappable_layer_names(discriminator)
    layers = discriminator.layers
    names = []
    for entry in spec:
        entry = str(entry).strip()
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if not -len(layers) <= index < len(layers) or layers[index].name not in valid:
                raise ConfigError(
                    f"--fm_layers index {index} does not name a tappable layer of "
                    f"{discriminator.name}; valid: "
                    + ", ".join(f"{i}={l.name}" for i, l in enumerate(layers) if l.name in valid)
                )
            entry = layers[index].name
        elif entry not in valid:
            raise ConfigError(
                f"--fm_layers names unknown layer {entry!r} of {discriminator.name}; "
                f"valid: {', '.join(valid)} (or an index, or 'all')"
            )
        if entry not in names:
            names.append(entry)
    return names


def ensure_built(model: keras.Model, input_shape: tuple[int, ...]) -> keras.Model:
    """Builds a Sequential model given without an Input so its layers have outputs."""
    if isinstance(model, keras.Sequential) and not model.built:
        model.build((None, *input_shape))
    return model


def build_feature_tap(discriminator: keras.Model, layer_names: Sequence[str]):
    """Returns a callable images -> {'logits': ..., <layer>: activation, ...}.

    With no layers it is the discriminator itself (any Keras model, subclassed too);
    with layers it is one functional model sharing the discriminator's layers.
    """
    if not layer_names:
        return _LogitsOnly(discriminator)
    if not _is_graph_model(discriminator):
        raise ConfigError(
            f"cannot tap layers of {type(discriminator).__name__}: a subclassed Keras model "
            "has no symbolic inner outputs; build the discriminator with the functional API "
            "or keras.Sequential, or run without feature matching (--fm_layers='')"
        )
    if LOGITS in layer_names:
        raise ConfigError(f"--fm_layers may not name the output layer {LOGITS!r}")
    outputs = {name: discriminator.get_layer(name).output for name in layer_names}
    outputs[LOGITS] = _logits_tensor(discriminator)
    return keras.Model(discriminator.inputs, outputs, name="feature_tap")


class _LogitsOnly:
    """The no-tap case: the same call signature, one discriminator call."""

    def __init__(self, discriminator: keras.Model):
        self._discriminator = discriminator

    def __call__(self, images, training=False):
        return {LOGITS: self._discriminator(images, training=training)}
