"""Checkpoints for preemption: everything a run needs to continue as if never stopped.

A checkpoint holds the trainable parameters, the best-on-dev copy, the solver state, the
step, the loop's bookkeeping and how many metric records were written. Data order and ZO
seeds are pure functions of (seed, step), so no RNG state is needed to continue exactly.
The file is written to a temporary name and renamed, so a kill mid-write leaves the last
good checkpoint in place. Every step's solver record also goes to `trajectory.jsonl`
(the seed trajectory: a few numbers per step), from which `zoexp.replay` rebuilds weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class Checkpointer:
    def __init__(self, run_dir: Path, every: int = 0, write: bool = True) -> None:
        """`write=False` (ranks other than 0 of a distributed run): read, never write."""
        self.path = Path(run_dir) / "checkpoint.pt"
        self.trajectory_path = Path(run_dir) / "trajectory.jsonl"
        self.every, self.write = every, write

    def due(self, step: int, last: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < last

    def save(self, state: dict) -> None:
        if not self.write:
            return
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def record(self, step: int, record: dict) -> None:
        if not self.write:
            return
        with self.trajectory_path.open("a") as fh:
            fh.write(json.dumps({"step": step, **record}) + "\n")

    def truncate_trajectory(self, steps: int) -> None:
        if self.write and self.trajectory_path.exists():
            lines = self.trajectory_path.read_text().splitlines(keepends=True)
            self.trajectory_path.write_text("".join(l for l in lines if json.loads(l)["step"] < steps))


class RunDirGuard(Callback):
    """Refuse a directory that holds a finished run, before Hydra writes anything into it.

    Hydra rewrites `<run dir>/.hydra/` before the task function starts, so the check must run
    in `on_run_start` / `on_multirun_start`. A requeued job (same dir, no summary yet) passes
    through neither hook and resumes from its checkpoint.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir)
        if (run_dir / "summary.json").exists():
            self._refuse("hydra.run.dir", f"{run_dir} already holds a finished run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        done = sorted(p.parent.name for p in sweep_dir.glob("*/summary.json"))
        if done:
            self._refuse("hydra.sweep.dir", f"{sweep_dir} already holds finished jobs {done}")

    @staticmethod
    def _refuse(field: str, message: str) -> None:
        print(f"error: {field}: {message}; allowed: a new directory (the default is per-date/time)"
              " -- results are never overwritten", file=sys.stderr)
        sys.exit(2)
