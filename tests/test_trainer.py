import math
import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import checkpoint_values, max_difference
from ganfm import data, models, train_lib
from ganfm.errors import ConfigError, TrainingDiverged
from ganfm.trainer import _NOISE_SALT, Trainer


def build_trainer(config):
    config = train_lib.resolve(config, data.load_source(config.data))
    strategy = train_lib.setup_runtime(config)
    with strategy.scope():
        return Trainer(config, *models.build_models(config), strategy=strategy), config


@pytest.mark.parametrize(
    "loss",
    [
        pytest.param(dict(), id="default"),  # The moving-average target: in checkpoints.
        pytest.param(
            dict(fm_target="batch", r1_weight=1.0), id="batch_target_r1", marks=pytest.mark.slow
        ),
    ],
)
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tiny, loss):
    whole = tiny(loss=loss, loop=dict(train_steps=6))
    train_lib.run(whole)
    split = tiny(loss=loss, loop=dict(train_steps=3))
    train_lib.run(split)
    assert tf.train.latest_checkpoint(os.path.join(split.loop.model_dir, "checkpoints")).endswith(
        "-3"
    )
    train_lib.run(split.replace(loop=dict(train_steps=6)))
    a, b = checkpoint_values(whole.loop.model_dir), checkpoint_values(split.loop.model_dir)
    assert any(k.startswith("fm_target") for k in a) == (loss.get("fm_target", "ema") == "ema")
    assert max_difference(a, b) <= 1e-6


def test_run_is_a_no_op_at_train_steps(tiny, capsys):
    config = tiny()
    train_lib.run(config)
    before = checkpoint_values(config.loop.model_dir)
    assert train_lib.run(config) == {}
    assert "nothing to do" in capsys.readouterr().out
    assert max_difference(before, checkpoint_values(config.loop.model_dir)) == 0.0


@pytest.mark.parametrize(
    "replicas, loss",
    [
        pytest.param(2, dict(fm_layers=("block0_act", "features"), r1_weight=0.5), id="2_r1"),
        pytest.param(2, dict(fm_moments=2, fm_target="batch"), id="2_second_moments"),
        pytest.param(
            4,
            dict(fm_layers=("block0_act", "features"), r1_weight=0.5),
            id="4_r1",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            2,
            dict(fm_target="ema", fm_weight=10.0, adv_loss="wasserstein", gp_weight=1.0),
            id="2_ema_gp",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_replica_count_does_not_change_what_is_learned(tiny, replicas, loss):
    """Fails if the feature-matching term lost its 1/N (measured: 0.038 apart)."""
    loop = dict(train_steps=5, steps_per_loop=5, summary_every=5, checkpoint_every=5)
    one = tiny(loop=loop, loss=loss)
    many = tiny(loop=loop, loss=loss, runtime=dict(strategy="mirrored", cpu_replicas=replicas))
    train_lib.run(one)
    train_lib.run(many)
    a, b = checkpoint_values(one.loop.model_dir), checkpoint_values(many.loop.model_dir)
    # Every saved value: both networks (reached through their optimizers' paths), the EMA
    # generator, batch-norm statistics and the optimizer slots.
    assert any(k.startswith("ema_generator") for k in a)
    assert max_difference(a, b) <= 1e-5


def test_simultaneous_update_shares_alternatings_d_step_and_not_its_g_step(tiny):
    """Step 1's D update is the same in both schemes (same noise, same G); the G update
    differs (alternating: against the updated D, with fresh noise). Two replicas
    learn what one does."""
    loop = dict(train_steps=1, steps_per_loop=1, summary_every=1, checkpoint_every=1)
    loss = dict(fm_layers=("block0_act", "features"))
    alternating = tiny(loop=loop, loss=loss)
    simultaneous = tiny(loop=loop, loss=loss, optimizer=dict(update="simultaneous"))
    two = simultaneous.replace(
        loop=dict(model_dir=simultaneous.loop.model_dir + "_2"),
        runtime=dict(strategy="mirrored", cpu_replicas=2),
    )
    for config in (alternating, simultaneous, two):
        train_lib.run(config)
    a, s, s2 = (checkpoint_values(c.loop.model_dir) for c in (alternating, simultaneous, two))
    assert max_difference(a, s, "d_optimizer/_trainable_variables") == 0.0
    assert max_difference(a, s, "g_optimizer/_trainable_variables") > 1e-5
    assert max_difference(s, s2) <= 1e-5


def test_simultaneous_update_needs_one_d_step(tiny):
    with pytest.raises(ConfigError, match="drop --d_steps=2"):
        tiny(optimizer=dict(update="simultaneous", d_steps=2)).validate()


@pytest.mark.slow
def test_local_feature_statistics_depend_on_the_replica_count(tiny):
    """--fm_stats=local equals global on one replica, and differs on two."""
    loop = dict(train_steps=5, steps_per_loop=5, summary_every=5, checkpoint_every=5)
    local = dict(fm_stats="local", fm_weight=10.0)
    runs = [
        tiny(loop=loop, loss=dict(local, fm_stats="global")),
        tiny(loop=loop, loss=local),
        tiny(loop=loop, loss=local, runtime=dict(strategy="mirrored", cpu_replicas=2)),
    ]
    for config in runs:
        train_lib.run(config)
    glob, one, two = (checkpoint_values(c.loop.model_dir) for c in runs)
    assert max_difference(glob, one) == 0.0
    assert max_difference(one, two, "g_optimizer/_trainable_variables") > 1e-4


@pytest.mark.slow
def test_resume_with_another_replica_count_continues_the_same_run(tiny):
    loop = dict(steps_per_loop=1, summary_every=1, checkpoint_every=1)
    whole = tiny(loop=dict(loop, train_steps=4))
    train_lib.run(whole)
    split = tiny(loop=dict(loop, train_steps=2))
    train_lib.run(split)
    mirrored = dict(strategy="mirrored", cpu_replicas=2)
    train_lib.run(split.replace(loop=dict(train_steps=4), runtime=mirrored))
    a, b = checkpoint_values(whole.loop.model_dir), checkpoint_values(split.loop.model_dir)
    assert max_difference(a, b) <= 1e-5


@pytest.mark.parametrize("penalty", ["r1_weight", "gp_weight"])
def test_penalty_gradients_reach_the_discriminator(tiny, penalty):
    """A large penalty changes the discriminator's first update; with the inner tape
    not recorded by the outer one it would not."""
    weights = []
    for value in (0.0, 100.0):
        trainer, config = build_trainer(tiny(loss={penalty: value, "fm_layers": ()}))
        source = data.load_source(config.data)
        input_fn = data.make_input_fn(source, 16, 1, 0, 0)
        iterator = iter(trainer.strategy.distribute_datasets_from_function(input_fn))
        metrics = trainer.train(iterator, 1)
        assert metrics.get("loss/d_" + penalty[:2], 0.0) >= 0.0
        weights.append([w.numpy() for w in trainer.discriminator.trainable_weights])
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(*weights, strict=True))
    assert difference > 1e-6


def test_generator_average_forgets_the_random_start(tiny):
    trainer, config = build_trainer(tiny(optimizer=dict(ema_decay=0.999)))
    source = data.load_source(config.data)
    input_fn = data.make_input_fn(source, 16, 1, 0, 0)
    iterator = iter(trainer.strategy.distribute_datasets_from_function(input_fn))
    expected = [w.numpy().copy() for w in trainer.generator.trainable_weights]
    for t in range(6):
        trainer.train(iterator, 1)
        decay = min(0.999, (1 + t) / (10 + t))
        expected = [
            decay * e + (1 - decay) * w.numpy()
            for e, w in zip(expected, trainer.generator.trainable_weights, strict=True)
        ]
    for e, w in zip(expected, trainer.ema_generator.trainable_weights, strict=True):
        np.testing.assert_allclose(w.numpy(), e, rtol=1e-5, atol=1e-6)
    assert float(trainer.ema_decay_at(tf.constant(10**6, tf.int64))) == pytest.approx(0.999)


def test_noise_differs_across_replicas_and_repeats(tiny):
    trainer, _ = build_trainer(tiny(runtime=dict(strategy="mirrored", cpu_replicas=2)))

    def draw():
        return trainer.strategy.run(
            lambda: trainer._noise(
                tf.constant(7, tf.int64), 0, _NOISE_SALT, [8], tf.random.stateless_normal
            )
        )

    first = [v.numpy() for v in trainer.strategy.experimental_local_results(draw())]
    again = [v.numpy() for v in trainer.strategy.experimental_local_results(draw())]
    assert first[0].shape == (8, 8)
    assert not np.allclose(first[0], first[1])
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_replicated_variable_is_equal_on_all_replicas(tiny):
    trainer, config = build_trainer(
        tiny(runtime=dict(strategy="mirrored", cpu_replicas=2), loss=dict(fm_target="ema"))
    )
    source = data.load_source(config.data)
    input_fn = data.make_input_fn(source, 16, 1, 0, 0)
    iterator = iter(trainer.strategy.distribute_datasets_from_function(input_fn))
    trainer.train(iterator, 3)
    checked = 0
    for model in (trainer.generator, trainer.discriminator, trainer.ema_generator):
        for v in model.weights:
            copies = [c.numpy() for c in trainer.strategy.experimental_local_results(v.value)]
            assert len(copies) == 2
            np.testing.assert_array_equal(copies[0], copies[1], err_msg=v.path)
            checked += 1
    for opt in (trainer.g_optimizer, trainer.d_optimizer):
        for v in opt.variables:
            copies = [c.numpy() for c in trainer.strategy.experimental_local_results(v.value)]
            np.testing.assert_array_equal(copies[0], copies[-1], err_msg=v.path)
            checked += 1
    steps = [c.numpy() for c in trainer.strategy.experimental_local_results(trainer.step)]
    assert steps == [3, 3]
    assert checked > 20


@pytest.mark.parametrize(
    "sections",
    [
        dict(loss=dict(adv_loss="minimax")),
        dict(loss=dict(adv_loss="hinge", fm_distance="l1")),
        dict(loss=dict(fm_moments=2)),
        dict(loss=dict(adv_loss="wasserstein", gp_weight=10.0)),
        dict(loss=dict(adv_loss="least_squares", fm_layers=("all",))),
        dict(loss=dict(fm_only=True, fm_target="ema")),
        dict(loss=dict(fm_layers=("block0_act", "3"), fm_layer_weights=(0.5, 2.0))),
        dict(loss=dict(fm_layers=("all",), fm_layer_weights=(1.0, 1.0, 1.0, 1.0, 0.5))),
        dict(loss=dict(fm_layers=(), r1_weight=1.0)),
        dict(optimizer=dict(d_steps=2)),
        dict(data=dict(dataset="synthetic", image_size=16, channels=3)),
        dict(
            optimizer=dict(update="simultaneous"),
            loss=dict(fm_target="ema", adv_loss="wasserstein", gp_weight=1.0, r1_weight=1.0),
        ),
    ],
    ids=[
        "minimax",
        "hinge_l1",
        "second_moments",
        "wgan_gp",
        "lsgan_all",
        "fm_only_ema",
        "weights",
        "all_weights",
        "no_fm_r1",
        "d2",
        "rgb16",
        "simultaneous_ema_gp_r1",
    ],
)
def test_every_loss_option_trains_with_finite_measurements(tiny, sections):
    trainer, config = build_trainer(tiny(**sections))
    source = data.load_source(config.data)
    input_fn = data.make_input_fn(source, 16, config.optimizer.d_steps, 0, 0)
    iterator = iter(trainer.strategy.distribute_datasets_from_function(input_fn))
    before = [w.numpy().copy() for w in trainer.generator.trainable_weights]
    metrics = trainer.train(iterator, 2)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert ("loss/g_fm" in metrics) == bool(config.loss.fm_layers)
    after = [w.numpy() for w in trainer.generator.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert int(trainer.step.numpy()) == 2


def sequential_models(config):
    z, size, c = config.model.z_dim, config.data.image_size, config.data.channels

    def generator():
        return keras.Sequential(
            [
                keras.Input((z,)),
                keras.layers.Dense(size * size * c, activation="tanh"),
                keras.layers.Reshape((size, size, c)),
            ]
        )

    discriminator = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, strides=2, name="conv"),
            keras.layers.LeakyReLU(name="act"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    return generator(), discriminator, generator()


def test_python_api_trains_sequential_models(tiny):
    config = tiny(loss=dict(fm_layers=("act", "flat")))
    metrics = train_lib.run(config, build_models=sequential_models)
    assert "loss/g_fm/act" in metrics and math.isfinite(metrics["loss/g_fm/act"])


def test_models_flag_loads_a_users_file(tiny, tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(
        textwrap.dedent(
            """
            import keras

            def build_generator(config):
                s, c = config.data.image_size, config.data.channels
                z = keras.Input((config.model.z_dim,))
                x = keras.layers.Dense(s * s * c, activation="tanh")(z)
                return keras.Model(z, keras.layers.Reshape((s, s, c))(x))

            def build_discriminator(config):
                s, c = config.data.image_size, config.data.channels
                x = keras.Input((s, s, c))
                h = keras.layers.Conv2D(3, 3, name="mine")(x)
                return keras.Model(x, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
            """
        )
    )
    config = tiny(model=dict(models=str(path)), loss=dict(fm_layers=("mine",)))
    assert "loss/g_fm/mine" in train_lib.run(config)
    bad = tiny(model=dict(models=str(path)), loss=dict(fm_layers=("nope",)))
    with pytest.raises(ConfigError, match="valid: mine"):
        train_lib.run(bad)
    assert not os.path.exists(bad.loop.model_dir)


def test_sampling_a_python_api_run_needs_its_generator(tiny):
    from ganfm.sample import generate

    config = tiny(loss=dict(fm_layers=("act",)))
    train_lib.run(config, build_models=sequential_models)
    with pytest.raises(ConfigError, match="models came from Python"):
        generate(config.loop.model_dir, 4, seed=0)
    resolved = train_lib.load_config(config.loop.model_dir)
    samples = generate(config.loop.model_dir, 4, seed=0, generator=sequential_models(resolved)[0])
    assert samples.shape == (4, 8, 8, 1)
    with pytest.raises(ConfigError, match="does not fit"):
        generate(
            config.loop.model_dir,
            4,
            seed=0,
            generator=sequential_models(resolved.replace(model=dict(z_dim=3)))[0],
        )


def test_models_file_missing_builders_is_an_error(tiny, tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(
        ConfigError, match="does not define build_generator and build_discriminator"
    ):
        train_lib.run(tiny(model=dict(models=str(path))))


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tiny):
    def poisoned(config):
        g, d, ema = models.build_models(config)
        x = keras.layers.Lambda(lambda t: t * float("nan"))(d.get_layer("features").output)
        bad_d = keras.Model(d.inputs, keras.layers.Dense(1, name="logits2")(x))
        return g, bad_d, ema

    config = tiny(loss=dict(fm_layers=()))
    with pytest.raises(TrainingDiverged, match="between steps 1 and 2"):
        train_lib.run(config, build_models=poisoned)
    assert tf.train.latest_checkpoint(os.path.join(config.loop.model_dir, "checkpoints")) is None


def test_model_dir_of_another_architecture_is_refused_untouched(tiny):
    config = tiny()
    train_lib.run(config)
    before = checkpoint_values(config.loop.model_dir)
    listing = sorted(os.listdir(config.loop.model_dir))
    other = config.replace(model=dict(z_dim=16), loop=dict(train_steps=8))
    with pytest.raises(ConfigError, match="--z_dim: 8 -> 16"):
        train_lib.run(other)
    assert sorted(os.listdir(config.loop.model_dir)) == listing
    assert max_difference(before, checkpoint_values(config.loop.model_dir)) == 0.0


def test_unreadable_config_json_is_a_clear_error(tiny):
    config = tiny()
    os.makedirs(config.loop.model_dir)
    with open(os.path.join(config.loop.model_dir, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ConfigError, match="cannot read .*config.json"):
        train_lib.run(config)


def test_batch_that_does_not_split_is_an_error(tiny):
    with pytest.raises(ConfigError, match="does not split over 3 replicas"):
        train_lib.run(tiny(runtime=dict(strategy="mirrored", cpu_replicas=3)))


@pytest.mark.parametrize("target, extra_passes", [("ema", 1), ("batch", 2)])
def test_alternating_step_runs_only_the_discriminator_passes_it_needs(tiny, target, extra_passes):
    """The generator update reuses the discriminator update's generated batch and, with
    the moving-average target, its real features: against --update=simultaneous (one
    forward pass for both updates) it adds the updated discriminator's pass over the
    fakes, plus one over the real batch for a batch target. No second generator pass."""
    from ganfm import flops

    def step_flops(config):
        trainer, config = build_trainer(config)
        spec = tf.TensorSpec([1, config.loop.batch_size, 8, 8, 1], tf.float32)
        step = tf.function(trainer._replica_step).get_concrete_function(spec)
        return flops.graph_flops(step), trainer

    loss = dict(fm_target=target)
    alternating, trainer = step_flops(tiny(loss=loss))
    simultaneous, _ = step_flops(tiny(loss=loss, optimizer=dict(update="simultaneous")))
    d = trainer.discriminator
    spec = tf.TensorSpec([trainer.global_batch, 8, 8, 1], tf.float32)
    d_pass = flops.graph_flops(
        tf.function(lambda x: d(x, training=True)).get_concrete_function(spec)
    )
    assert alternating - simultaneous == pytest.approx(extra_passes * d_pass, rel=0.05)
