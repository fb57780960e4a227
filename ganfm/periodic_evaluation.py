"""--eval_every: evaluation during training, on the chief, and the best checkpoint by FD.

Evaluation steps are also checkpoint steps (train_lib saves there on every worker), so
the best checkpoint is a copy of a complete rolling one, in <model_dir>/best.
"""

from __future__ import annotations

import json

import numpy as np

from ganfm import checkpointing, data, evaluation, images
from ganfm.evaluate import EVAL_SUFFIX
from ganfm.trainer import Trainer, sample_noise

GENERATE_BATCH = 500


class PeriodicEvaluation:
    def __init__(
        self, trainer: Trainer, evaluator: evaluation.Evaluator, model_dir: str, seed: int
    ):
        self.trainer = trainer
        self.evaluator = evaluator
        self.model_dir = model_dir
        self.seed = seed
        self.held_out = (
            evaluator.score(evaluator.held_out) if evaluator.held_out is not None else None
        )
        best = checkpointing.read_best(model_dir)  # Survives restarts.
        self.best_fd = best["fd"] if best else float("inf")
        self.best_step = best["step"] if best else None

    def _generate(self, num: int) -> np.ndarray:
        # The noise of `python -m ganfm.evaluate --seed=<run seed>`: the same images.
        noise = sample_noise(self.seed, num, self.trainer.ema_generator.input_shape[-1])
        chunks = [
            data.to_uint8(self.trainer.generate(noise[i : i + GENERATE_BATCH])).numpy()
            for i in range(0, num, GENERATE_BATCH)
        ]
        return np.concatenate(chunks)

    def run(self, step: int, checkpoint: str) -> dict[str, float]:
        """Scores the EMA generator; returns TensorBoard scalars (eval/..., eval_held_out/...)."""
        result = self.evaluator.score(self._generate(self.evaluator.num_samples))
        report = {"checkpoint": checkpoint, "step": step, "seed": self.seed, "generated": result}
        report["held_out"] = self.held_out
        images.atomic_write_bytes(checkpoint + EVAL_SUFFIX, json.dumps(report, indent=2).encode())
        if result["fd"] < self.best_fd:
            self.best_fd, self.best_step = result["fd"], step
            checkpointing.keep_best(
                self.model_dir, checkpoint, {"step": step, **evaluation.scalars(result)}
            )
        values = {f"eval/{k}": v for k, v in evaluation.scalars(result).items()}
        values["eval/best_fd"] = self.best_fd
        if self.held_out is not None:
            values.update(
                {f"eval_held_out/{k}": v for k, v in evaluation.scalars(self.held_out).items()}
            )
        return values

    def line(self, step: int, values: dict[str, float]) -> str:
        result = {k.split("/", 1)[1]: v for k, v in values.items() if k.startswith("eval/")}
        return (
            f"eval step {step}: {describe(result)}  "
            f"(best FD {self.best_fd:.4g} at step {self.best_step})"
        )

    def floor_line(self) -> str:
        if self.held_out is None:
            return "eval: no held-out split, so no floor"
        return f"eval floor, {self.held_out['num_images']} held-out real images: " + describe(
            self.held_out
        )


def describe(result: dict) -> str:
    return (
        f"FD {result['fd']:.4g}  KID {result['kid']:.4g}  precision {result['precision']:.3f}  "
        f"recall {result['recall']:.3f}  classes {result['classes_covered']:.0f}"
    )
