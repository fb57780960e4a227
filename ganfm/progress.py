"""The progress line: step, images/s, losses and time left."""

from __future__ import annotations

import time

SHOWN = ("loss/d", "loss/g_adv", "loss/g_fm", "d_out/real_prob", "d_out/fake_prob")
LABELS = {
    "loss/d": "d",
    "loss/g_adv": "g_adv",
    "loss/g_fm": "g_fm",
    "d_out/real_prob": "D(real)",
    "d_out/fake_prob": "D(fake)",
}


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Throughput over the latest window; ETA from all windows after the first, whose
    time includes tracing and compilation."""

    def __init__(self, total_steps: int, images_per_step: int, start_step: int):
        self.total = total_steps
        self.images_per_step = images_per_step
        self.start = start_step
        self._last_time = time.perf_counter()
        self._last_step = start_step
        self._steady_steps = 0
        self._steady_seconds = 0.0
        self._first = True
        self._last_print = 0.0

    def update(self, step: int) -> float:
        """Records that training reached `step`; returns images/s of the window."""
        now = time.perf_counter()
        seconds, steps = now - self._last_time, step - self._last_step
        if not self._first:
            self._steady_steps += steps
            self._steady_seconds += seconds
        self._first = False
        self._last_time, self._last_step = now, step
        self.images_per_second = steps * self.images_per_step / max(seconds, 1e-9)
        return self.images_per_second

    def eta_seconds(self, step: int) -> float | None:
        if not self._steady_steps:
            return None
        return (self.total - step) * self._steady_seconds / self._steady_steps

    def due(self, every_seconds: float) -> bool:
        return time.perf_counter() - self._last_print >= every_seconds

    def line(self, step: int, metrics: dict[str, float]) -> str:
        self._last_print = time.perf_counter()
        losses = "  ".join(f"{LABELS[k]}={metrics[k]:.3f}" for k in SHOWN if k in metrics)
        eta = self.eta_seconds(step)
        eta_text = format_duration(eta) if eta is not None else "?"
        width = len(str(self.total))
        return (
            f"step {step:>{width}}/{self.total}  {self.images_per_second:8.0f} img/s  "
            f"{losses}  eta {eta_text}"
        )
