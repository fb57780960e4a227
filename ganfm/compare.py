"""A markdown table of evaluated runs, grouped over seeds: mean +- std per group, then
the first group against each other one, paired by seed.

    python -m ganfm.compare runs/fm_s1 runs/fm_s2 runs/adv_s1 runs/adv_s2

A run's group is its directory name without a trailing _s<seed> (fm_s1 -> fm). Each run
must have been evaluated (`python -m ganfm.evaluate`): the newest checkpoint's
ckpt-N.eval.json is read, or the one named by --checkpoint.

Why paired: seeds of one configuration spread as widely as configurations differ, but two
runs with the same seed share their initial weights and data order, so the per-seed
difference is the sharper measurement (its mean +- standard error, and on how many seeds
the first group is better).
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
from absl import app, flags

from ganfm.cli import fail, parse_flags_or_exit, user_errors
from ganfm.errors import ConfigError

FLAGS = flags.FLAGS
COLUMNS = (  # (key in the report, title, format)
    ("fd", "FD", "{:.2f}"),
    ("kid", "KID", "{:.2f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("classes_covered", "classes", "{:.1f}"),
    ("class_kl", "class KL", "{:.4f}"),
)


def _define_flags() -> None:
    flags.DEFINE_string("checkpoint", "latest", "latest, best, or a checkpoint name (ckpt-N).")


# Figures where a larger value is the better one; for the others smaller is better.
HIGHER_IS_BETTER = frozenset({"precision", "recall", "classes_covered"})
_SEED_SUFFIX = re.compile(r"_s(\d+)$")


def group_name(run_dir: str) -> str:
    return _SEED_SUFFIX.sub("", os.path.basename(os.path.normpath(run_dir)))


def seed_of(run_dir: str) -> int | None:
    match = _SEED_SUFFIX.search(os.path.basename(os.path.normpath(run_dir)))
    return int(match.group(1)) if match else None


def read_report(run_dir: str, checkpoint: str = "latest") -> dict:
    from ganfm import checkpointing
    from ganfm.evaluate import EVAL_SUFFIX

    if checkpoint in (checkpointing.LATEST, checkpointing.BEST):
        path = checkpointing.find_checkpoint(run_dir, checkpoint)
        if checkpoint == checkpointing.BEST:  # Its evaluation stays with the rolling copy.
            path = os.path.join(checkpointing.checkpoint_dir(run_dir), os.path.basename(path))
    else:
        path = os.path.join(checkpointing.checkpoint_dir(run_dir), checkpoint)
    if not os.path.isfile(path + EVAL_SUFFIX):
        raise ConfigError(
            f"{path} has not been evaluated; run python -m ganfm.evaluate --model_dir={run_dir}"
        )
    with open(path + EVAL_SUFFIX) as f:
        return json.load(f)


def table(reports: dict[str, list[dict]]) -> str:
    """Markdown: one row per group, then the held-out floor (from the first report)."""
    header = ["run", "seeds", *(title for _, title, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, group in reports.items():
        cells = [name, str(len(group))]
        for key, _, fmt in COLUMNS:
            values = np.array([r["generated"][key] for r in group], np.float64)
            cell = fmt.format(values.mean())
            if len(values) > 1:
                cell += " ± " + fmt.format(values.std(ddof=1))
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    floor = next(iter(reports.values()))[0].get("held_out")
    if floor:
        cells = ["held-out real images (floor)", "-"]
        cells += [fmt.format(floor[key]) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(first: str, other: str, by_seed: dict[str, dict[int, dict]]) -> str | None:
    """Markdown: `first` minus `other` on the seeds both have (None below two such seeds):
    the mean difference +- its standard error, how many seeds favour `first`, and the
    per-seed FDs."""
    seeds = sorted(set(by_seed.get(first, {})) & set(by_seed.get(other, {})))
    if len(seeds) < 2:
        return None
    header = ["paired by seed", *(title for _, title, _ in COLUMNS)]
    difference = [f"{first} − {other}, mean ± s.e."]
    wins = [f"seeds where {first} is better"]
    for key, _, fmt in COLUMNS:
        a = np.array([by_seed[first][s]["generated"][key] for s in seeds], np.float64)
        b = np.array([by_seed[other][s]["generated"][key] for s in seeds], np.float64)
        d = a - b
        stderr = d.std(ddof=1) / np.sqrt(len(d))
        difference.append(f"{fmt.format(d.mean())} ± {fmt.format(stderr)}")
        better = d > 0 if key in HIGHER_IS_BETTER else d < 0
        wins.append(f"{int(better.sum())} of {len(d)}")
    lines = [
        f"{first} against {other}, seeds {' '.join(map(str, seeds))}:",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| " + " | ".join(difference) + " |",
        "| " + " | ".join(wins) + " |",
        "",
    ]
    for name in (first, other):
        fds = " ".join(f"{by_seed[name][s]['generated']['fd']:.2f}" for s in seeds)
        lines.append(f"FD per seed, {name}: {fds}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    runs = argv[1:]
    if not runs:
        fail("give the run directories to compare, e.g. runs/fm_s1 runs/adv_s1")
    with user_errors():
        reports: dict[str, list[dict]] = {}
        by_seed: dict[str, dict[int, dict]] = {}
        for run in runs:
            report = read_report(run, FLAGS.checkpoint)
            reports.setdefault(group_name(run), []).append(report)
            if seed_of(run) is not None:
                by_seed.setdefault(group_name(run), {})[seed_of(run)] = report
        sizes = {r["generated"]["num_images"] for group in reports.values() for r in group}
        if len(sizes) > 1:
            raise ConfigError(
                f"the runs were evaluated on different numbers of samples {sorted(sizes)}; "
                "FD depends on it: evaluate all with the same --num_samples"
            )
    print(table(reports))
    first, *others = list(reports)
    for other in others:
        paired = paired_table(first, other, by_seed)
        if paired:
            print()
            print(paired)


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
    sys.exit(0)
