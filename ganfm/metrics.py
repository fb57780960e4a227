"""Sample-quality metrics on feature vectors (numpy, float64): pure functions.

Every function takes [N, D] feature arrays (a classifier's penultimate layer, or
Inception-v3 pool features) or class predictions, so the same code serves the domain
classifier and Inception, and tests can feed it synthetic point clouds.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_NEIGHBOURS = 3
COVERED_SHARE = 0.25
_CHUNK = 2048


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to a and b.

    Heusel et al. 2017 ("GANs trained by a two time-scale update rule converge to a
    local Nash equilibrium"). Biased upwards for small N: compare figures at equal N.
    """
    a, b = _as_features(a), _as_features(b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # Singular covariances (collapsed samples, dead features) are expected here.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(covmean).all():
            # Regularize a near-singular product, as pytorch-fid does.
            offset = np.eye(len(mu_a)) * 1e-6
            covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    covmean = np.real(covmean)
    distance = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2.0 * covmean)
    return float(max(distance, 0.0))


def kernel_inception_distance(
    a: np.ndarray,
    b: np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """Unbiased MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3, mean and std over subsets.

    Binkowski et al. 2018 ("Demystifying MMD GANs"). Unbiased: two samples of one
    distribution give ~0 (and can give slightly negative values) at any N. Subsets
    hold min(subset_size, half the smaller set) points.
    """
    a, b = _as_features(a), _as_features(b)
    # At most half of the smaller set, so subsets differ and the std means something.
    n = min(subset_size, min(len(a), len(b)) // 2)
    if n < 2:
        raise ValueError(f"KID needs at least 4 samples per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    dim = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), n, replace=False)]
        y = b[rng.choice(len(b), n, replace=False)]
        k_xx = (x @ x.T / dim + 1.0) ** 3
        k_yy = (y @ y.T / dim + 1.0) ** 3
        k_xy = (x @ y.T / dim + 1.0) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        values.append(within - 2.0 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values))


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = PR_NEIGHBOURS
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), k-NN manifolds.

    Each set's manifold is the union of balls around its points with radius the distance
    to the point's k-th nearest neighbour. Precision: the share of fake points inside the
    real manifold; recall: the share of real points inside the fake manifold. Use sets
    of equal size: recall grows with the number of fake points.
    """
    real, fake = _as_features(real), _as_features(fake)
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    return _inside(fake, real, real_radii), _inside(real, fake, fake_radii)


def class_coverage(predicted: np.ndarray, data_shares: np.ndarray) -> dict[str, object]:
    """How the samples spread over the data's classes, by a classifier's predictions.

    covered: classes whose share of the samples is at least COVERED_SHARE of their share
    of the data. kl: KL(p_samples || p_data) = sum p_s log(p_s / p_d), 0 for a perfect
    match, log(K) for samples all in one of K equally likely classes.
    """
    data_shares = np.asarray(data_shares, np.float64)
    counts = np.bincount(np.asarray(predicted), minlength=len(data_shares))
    shares = counts / max(counts.sum(), 1)
    nonzero = shares > 0
    kl = float(np.sum(shares[nonzero] * np.log(shares[nonzero] / data_shares[nonzero])))
    covered = int(np.sum(shares >= COVERED_SHARE * data_shares))
    return {"histogram": shares.tolist(), "classes_covered": covered, "class_kl": max(kl, 0.0)}


def _as_features(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {x.shape}")
    return x


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each point to its k-th nearest other point."""
    if len(x) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points, got {len(x)}")
    radii = np.empty(len(x))
    for start in range(0, len(x), _CHUNK):
        d = _squared_distances(x[start : start + _CHUNK], x)
        # Column k of the sorted row: index 0 is the point itself (distance 0).
        radii[start : start + _CHUNK] = np.partition(d, k, axis=1)[:, k]
    return radii


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    hits = 0
    for start in range(0, len(points), _CHUNK):
        d = _squared_distances(points[start : start + _CHUNK], centres)
        hits += int(np.any(d <= radii[None, :], axis=1).sum())
    return hits / len(points)
