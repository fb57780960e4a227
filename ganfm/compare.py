"""A markdown table of evaluated runs, grouped over seeds: mean +- std per group.

    python -m ganfm.compare runs/fm_s1 runs/fm_s2 runs/adv_s1 runs/adv_s2

A run's group is its directory name without a trailing _s<seed> (fm_s1 -> fm). Each run
must have been evaluated (`python -m ganfm.evaluate`): the newest checkpoint's
ckpt-N.eval.json is read, or the one named by --checkpoint.
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
COLUMNS = (
    ("fd", "FD", "{:.2f}"),
    ("kid", "KID", "{:.2f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("classes_covered", "classes", "{:.1f}"),
    ("class_kl", "class KL", "{:.4f}"),
)


def _define_flags() -> None:
    flags.DEFINE_string("checkpoint", "latest", "latest, best, or a checkpoint name (ckpt-N).")


def group_name(run_dir: str) -> str:
    return re.sub(r"_s\d+$", "", os.path.basename(os.path.normpath(run_dir)))


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


def main(argv: list[str]) -> None:
    runs = argv[1:]
    if not runs:
        fail("give the run directories to compare, e.g. runs/fm_s1 runs/adv_s1")
    with user_errors():
        reports: dict[str, list[dict]] = {}
        for run in runs:
            reports.setdefault(group_name(run), []).append(read_report(run, FLAGS.checkpoint))
        sizes = {r["generated"]["num_images"] for group in reports.values() for r in group}
        if len(sizes) > 1:
            raise ConfigError(
                f"the runs were evaluated on different numbers of samples {sorted(sizes)}; "
                "FD depends on it: evaluate all with the same --num_samples"
            )
    print(table(reports))


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
    sys.exit(0)
