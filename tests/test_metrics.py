"""The evaluation metrics on point clouds whose answers are known."""

import numpy as np
import pytest

from ganfm import metrics


def clouds(n=2000, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), rng.normal(size=(n, dim))


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
    a, b = clouds()
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    same = metrics.frechet_distance(a, b)
    assert same < 0.2
    # The mean term is exact: a shift of 0.5 in 16 dimensions adds 16 * 0.25 = 4.
    assert metrics.frechet_distance(a, b + 0.5) == pytest.approx(same + 4.0, abs=0.15)
    assert metrics.frechet_distance(a, b * 2.0) > 10 * same + 1.0


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 3)) * [1.0, 2.0, 3.0]
    b = rng.normal(size=(20000, 3)) * [2.0, 2.0, 1.0] + [1.0, 0.0, 0.0]
    # Diagonal covariances: |mu|^2 + sum (s_a - s_b)^2 = 1 + 1 + 0 + 4.
    assert metrics.frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)


def test_dropping_classes_raises_frechet_distance_and_kid():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(10, 8)) * 4
    labels = rng.integers(0, 10, 4000)
    points = centres[labels] + rng.normal(size=(4000, 8))
    real, fake = points[:2000], points[2000:]
    fake_labels = labels[2000:]
    half = fake[fake_labels < 5]
    assert metrics.frechet_distance(real, half) > 5 * metrics.frechet_distance(real, fake)
    kid_all, std_all = metrics.kernel_inception_distance(real, fake, subsets=20)
    kid_half, _ = metrics.kernel_inception_distance(real, half, subsets=20)
    assert kid_half > kid_all + 10 * std_all


def test_kid_is_unbiased_near_zero_for_two_halves_of_one_set():
    a, b = clouds(n=1000)
    kid, std = metrics.kernel_inception_distance(a, b)
    assert abs(kid) < 3 * std + 1e-3 and std > 0
    # FD is biased: the same two small sets give a clearly positive value.
    small_a, small_b = a[:100], b[:100]
    assert metrics.frechet_distance(small_a, small_b) > 0.5
    kid_small, std_small = metrics.kernel_inception_distance(small_a, small_b)
    assert abs(kid_small) < 3 * std_small + 1e-2


def test_kid_grows_with_a_shift():
    a, b = clouds()
    kid, std = metrics.kernel_inception_distance(a, b + 1.0, subsets=20)
    assert kid > 0.1 and kid > 20 * std


def test_precision_and_recall_of_identical_disjoint_and_nested_clouds():
    a, b = clouds(n=1000, dim=2)
    p, r = metrics.precision_recall(a, b)
    assert p > 0.9 and r > 0.9
    p, r = metrics.precision_recall(a, b + 100.0)
    assert (p, r) == (0.0, 0.0)
    # Fake covers only the left half of real: precise, but recalls about half of it.
    left = b[b[:, 0] < 0]
    p, r = metrics.precision_recall(a, left)
    assert p > 0.9
    assert 0.4 < r < 0.65


def test_precision_is_the_share_of_fakes_inside_the_real_manifold():
    real = np.stack([np.arange(100.0), np.zeros(100)], 1)  # Points 1 apart on a line.
    fake = np.array([[50.2, 0.0], [50.0, 0.5], [50.0, 3.0], [500.0, 0.0]])
    # k=3: every real radius is 2 (3 at the ends); fakes at distance 0.2 and 0.5 are in.
    precision, _ = metrics.precision_recall(real, fake, k=3)
    assert precision == pytest.approx(0.5)


def test_class_coverage_counts_classes_and_measures_kl():
    uniform = np.full(4, 0.25)
    full = metrics.class_coverage(np.array([0, 1, 2, 3] * 25), uniform)
    assert full["classes_covered"] == 4 and full["class_kl"] == pytest.approx(0.0)
    one = metrics.class_coverage(np.zeros(100, np.int64), uniform)
    assert one["classes_covered"] == 1 and one["class_kl"] == pytest.approx(np.log(4))
    # A class with 2% of the samples against 25% of the data is under a quarter: not covered.
    skewed = metrics.class_coverage(np.array([0] * 49 + [1] * 49 + [2] * 2), uniform)
    assert skewed["classes_covered"] == 2
    assert skewed["histogram"] == pytest.approx([0.49, 0.49, 0.02, 0.0])


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="features must be"):
        metrics.frechet_distance(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="needs more than 3 points"):
        metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
