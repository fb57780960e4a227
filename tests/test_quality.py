"""The default run (`python train.py`) on digits learns every digit: a small classifier,
trained here and cached, assigns its samples to all 10 classes, none above 25%."""

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from conftest import REPO


def digits_classifier(cache_dir):
    """An RBF SVM on the 8x8 digits (pixel values 0..16); ~97% held-out accuracy."""
    path = os.path.join(cache_dir, "digits_svc.pkl")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    train, test = order[:1400], order[1400:]
    classifier = SVC(gamma=0.001, C=10.0).fit(digits.data[train], digits.target[train])
    accuracy = classifier.score(digits.data[test], digits.target[test])
    assert accuracy >= 0.95, accuracy
    with open(path, "wb") as f:
        pickle.dump(classifier, f)
    return classifier


@pytest.mark.slow
def test_default_run_covers_all_ten_digits(tmp_path, request):
    from ganfm.sample import generate

    model_dir = tmp_path / "default_run"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "train.py", f"--model_dir={model_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"default run: {elapsed:.0f}s\n" + "\n".join(result.stdout.splitlines()[-3:]))

    classifier = digits_classifier(str(request.config.cache.mkdir("ganfm_quality")))
    samples = generate(str(model_dir), num=2000, seed=1)
    assert samples.shape == (2000, 8, 8, 1)
    pixels = samples.reshape(len(samples), -1).astype(np.float64) * (16.0 / 255.0)
    fractions = np.bincount(classifier.predict(pixels), minlength=10) / len(samples)
    print("class fractions:", np.round(fractions, 3).tolist())
    assert (fractions > 0).all(), fractions
    assert fractions.max() <= 0.25, fractions
