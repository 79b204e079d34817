"""Tracker: every metric goes to `metrics.jsonl` in the run directory, and to W&B when asked.

The local file is the source of truth (tests, sweep summaries and resume read it); W&B is a
mirror for comparing runs. `truncate(n)` cuts the file back to the first n records when a
run resumes from a checkpoint, so a resumed run's file equals an uninterrupted run's.
With several processes only rank 0 writes (`write=False` elsewhere).
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Tracker:
    def __init__(self, run_dir: Path, wandb_logger=None, write: bool = True) -> None:
        self.run_dir, self.write = Path(run_dir), write
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.summary_path = self.run_dir / "summary.json"
        self.wandb = wandb_logger
        self.records = 0

    def log(self, metrics: dict, step: int) -> None:
        self.records += 1
        if not self.write:
            return
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def truncate(self, records: int) -> None:
        """Keep the first `records` lines (resume point); drop what a killed run wrote after."""
        lines = self.metrics_path.read_text().splitlines(keepends=True) if self.metrics_path.exists() else []
        if self.write:
            self.metrics_path.write_text("".join(lines[:records]))
        self.records = min(records, len(lines))

    def summary(self, values: dict) -> None:
        if not self.write:
            return
        self.summary_path.write_text(json.dumps({k: _jsonable(v) for k, v in values.items()}, indent=2) + "\n")
        if self.wandb is not None:
            self.wandb.summary(values)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
