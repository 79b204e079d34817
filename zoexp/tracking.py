"""Tracker: every metric goes to `metrics.jsonl` in the run directory, and to W&B when asked.

The local file is the source of truth (tests, sweep summaries and resume read it); W&B is a
mirror for comparing runs. The file is append-only JSONL (`zoexp.jsonl`): `truncate(n)` cuts
it back to the first n records when a run resumes from a checkpoint (dropping a line torn by
a kill), and `truncate(0)` empties it when a run starts without one, so the file always holds
exactly the records of the steps the run has taken, each once. With several processes only
rank 0 writes (`write=False` elsewhere).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from zoexp import jsonl
from zoexp.jsonl import CorruptFile


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
        jsonl.append(self.metrics_path, {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}})
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def sync(self) -> None:
        """Make every record logged so far durable (before a checkpoint counts them)."""
        if self.write:
            jsonl.sync(self.metrics_path)

    def truncate(self, records: int) -> int:
        """Keep the first `records` records (the resume point; 0 for a fresh start) and drop
        what an interrupted run wrote after them. Returns how many records were dropped."""
        if records == 0:  # a fresh start: whatever is there (even a damaged file) goes
            stale = self.metrics_path.read_bytes().count(b"\n") if self.metrics_path.exists() else 0
            if self.write and self.metrics_path.exists():
                jsonl.rewrite(self.metrics_path, [])
            self.records = 0
            return stale
        lines = jsonl.read_lines(self.metrics_path)
        if self.write and len(lines) < records:
            raise CorruptFile(self.metrics_path, f"holds {len(lines)} records but the checkpoint counts "
                              f"{records}; allowed: the file as the run wrote it")
        kept = [raw for raw, _ in lines[:records]]
        if self.write and self.metrics_path.exists() and sum(map(len, kept)) != self.metrics_path.stat().st_size:
            jsonl.rewrite(self.metrics_path, kept)
        self.records = records
        return max(len(lines) - records, 0)

    def summary(self, values: dict) -> None:
        if not self.write:
            return
        tmp = self.summary_path.with_name(self.summary_path.name + ".tmp")
        tmp.write_text(json.dumps({k: _jsonable(v) for k, v in values.items()}, indent=2) + "\n")
        tmp.replace(self.summary_path)  # a finished run is marked by a whole summary.json only
        if self.wandb is not None:
            self.wandb.summary(values)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
