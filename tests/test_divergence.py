"""Injected NaNs: a bad update is never applied (on any replica), --nan_policy=stop exits
3 naming the step window and the term with the newest checkpoint finite, skip_step goes
on and counts the skips, and non-finite weights are never checkpointed."""

import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import SMOKE_FLAGS, checkpoint_values, run_python
from ganfm import data, distribute, models, train_lib
from ganfm.config import Config
from ganfm.errors import EXIT_DIVERGED, TrainingDiverged
from ganfm.models import dcgan
from ganfm.trainer import Trainer

# Training calls start+1..stop of the layer give NaN. The discriminator runs 3 times a
# step (real and generated for D's update, generated for G's), 4 with feature matching
# (G's targets come from the real batch too).
NAN_LAYER = '''
import keras
import tensorflow as tf


class NanOnCalls(keras.layers.Layer):
    """NaN outputs on training calls start+1..stop, on one replica or all."""

    def __init__(self, start, stop, replica=None, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop, self.replica = start, stop, replica

    def build(self, shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x, training=False):
        if not training:
            return x
        self.calls.assign_add(1.0)
        bad = (self.calls > self.start) & (self.calls <= self.stop)
        if self.replica is not None:
            ctx = tf.distribute.get_replica_context()
            bad = bad & tf.equal(ctx.replica_id_in_sync_group, self.replica)
        return x + tf.where(bad, float("nan"), 0.0)
'''
namespace: dict = {}
exec(NAN_LAYER, namespace)  # The same layer the --models file of the CLI test defines.
NanOnCalls = namespace["NanOnCalls"]


def poisoned_discriminator(config, start, stop, replica=None) -> keras.Model:
    d = dcgan.build_discriminator(config.data.image_size, config.data.channels, 8)
    x = NanOnCalls(start, stop, replica, name="nan_on_calls")(d.get_layer("features").output)
    return keras.Model(d.inputs, d.get_layer("logits")(x))


def build(config, start, stop, replica=None):
    config = train_lib.resolve(config, data.load_source(config.data))
    strategy = train_lib.setup_runtime(config)
    with strategy.scope():
        g, _, ema = models.build_models(config)
        d = poisoned_discriminator(config, start, stop, replica)
        g, d, ema = models.prepare(config, g, d, ema)
        trainer = Trainer(config, g, d, ema, strategy=strategy)
    return trainer, config, strategy


def iterator_for(trainer, config, strategy):
    source = data.load_source(config.data)
    input_fn = data.make_input_fn(source, config.loop.batch_size, 1, config.runtime.seed, 0)
    return iter(strategy.distribute_datasets_from_function(input_fn))


def per_replica_values(strategy, variables) -> list[list[np.ndarray]]:
    return [[r.numpy() for r in strategy.experimental_local_results(v.value)] for v in variables]


def test_a_nan_on_one_replica_skips_that_update_on_every_replica(tiny):
    # Calls 4..6 are step 2's: its D and G updates both see NaN, on replica 1 only.
    config = tiny(runtime=dict(strategy="mirrored", cpu_replicas=2), loss=dict(fm_layers=()))
    trainer, config, strategy = build(config, start=3, stop=6, replica=1)
    iterator = iterator_for(trainer, config, strategy)
    trainer.train(iterator, 1)
    assert trainer.nonfinite == {} and trainer.skipped == (0, 0)
    d_vars, g_vars = (
        trainer.discriminator.trainable_variables,
        trainer.generator.trainable_variables,
    )
    before = [v.numpy() for v in d_vars + g_vars]
    iterations = (
        int(trainer.d_optimizer.iterations.numpy()),
        int(trainer.g_optimizer.iterations.numpy()),
    )

    metrics = trainer.train(iterator, 1)
    assert trainer.skipped == (1, 1)
    assert "loss/d" in trainer.nonfinite and "loss/g" in trainer.nonfinite
    assert np.isnan(metrics["loss/d"])  # No finite step in this call.
    after = [v.numpy() for v in d_vars + g_vars]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    # A true skip: Adam's moments and step count did not move either.
    assert (
        int(trainer.d_optimizer.iterations.numpy()),
        int(trainer.g_optimizer.iterations.numpy()),
    ) == iterations
    for copies in per_replica_values(strategy, d_vars + g_vars):
        assert all(np.array_equal(copies[0], c) for c in copies[1:])
    assert trainer.nonfinite_variables() == []

    trainer.train(iterator, 2)  # The NaNs are over: training goes on.
    assert trainer.nonfinite == {} and trainer.skipped == (0, 0)
    assert not np.array_equal(before[0], d_vars[0].numpy())
    assert train_lib.skipped(trainer) == (1, 1)  # Over the whole run.


def test_a_nan_real_batch_skips_the_d_update_but_not_the_moving_average_target(tiny):
    """The default feature matching (moving-average target) takes its real statistics
    from D's update: a NaN there must not enter the average and stop G for good."""
    config = tiny(loss=dict(fm_layers=("nan_on_calls",)))  # The NaN layer is tapped.
    trainer, config, strategy = build(config, start=3, stop=4)  # Step 2's real pass.
    iterator = iterator_for(trainer, config, strategy)
    trainer.train(iterator, 1)
    target = [v.numpy() for v in trainer.fm_target.means]
    trainer.train(iterator, 1)
    assert trainer.skipped == (1, 0) and "loss/g" not in trainer.nonfinite
    means = trainer.fm_target.means
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(target, means, strict=True))
    trainer.train(iterator, 2)
    assert trainer.skipped == (0, 0)
    assert all(np.all(np.isfinite(v.numpy())) for v in means)
    assert not any(np.array_equal(a, v.numpy()) for a, v in zip(target, means, strict=True))


def test_nan_policy_stop_names_the_window_and_keeps_the_checkpoints_finite(tiny):
    config = tiny(loss=dict(fm_layers=()), loop=dict(train_steps=8))

    def build_models(config):
        g, _, ema = models.build_models(config)
        return g, poisoned_discriminator(config, 7, 8), ema  # Step 3's D update.

    with pytest.raises(TrainingDiverged) as caught:
        train_lib.run(config, build_models=build_models)
    message = str(caught.value)
    assert message.startswith("loss/d, loss/d_adv, the discriminator's loss"), message
    assert "between steps 3 and 4" in message, message
    assert "the discriminator's loss or gradients (1 update(s) skipped)" in message
    checkpoints = os.path.join(config.loop.model_dir, "checkpoints")
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-2")
    values = checkpoint_values(config.loop.model_dir)
    assert all(np.all(np.isfinite(v)) for v in values.values() if v.dtype.kind == "f")


def test_nan_policy_skip_step_goes_on_and_counts_the_skips(tiny, capsys):
    from tensorboard.backend.event_processing import event_accumulator

    config = tiny(
        loss=dict(fm_layers=()),
        loop=dict(train_steps=8, summary_every=4, checkpoint_every=4, nan_policy="skip_step"),
    )

    def build_models(config):
        g, _, ema = models.build_models(config)
        # Calls 7..12: steps 3 and 4, both updates of each.
        return g, poisoned_discriminator(config, 6, 12), ema

    train_lib.run(config, build_models=build_models)
    out = capsys.readouterr().out
    assert "skipped D/G updates so far: 2/2" in out, out
    events = event_accumulator.EventAccumulator(config.loop.model_dir, size_guidance={"tensors": 0})
    events.Reload()

    def last(tag):
        return float(tf.make_ndarray(events.Tensors(tag)[-1].tensor_proto))

    assert last("nan/skipped_d_updates") == 2 and last("nan/skipped_g_updates") == 2
    assert np.isfinite(last("loss/d"))  # Averaged over the finite steps.
    assert checkpoint_values(config.loop.model_dir)[
        "skipped_updates/.ATTRIBUTES/VARIABLE_VALUE"
    ].tolist() == [2, 2]


def test_non_finite_weights_are_never_checkpointed(tiny):
    config = tiny()
    train_lib.run(config)
    before = checkpoint_values(config.loop.model_dir)
    strategy = distribute.make_strategy(config.runtime)
    config = train_lib.resolve(config, data.load_source(config.data))
    trainer, checkpoints, _ = train_lib._build(config, strategy, None)
    weight = trainer.generator.get_layer("up1_bn").moving_variance
    weight.assign(np.full(weight.shape, np.inf, np.float32))
    with pytest.raises(TrainingDiverged, match=r"1 variable\(s\) became NaN/Inf by step 6 "):
        train_lib._save_checked(checkpoints, trainer, 6)
    assert tf.train.latest_checkpoint(checkpoints.directory).endswith("ckpt-4")
    after = checkpoint_values(config.loop.model_dir)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_the_command_line_exits_3_with_one_line_and_a_finite_checkpoint(tmp_path):
    path = tmp_path / "nan_models.py"
    path.write_text(
        NAN_LAYER
        + textwrap.dedent(
            """
            from ganfm.models import dcgan


            def build_generator(config):
                d, m = config.data, config.model
                return dcgan.build_generator(d.image_size, d.channels, m.z_dim, m.g_filters)


            def build_discriminator(config):
                d = dcgan.build_discriminator(config.data.image_size, config.data.channels, 8)
                # Call 10: the real batch of step 4's D update (3 calls a step: D's
                # update on real and generated images, G's on the generated ones).
                x = NanOnCalls(9, 10, name="nan_on_calls")(d.get_layer("features").output)
                return keras.Model(d.inputs, d.get_layer("logits")(x))
            """
        )
    )
    model_dir = tmp_path / "run"
    result = run_python(
        "train.py",
        f"--flagfile={SMOKE_FLAGS}",
        f"--models={path}",
        "--train_steps=6",
        f"--model_dir={model_dir}",
    )
    assert result.returncode == EXIT_DIVERGED, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("train.py: error: loss/d, "), lines[-3:]
    assert "between steps 3 and 4" in lines[-1] and "ckpt-2, is intact" in lines[-1]
    assert "Traceback" not in result.stderr
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-2")
    values = checkpoint_values(model_dir)
    assert all(np.all(np.isfinite(v)) for v in values.values() if v.dtype.kind == "f")
    assert Config.from_json((model_dir / "config.json").read_text()).loop.nan_policy == "stop"
