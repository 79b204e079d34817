"""Training progress a person can see: tqdm on a terminal, log lines everywhere else.

tqdm disables itself without a terminal (`disable=None`), which keeps SLURM logs free of
carriage-return noise but also leaves them silent between a job's start and its end. So
when the bar is invisible, a line goes to the log every `every_s` seconds (and at the last
step): step, loss, best dev, steps per second and the estimated time left.
"""

from __future__ import annotations

import logging
import math
import time

from tqdm.auto import tqdm

log = logging.getLogger("zoexp")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, total: int, initial: int, visible: bool, every_s: float) -> None:
        """`visible`: this process reports (rank 0); `every_s`: seconds between log lines
        when there is no terminal (0: none)."""
        self.total, self.start_step = total, initial
        self.bar = tqdm(total=total, initial=initial, disable=None if visible else True,
                        desc="train", dynamic_ncols=True)
        self.lines = visible and bool(self.bar.disable) and every_s > 0
        self.every_s = every_s
        self.started = self.last = time.monotonic()

    def update(self, step: int, loss: float, best_dev: float) -> None:
        dev = f"{best_dev:.3f}" if math.isfinite(best_dev) else "-"
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", dev=dev)
        now = time.monotonic()
        if not self.lines or (now - self.last < self.every_s and step < self.total):
            return
        self.last = now
        rate = (step - self.start_step) / max(now - self.started, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else math.inf
        log.info("step %d/%d (%d%%)  loss %.4f  best dev %s  %.2f steps/s  ETA %s", step, self.total,
                 100 * step // max(self.total, 1), loss, dev, rate, _duration(eta))

    def close(self) -> None:
        self.bar.close()
