"""The command-line tools as a user runs them: real processes, real files."""

import os

import numpy as np
import pytest

from conftest import REPO, SMOKE_FLAGS, run_python

run = run_python


def assert_one_line_error(result, model_dir, fragment):
    """Our message is one line, the last; TensorFlow's own start-up lines may precede it
    (CUDA probing on a machine without a GPU)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    program = os.path.basename(result.args[1]) if result.args[1] != "-m" else None
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(f"{program}: error:") or (program is None and ": error:" in line)
    ]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1], result.stderr
    assert fragment in errors[0], errors[0]
    assert not os.path.exists(model_dir)


# Checked before TensorFlow loads: fast.
FLAG_ERRORS = [
    (["--adv_loss=foo"], "--adv_loss"),
    (["--batch_size=abc"], "batch_size"),
    (["--nonexistent_flag=1"], "nonexistent_flag"),
    (["positional"], "unexpected arguments"),
    (["--image_size=30"], "--image_size=30 is not supported"),
    (["--train_steps=0"], "--train_steps=0 must be > 0"),
    (["--g_lr=-1"], "--g_lr=-1.0 must be > 0"),
    (["--fm_weight=-2"], "--fm_weight=-2.0 must be >= 0"),
    (["--summary_every=7"], "not a multiple of --steps_per_loop"),
    (["--dataset=imagenet"], "--dataset='imagenet' is unknown"),
    (["--dataset=mnist", "--data_dir=/no/such/dir"], "is not a directory"),
    (["--models=/no/such/models.py"], "is not a file"),
    (["--fm_layer_weights=a"], "must be numbers"),
    (["--cpu_replicas=2"], "only applies to --strategy=mirrored"),
]


@pytest.mark.parametrize("args, fragment", FLAG_ERRORS, ids=[a[0][0] for a in FLAG_ERRORS])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, args, fragment):
    model_dir = tmp_path / "run"
    result = run("train.py", f"--model_dir={model_dir}", *args)
    assert_one_line_error(result, model_dir, fragment)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--fm_layers=nope"], "unknown layer 'nope'"),
        (["--dataset=mnist", "--data_dir={empty}"], "has no train-images-idx3-ubyte"),
        (["--dataset=folder:{empty}"], "holds no"),
        (["--strategy=mirrored", "--cpu_replicas=3"], "does not split over 3 replicas"),
        (["--dataset=folder:{damaged}"], "1 of 2 image files are damaged: "),
        (["--model_dir={file}/run"], "cannot be created: "),
    ],
    ids=[
        "fm_layers",
        "empty_data_dir",
        "empty_folder",
        "batch_split",
        "damaged_image",
        "model_dir_under_a_file",
    ],
)
def test_bad_inputs_found_after_loading_give_one_line_and_exit_2(tmp_path, args, fragment):
    model_dir = tmp_path / "run"
    (tmp_path / "empty").mkdir()
    (tmp_path / "damaged").mkdir()
    png = tf_png(np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "damaged" / "good.png").write_bytes(png)
    (tmp_path / "damaged" / "cut.png").write_bytes(png[:20])
    (tmp_path / "file").write_text("not a directory")
    paths = dict(empty=tmp_path / "empty", damaged=tmp_path / "damaged", file=tmp_path / "file")
    args = [a.format(**paths) for a in args]
    result = run("train.py", f"--model_dir={model_dir}", "--batch_size=16", *args)
    assert_one_line_error(result, model_dir, fragment)


def tf_png(image) -> bytes:
    import tensorflow as tf

    return tf.io.encode_png(image).numpy()


@pytest.mark.slow
def test_a_tf_config_that_does_not_parse_gives_one_line_and_exit_2(tmp_path):
    model_dir = tmp_path / "run"
    result = run(
        "train.py", "--strategy=multi_worker", f"--model_dir={model_dir}", TF_CONFIG="{not json"
    )
    assert_one_line_error(result, model_dir, "TF_CONFIG does not parse")


@pytest.mark.slow
def test_a_model_dir_of_another_architecture_gives_one_line_and_is_untouched(tmp_path):
    model_dir = tmp_path / "run"
    first = run("train.py", f"--flagfile={SMOKE_FLAGS}", f"--model_dir={model_dir}")
    assert first.returncode == 0, first.stderr[-2000:]
    listing = {p: os.path.getmtime(p) for p in model_dir.rglob("*")}
    other = run(
        "train.py", f"--flagfile={SMOKE_FLAGS}", f"--model_dir={model_dir}", "--d_filters=16"
    )
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]
    line = other.stderr.strip().splitlines()[-1]
    assert line.startswith("train.py: error: --model_dir=") and "--d_filters: 8 -> 16" in line
    assert {p: os.path.getmtime(p) for p in model_dir.rglob("*")} == listing


def test_helpfull_lists_the_flags():
    result = run("train.py", "--helpfull")
    for flag in ("--fm_layers", "--fm_target", "--cpu_replicas", "--flagfile", "--d_steps"):
        assert flag in result.stdout


VALIDATE_PRESET = """
import sys, train
from absl import flags
flags.FLAGS(["train.py", "--flagfile=" + sys.argv[1]])
config = train.config_from_flags()
# Every check but the data folder's presence (a preset may name one not installed here).
config.replace(data=dict(data_dir="")).validate()
print("valid", config.data.dataset)
"""


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(REPO, "launch", "presets"))))
def test_every_preset_flagfile_is_valid(name):
    result = run("-c", VALIDATE_PRESET, os.path.join(REPO, "launch", "presets", name))
    assert result.returncode == 0 and "valid" in result.stdout, result.stderr


def event_tags(model_dir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(model_dir, size_guidance={"tensors": 0})
    acc.Reload()
    return set(acc.Tags()["tensors"])


@pytest.mark.slow
def test_train_resume_and_sample_from_the_command_line(tmp_path):
    model_dir = tmp_path / "run"
    preset = SMOKE_FLAGS
    first = run("train.py", f"--flagfile={preset}", f"--model_dir={model_dir}")
    assert first.returncode == 0, first.stderr
    assert "step 4/4" in first.stdout and "img/s" in first.stdout and "eta" in first.stdout
    files = set(os.listdir(model_dir))
    assert {"config.json", "samples.png", "checkpoints"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert os.path.exists(model_dir / "checkpoints" / "ckpt-4.index")
    tags = event_tags(str(model_dir))
    for tag in ("loss/d", "loss/g_adv", "loss/g_fm", "d_out/real_prob", "d_out/fake_prob"):
        assert tag in tags
    assert {"samples/ema", "samples/real", "perf/images_per_second"} <= tags

    more = run("train.py", f"--flagfile={preset}", f"--model_dir={model_dir}", "--train_steps=6")
    assert more.returncode == 0, more.stderr
    assert "Resumed from" in more.stdout and "at step 4" in more.stdout
    assert os.path.exists(model_dir / "checkpoints" / "ckpt-6.index")

    outputs = []
    for name, seed in (("a.npy", 1), ("b.npy", 1), ("c.npy", 2)):
        result = run(
            "-m",
            "ganfm.sample",
            f"--model_dir={model_dir}",
            "--num=10",
            f"--output={tmp_path / name}",
            f"--seed={seed}",
        )
        assert result.returncode == 0, result.stderr
        outputs.append(np.load(tmp_path / name))
    assert outputs[0].shape == (10, 8, 8, 1) and outputs[0].dtype == np.uint8
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])
    grid = run("-m", "ganfm.sample", f"--model_dir={model_dir}", f"--output={tmp_path / 'g.png'}")
    assert grid.returncode == 0 and (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_cpu_replicas_with_resized_images(tmp_path):
    """Splitting the CPU happens before the data set is resized with TensorFlow ops."""
    preset = SMOKE_FLAGS
    result = run(
        "train.py",
        f"--flagfile={preset}",
        f"--model_dir={tmp_path / 'run'}",
        "--strategy=mirrored",
        "--cpu_replicas=2",
        "--image_size=16",
        "--train_steps=2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 replica(s)" in result.stdout and "16x16x1" in result.stdout


def test_sample_errors_are_one_line(tmp_path):
    missing = run("-m", "ganfm.sample", f"--model_dir={tmp_path}", "--output=x.npy")
    assert_one_line_error(missing, tmp_path / "nothing", "has no config.json")
    wrong = run("-m", "ganfm.sample", f"--model_dir={tmp_path}", "--output=x.gif")
    assert_one_line_error(wrong, tmp_path / "nothing", "must end with .png or .npy")
