"""Evaluation on real digits: the domain classifier, the figures, --eval_every, export."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from test_cli import assert_one_line_error

from conftest import REPO, run_python, tiny_config
from ganfm import checkpointing, classifier, data, evaluation, inception, train_lib
from ganfm.config import DataConfig
from ganfm.errors import ConfigError
from ganfm.sample import generate

FIGURES = ("fd", "kid", "kid_std", "precision", "recall", "classes_covered", "class_kl")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, classifier_cache):
    """A tiny digits run on 2 replicas, evaluated every 2 steps: its model_dir."""
    model_dir = tmp_path_factory.mktemp("eval") / "run"
    config = tiny_config(
        model_dir,
        runtime=dict(strategy="mirrored", cpu_replicas=2, deterministic=True, seed=3),
        loop=dict(
            train_steps=6,
            eval_every=2,
            eval_samples=60,
            classifier_cache=classifier_cache,
            checkpoint_every=4,
            keep_checkpoints=1,
        ),
    )
    train_lib.run(config)
    return str(model_dir)


@pytest.mark.slow
def test_domain_classifier_reaches_90_percent_on_digits_and_is_cached(tmp_path):
    train = data.load_source(DataConfig("digits"))
    test = data.load_source(DataConfig("digits"), split="test")
    lines = []
    trained = classifier.load_or_train(train, test, str(tmp_path), log=lines.append)
    assert "Training the digits domain classifier" in lines[0]
    assert trained.test_accuracy >= 0.9
    features, predicted = trained.features_and_predictions(test.images)
    assert features.shape == (len(test.images), 128)
    assert np.mean(predicted == test.labels) == pytest.approx(trained.test_accuracy, abs=1e-6)

    def must_not_train(line):
        raise AssertionError(f"trained again: {line}")

    cached = classifier.load_or_train(train, test, str(tmp_path), log=must_not_train)
    np.testing.assert_allclose(cached.features_and_predictions(test.images)[0], features, atol=1e-5)


def test_figures_on_real_digits_grow_when_classes_are_dropped_or_images_shift(classifier_cache):
    config = tiny_config("/unused")
    evaluator = evaluation.Evaluator(config, 1000, classifier_cache, log=lambda _: None)
    held_out = evaluator.held_out
    labels = data.load_source(config.data, split="test").labels
    assert len(held_out) == len(labels) == 364
    floor = evaluator.score(held_out)
    assert floor["classes_covered"] == 10 and floor["class_kl"] < 0.01
    assert floor["precision"] > 0.7 and floor["recall"] > 0.7
    test = data.load_source(config.data, split="test")
    half = evaluator.score(test.images[test.labels < 5])
    assert half["fd"] > 3 * floor["fd"]
    assert half["kid"] > 5 * max(floor["kid"], floor["kid_std"])
    assert half["classes_covered"] == 5
    assert half["class_kl"] == pytest.approx(np.log(2), abs=0.05)
    assert half["recall"] < floor["recall"] - 0.2
    darker = evaluator.score((test.images // 2).astype(np.uint8))
    assert darker["fd"] > 3 * floor["fd"]
    reference = evaluator.score(evaluator.reference)
    assert reference["fd"] == pytest.approx(0.0, abs=1e-6)


def event_scalars(model_dir):
    acc = event_accumulator.EventAccumulator(model_dir, size_guidance={"tensors": 0})
    acc.Reload()
    values = {}
    for tag in acc.Tags()["tensors"]:
        values[tag] = {e.step: tf.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)}
    return values


def test_eval_every_logs_figures_and_keeps_the_best_checkpoint(digits_run):
    scalars = event_scalars(digits_run)
    for name in FIGURES:
        assert set(scalars[f"eval/{name}"]) == {2, 4, 6}, name
        assert f"eval_held_out/{name}" in scalars
    fds = {}
    for step in (2, 4, 6):
        with open(os.path.join(digits_run, "checkpoints", f"ckpt-{step}.eval.json")) as f:
            report = json.load(f)
        fds[step] = report["generated"]["fd"]
        assert report["held_out"]["classes_covered"] == 10
    best = checkpointing.read_best(digits_run)
    best_step = min(fds, key=fds.get)
    assert best["step"] == best_step and best["fd"] == pytest.approx(fds[best_step])
    # Only the best checkpoint's files are kept in best/, complete.
    files = sorted(os.listdir(os.path.join(digits_run, "best")))
    assert files == [
        "best.json",
        f"ckpt-{best_step}.data-00000-of-00001",
        f"ckpt-{best_step}.index",
    ]
    assert scalars["eval/best_fd"][6] == pytest.approx(fds[best_step], rel=1e-5)
    # Evaluation steps are checkpoint steps even off --checkpoint_every (4): ckpt-2 existed.
    assert os.path.exists(os.path.join(digits_run, "checkpoints", "ckpt-2.eval.json"))
    best_samples = generate(digits_run, 8, seed=0, checkpoint="best")
    latest_samples = generate(digits_run, 8, seed=0)
    assert best_samples.shape == latest_samples.shape == (8, 8, 8, 1)


def test_evaluate_on_the_run_equals_its_eval_every_figures(digits_run, classifier_cache):
    from ganfm.evaluate import evaluate

    path = os.path.join(digits_run, "checkpoints", "ckpt-6")
    report, output = evaluate(digits_run, 60, seed=3, classifier_cache=classifier_cache)
    assert report["checkpoint"] == path and output == path + ".eval.json"
    with open(output) as f:
        written = json.load(f)
    # The run's seed is 3: the same noise, reference and classifier as during training.
    assert written["generated"]["fd"] == pytest.approx(report["generated"]["fd"])
    events = event_scalars(digits_run)
    assert report["generated"]["fd"] == pytest.approx(events["eval/fd"][6], rel=1e-4)
    assert report["held_out"]["fd"] == pytest.approx(events["eval_held_out/fd"][6], rel=1e-4)
    assert report["classifier"]["test_accuracy"] >= 0.9


@pytest.mark.slow
def test_evaluate_command_prints_every_figure_offline(digits_run, classifier_cache):
    result = run_python(
        "-m",
        "ganfm.evaluate",
        f"--model_dir={digits_run}",
        "--num_samples=100",
        GANFM_CACHE=classifier_cache,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for name in ("num_images", *FIGURES):
        assert f"\n{name} " in out, name
    assert "held-out (floor)" in out and "generated class shares:" in out
    # Offline, Inception-v3 is skipped with a one-line reason; online it is measured.
    assert "Inception-v3 FID/KID skipped" in out or "inception_fd" in out
    assert "Wrote " in out and os.path.exists(
        os.path.join(digits_run, "checkpoints", "ckpt-6.eval.json")
    )


@pytest.mark.slow
def test_evaluate_errors_are_one_line(tmp_path, digits_run):
    missing = run_python("-m", "ganfm.evaluate", f"--model_dir={tmp_path}")
    assert_one_line_error(missing, tmp_path / "x", "has no config.json")
    few = run_python("-m", "ganfm.evaluate", f"--model_dir={digits_run}", "--num_samples=5")
    assert_one_line_error(few, tmp_path / "x", "must be >= 10")
    best = run_python("-m", "ganfm.evaluate", f"--model_dir={digits_run}", "--checkpoint=nope")
    assert_one_line_error(best, tmp_path / "x", "is not a checkpoint")


def test_eval_every_needs_labels_and_a_held_out_split(tmp_path, classifier_cache):
    config = tiny_config(
        tmp_path / "run",
        data=dict(dataset="synthetic", image_size=8, channels=1),
        loop=dict(eval_every=2, classifier_cache=classifier_cache),
    )
    with pytest.raises(ConfigError, match="no held-out split"):
        train_lib.run(config)
    assert not os.path.exists(tmp_path / "run")


def test_inception_is_skipped_offline_with_one_line_and_bad_files_are_refused(
    monkeypatch, tmp_path
):
    def offline(weights):
        raise OSError("URL fetch failure: Name or service not known")

    monkeypatch.setattr(inception, "_build", offline)
    features, why = inception.load("")
    assert features is None and "skipped" in why and "--inception_weights" in why
    assert "\n" not in why
    assert inception.load("none")[0] is None
    with pytest.raises(ConfigError, match="does not exist"):
        inception.load(str(tmp_path / "missing.h5"))


@pytest.mark.slow
def test_inception_figures_from_a_weights_file(tmp_path, digits_run, classifier_cache):
    """The real 299x299 InceptionV3 path, with random weights in Keras's download format."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from ganfm.evaluate import evaluate

    model = keras.applications.InceptionV3(include_top=False, pooling="avg", weights=None)
    weights = str(tmp_path / inception.KERAS_WEIGHTS_FILE)
    with h5py.File(weights, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    report, _ = evaluate(
        digits_run, 20, inception_weights=weights, classifier_cache=classifier_cache
    )
    for key in ("inception_fd", "inception_kid", "inception_kid_std"):
        assert np.isfinite(report["generated"][key]) and np.isfinite(report["held_out"][key])
    assert report["inception_weights"] == weights
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="is not InceptionV3 no-top weights"):
        inception.load(str(bad))


@pytest.mark.slow
def test_exported_savedmodel_serves_the_samples_without_ganfm(tmp_path, digits_run):
    export_dir = tmp_path / "exported"
    result = run_python(
        "-m", "ganfm.export", f"--model_dir={digits_run}", f"--export_dir={export_dir}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = generate(digits_run, 12, seed=7)
    script = f"""
import importlib.util, sys
assert importlib.util.find_spec("ganfm") is None, "ganfm is importable"
import numpy as np, tensorflow as tf
m = tf.saved_model.load({str(export_dir)!r})
seeded = m.signatures["from_seed"](seed=tf.constant(7, tf.int64), num=tf.constant(12))["images"]
noise = tf.random.normal([5, 8])
served = m.signatures["serving_default"](noise=noise)["images"]
assert served.dtype == tf.uint8 and served.shape == (5, 8, 8, 1), served.shape
np.save({str(tmp_path / "served.npy")!r}, seeded.numpy())
"""
    # -I: no PYTHONPATH, no user site, no current directory; run from elsewhere.
    import subprocess
    import sys

    served = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert served.returncode == 0, served.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "served.npy"), expected)

    again = run_python(
        "-m", "ganfm.export", f"--model_dir={digits_run}", f"--export_dir={export_dir}"
    )
    assert_one_line_error(again, tmp_path / "nothing", "already exists")
    assert os.path.isdir(export_dir / "variables")
    assert REPO  # The export ran from the repository, the check from tmp_path.


def test_compare_makes_a_table_over_seeds(digits_run, tmp_path):
    from ganfm import compare

    latest = compare.read_report(digits_run)  # ckpt-6.eval.json, written during training.
    best = compare.read_report(digits_run, "best")
    assert latest["step"] == 6 and best["step"] == checkpointing.read_best(digits_run)["step"]
    lines = compare.table({"fm": [latest, best], "adv": [latest]}).splitlines()
    assert lines[0].startswith("| run | seeds | FD | KID | precision | recall") and len(lines) == 5
    assert lines[2].startswith("| fm | 2 |") and "±" in lines[2] and "±" not in lines[3]
    assert lines[4].startswith("| held-out real images (floor)")
    assert compare.group_name("/runs/fm_s12/") == "fm" and compare.group_name("adv") == "adv"
    with pytest.raises(ConfigError, match="has not been evaluated"):
        compare.read_report(digits_run, "ckpt-5")


def fake_evaluated_run(path, **figures):
    """A run directory whose latest checkpoint has an evaluation report and nothing else."""
    ckpt_dir = path / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')
    (ckpt_dir / "ckpt-5.index").write_bytes(b"")
    generated = dict(num_images=100, kid=1.0, precision=0.5, recall=0.5, class_kl=0.1)
    generated.update(classes_covered=10, **figures)
    report = dict(step=5, generated=generated, held_out=dict(generated, fd=0.2))
    (ckpt_dir / "ckpt-5.eval.json").write_text(json.dumps(report))
    return str(path)


def test_compare_pairs_groups_by_seed(tmp_path):
    fm = {1: (10.0, 0.6), 2: (20.0, 0.4), 3: (30.0, 0.7), 4: (1.0, 0.9)}  # seed: fd, precision
    adv = {1: (12.0, 0.5), 2: (19.0, 0.5), 3: (35.0, 0.5), 9: (1.0, 0.5)}
    runs = [
        fake_evaluated_run(tmp_path / f"{name}_s{seed}", fd=fd, precision=precision)
        for name, group in (("fm", fm), ("adv", adv))
        for seed, (fd, precision) in group.items()
    ]
    runs.append(fake_evaluated_run(tmp_path / "unseeded", fd=5.0))
    result = run_python("-m", "ganfm.compare", *runs)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| fm | 4 | 15.25 ± 12.53 |" in out and "| unseeded | 1 | 5.00 |" in out
    # Only seeds 1-3 are shared: fd differences -2, 1, -5 (mean -2, s.e. 3 / sqrt(3)).
    assert "fm against adv, seeds 1 2 3:" in out and "unseeded" not in out.split("fm against")[1]
    difference = next(line for line in out.splitlines() if line.startswith("| fm − adv"))
    assert difference.split(" | ")[1:3] == ["-2.00 ± 1.73", "0.00 ± 0.00"]
    wins = next(line for line in out.splitlines() if line.startswith("| seeds where fm"))
    assert wins.split(" | ")[1:4] == ["2 of 3", "0 of 3", "2 of 3"]  # FD, KID, precision
    assert "FD per seed, fm: 10.00 20.00 30.00" in out
    assert "FD per seed, adv: 12.00 19.00 35.00" in out
