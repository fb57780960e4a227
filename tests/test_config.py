import pytest

from ganfm.config import Config, ConfigError, architecture_differences


def test_defaults_validate_and_round_trip_json():
    config = Config().validate()
    again = Config.from_json(config.to_json())
    assert again == config
    assert isinstance(again.loss.fm_layers, tuple)


def test_replace_changes_only_named_fields():
    config = Config().replace(loop=dict(batch_size=8), loss=dict(fm_weight=0.5))
    assert config.loop.batch_size == 8 and config.loss.fm_weight == 0.5
    assert config.loop.train_steps == Config().loop.train_steps


@pytest.mark.parametrize(
    "sections, fragment",
    [
        (dict(data=dict(dataset="imagenet")), "--dataset='imagenet' is unknown"),
        (dict(data=dict(dataset="folder:")), "needs a name or path"),
        (dict(data=dict(image_size=30)), "--image_size=30 is not supported"),
        (dict(data=dict(channels=2)), "--channels=2"),
        (dict(data=dict(dataset="mnist", data_dir="/no/such/dir")), "is not a directory"),
        (dict(loss=dict(adv_loss="foo")), "--adv_loss='foo'"),
        (dict(loss=dict(fm_weight=-1.0)), "--fm_weight=-1.0 must be >= 0"),
        (dict(loss=dict(fm_moments=3)), "--fm_moments=3 is unsupported; use 1"),
        (dict(loss=dict(fm_layer_weights=(1.0, 2.0))), "one weight per layer"),
        (dict(loss=dict(fm_only=True, fm_weight=0.0)), "--fm_only needs feature matching"),
        (dict(optimizer=dict(g_lr=0.0)), "--g_lr=0.0 must be > 0"),
        (dict(optimizer=dict(beta1=1.0)), "--beta1=1.0 must be in [0, 1)"),
        (dict(optimizer=dict(d_steps=0)), "--d_steps=0"),
        (dict(loop=dict(train_steps=0)), "--train_steps=0 must be > 0"),
        (dict(loop=dict(batch_size=-4)), "--batch_size=-4"),
        (dict(loop=dict(summary_every=75)), "--summary_every=75 is not a multiple"),
        (dict(loop=dict(checkpoint_every=10)), "--checkpoint_every=10 is not a multiple"),
        (dict(runtime=dict(strategy="tpu_pod")), "--strategy='tpu_pod'"),
        (dict(runtime=dict(cpu_replicas=2)), "only applies to --strategy=mirrored"),
        (dict(model=dict(models="/no/such.py")), "is not a file"),
        (dict(loop=dict(profile_steps=(5, 5))), "must be START,END"),
    ],
)
def test_bad_values_name_the_value(sections, fragment):
    with pytest.raises(ConfigError) as info:
        Config().replace(**sections).validate()
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_json_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown keys"):
        Config.from_dict({"loop": {"batch": 3}})


def test_architecture_differences_lists_shape_settings_only():
    a = Config().replace(data=dict(image_size=8, channels=1))
    b = a.replace(data=dict(image_size=16), loop=dict(train_steps=99), model=dict(z_dim=3))
    diffs = architecture_differences(a, b)
    assert diffs == ["--image_size: 8 -> 16", "--z_dim: 64 -> 3"]
