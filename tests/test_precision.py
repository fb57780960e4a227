"""--precision: bfloat16 and float16 compute train close to float32, and float16's loss
scaling skips a step whose gradients overflow on ANY replica, not just the first."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import checkpoint_values, max_difference
from ganfm import data, models, train_lib
from ganfm.config import architecture_differences
from ganfm.sample import generate
from ganfm.trainer import Trainer


@pytest.fixture(autouse=True)
def float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
@pytest.mark.parametrize(
    "precision, compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")]
)
def test_mixed_precision_trains_close_to_fp32(tiny, precision, compute):
    runs = [tiny(runtime=dict(precision=p)) for p in (precision, "fp32")]
    policies = []

    def recording(config):
        built = models.build_models(config)
        policies.append(built[1].get_layer("block0_conv").compute_dtype)
        return built

    for config in runs:
        metrics = train_lib.run(config, build_models=recording)
        assert all(np.isfinite(v) for v in metrics.values())
        assert all(isinstance(v, float) for v in metrics.values())  # Losses in float32.
    assert policies == [compute, "float32"]
    assert keras.mixed_precision.global_policy().name == "float32"
    low_ckpt, full_ckpt = (checkpoint_values(c.loop.model_dir) for c in runs)
    common = {k for k in low_ckpt if k in full_ckpt}
    assert (
        max_difference(
            {k: low_ckpt[k] for k in common}, {k: full_ckpt[k] for k in common}, "generator"
        )
        > 0
    )
    generator = models.build_generator(train_lib.resolve(runs[1], data.load_source(runs[1].data)))
    low, full = (
        generate(c.loop.model_dir, 16, seed=0, generator=generator).astype(float) for c in runs
    )
    assert np.abs(low - full).mean() < 0.05 * 255


def _two_replica_trainer(config):
    config = config.replace(runtime=dict(strategy="mirrored", cpu_replicas=2))
    config = train_lib.resolve(config, data.load_source(config.data))
    strategy = train_lib.setup_runtime(config)
    with strategy.scope():
        trainer = Trainer(config, *models.build_models(config), strategy=strategy)
    return trainer, strategy


def test_float16_skips_a_step_that_overflows_on_the_second_replica_only(tiny):
    """Keras's LossScaleOptimizer reads replica 0's gradients only; ganfm all-reduces
    the verdict, so an inf on replica 1 skips the update everywhere."""
    config = tiny(runtime=dict(precision="mixed_float16"))
    trainer, strategy = _two_replica_trainer(config)
    size = config.data.image_size
    local = config.loop.batch_size // 2

    def per_replica(bad_replica):
        def value_fn(ctx):
            images = np.zeros([1, local, size, size, 1], np.float32)
            if ctx.replica_id_in_sync_group == bad_replica:
                images[0, 0, 0, 0, 0] = np.inf
            return tf.constant(images)

        return strategy.experimental_distribute_values_from_function(value_fn)

    def train_on(value):
        return trainer.train(iter([value]), 1)

    d_vars = trainer.discriminator.trainable_variables
    scale = trainer.d_optimizer.dynamic_scale
    before = [v.numpy().copy() for v in d_vars]
    scale_before = float(scale.numpy())
    train_on(per_replica(bad_replica=1))
    after = [v.numpy() for v in d_vars]
    assert all(np.isfinite(a).all() for a in after)
    assert max(float(np.abs(a - b).max()) for a, b in zip(after, before, strict=True)) == 0
    assert float(scale.numpy()) == scale_before / 2
    train_on(per_replica(bad_replica=None))  # A clean step still trains.
    assert max(float(np.abs(v.numpy() - b).max()) for v, b in zip(d_vars, before, strict=True)) > 0
    assert all(np.isfinite(v.numpy()).all() for v in d_vars)


def test_switching_to_or_from_float16_is_an_architecture_change(tiny):
    a, b, c = (tiny(runtime=dict(precision=p)) for p in ("fp32", "mixed_float16", "mixed_bfloat16"))
    assert architecture_differences(a, b) == [
        "--precision: 'fp32/mixed_bfloat16' -> 'mixed_float16'"
    ]
    assert architecture_differences(a, c) == []
