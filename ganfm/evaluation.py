"""Scores sets of images against a run's training data: what `python -m ganfm.evaluate`
prints and what --eval_every logs.

Protocol: the reference is up to N images of the training split (a fixed, seeded
subset); generated images and the held-out split (the floor: what real images score)
are each compared with it. Features: the domain classifier's penultimate layer
(ganfm.classifier) and, when weights are available, Inception-v3's pool layer.
FD is biased upwards for small sets, so compare FDs measured with the same N; KID is
unbiased at any N. Precision/recall use equally many points of both sets.
"""

from __future__ import annotations

import numpy as np

from ganfm import classifier, data, inception, metrics
from ganfm.config import Config
from ganfm.errors import ConfigError

REFERENCE_SEED = 0
SCALARS = (
    "fd",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "classes_covered",
    "class_kl",
    "inception_fd",
    "inception_kid",
    "inception_kid_std",
)


class Evaluator:
    """Reference features are computed once; score() then costs the new images only."""

    def __init__(
        self,
        config: Config,
        num_samples: int,
        cache_dir: str,
        inception_weights: str = inception.OFF,
        log=print,
    ):
        self.num_samples = num_samples
        self.notes: list[str] = []
        train = data.load_source(config.data)
        try:
            held_out = data.load_source(config.data, split="test")
        except ConfigError as e:
            held_out = None
            self.notes.append(f"no floor: {e}")
        self.held_out = _subset(held_out.images, num_samples) if held_out else None
        self.reference = _subset(train.images, num_samples) if train.images is not None else None
        if self.reference is None:
            raise ConfigError(
                f"--dataset={train.name} is read from files; evaluation needs an in-memory "
                "labeled data set (digits, mnist, fashion_mnist, tfds:<name>)"
            )
        self.classifier = None
        if train.labels is None or held_out is None or held_out.labels is None:
            self.notes.append("no domain-classifier figures: they need labels and a held-out split")
        else:
            self.classifier = classifier.load_or_train(train, held_out, cache_dir, log=log)
            self.class_shares = np.asarray(self.classifier.info["class_shares"])
            self._reference_features, _ = self.classifier.features_and_predictions(self.reference)
        self.inception, why_not = inception.load(inception_weights)
        if why_not:
            self.notes.append(why_not)
        if self.inception is not None:
            self._reference_inception = self.inception(self.reference)
        if self.classifier is None and self.inception is None:
            raise ConfigError(f"nothing to evaluate {train.name} with: {'; '.join(self.notes)}")

    def score(self, images: np.ndarray) -> dict:
        """The figures of one uint8 [N, H, W, C] image set against the reference."""
        result: dict = {"num_images": int(len(images))}
        if self.classifier is not None:
            features, predicted = self.classifier.features_and_predictions(images)
            result.update(_distances(features, self._reference_features))
            result.update(metrics.class_coverage(predicted, self.class_shares))
        if self.inception is not None:
            distances = _distances(self.inception(images), self._reference_inception, pr=False)
            result.update({f"inception_{k}": v for k, v in distances.items()})
        return result

    def report(self, generated: np.ndarray) -> dict:
        """Generated and held-out figures, with what they were measured with."""
        report = {
            "num_reference": int(len(self.reference)),
            "generated": self.score(generated),
            "held_out": self.score(self.held_out) if self.held_out is not None else None,
            "notes": list(self.notes),
        }
        if self.classifier is not None:
            info = self.classifier.info
            report["classifier"] = {
                k: info[k] for k in ("fingerprint", "test_accuracy", "num_train", "num_test")
            }
        if self.inception is not None:
            report["inception_weights"] = self.inception.source
        return report


def scalars(result: dict) -> dict[str, float]:
    """The single-number figures of a score() result, for TensorBoard."""
    return {k: float(result[k]) for k in SCALARS if k in result}


def _distances(features: np.ndarray, reference: np.ndarray, pr: bool = True) -> dict:
    kid, kid_std = metrics.kernel_inception_distance(features, reference)
    result = {"fd": metrics.frechet_distance(features, reference), "kid": kid, "kid_std": kid_std}
    if pr:
        n = min(len(features), len(reference))
        result["precision"], result["recall"] = metrics.precision_recall(
            reference[:n], features[:n]
        )
    return result


def _subset(images: np.ndarray, num: int) -> np.ndarray:
    """A fixed, seeded subset in shuffled order (so any prefix is a fair sample too):
    every run and every evaluation compares with the same one."""
    order = np.random.default_rng(REFERENCE_SEED).permutation(len(images))
    return images[order[:num]]


def format_report(report: dict) -> str:
    """A small table for the terminal."""
    rows = [("", "generated", "held-out (floor)")]
    held = report["held_out"] or {}
    for key in ("num_images", *SCALARS):
        if key in report["generated"]:
            rows.append((key, _fmt(report["generated"][key]), _fmt(held.get(key))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    if "classifier" in report:
        c = report["classifier"]
        lines.append(
            f"features: domain classifier {c['fingerprint']} ({c['test_accuracy']:.4f} "
            f"held-out accuracy); reference: {report['num_reference']} training images"
        )
    hist = report["generated"].get("histogram")
    if hist:
        lines.append("generated class shares: " + " ".join(f"{s:.3f}" for s in hist))
    lines += report["notes"]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"
