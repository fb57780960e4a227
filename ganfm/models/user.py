"""Loads a user's generator and discriminator builders from a Python file (--models)."""

from __future__ import annotations

import importlib.util
import os

from ganfm.config import ConfigError

BUILDERS = ("build_generator", "build_discriminator")


def load_builders(path: str):
    """Returns (build_generator, build_discriminator) from the module at path."""
    if not os.path.isfile(path):
        raise ConfigError(f"--models={path!r} is not a file")
    name = "ganfm_user_models_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [b for b in BUILDERS if not callable(getattr(module, b, None))]
    if missing:
        raise ConfigError(
            f"--models={path!r} does not define {' and '.join(missing)}(config); "
            "each must return a keras.Model"
        )
    return module.build_generator, module.build_discriminator
