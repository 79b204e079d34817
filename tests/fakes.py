"""In-process stand-ins for the model side of a run, so the loop, its files and its faults are
tested in milliseconds: a quadratic loss over real parameters, real solvers, real Tracker and
Checkpointer in a real run directory."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import torch

from tasks.base import Example
from zoexp.checkpoint import Checkpointer
from zoexp.loop import Loop
from zoexp.tracking import Tracker

EXAMPLES = [Example(prompt="x" * (i + 1), candidates=(" a", " b"), label=i % 2) for i in range(12)]
TARGET = torch.linspace(-1, 1, 48)


class Killed(BaseException):
    """Raised by the objective at a chosen forward pass: the process 'dies' there (BaseException,
    so nothing in zoexp catches it -- like SIGKILL, no cleanup code runs)."""


class QuadraticObjective:
    """loss = mean((theta - target)^2) (+ nan from forward pass `nan_at` on, or a kill at
    forward pass `kill_at`); predictions depend on the weights, so dev / test scores move."""

    differentiable = True
    name = "quadratic"

    def __init__(self, params: list[torch.Tensor], nan_at: set[int] | None = None,
                 kill_at: int | None = None) -> None:
        self.params, self.nan_at, self.kill_at = params, nan_at or set(), kill_at
        self.scorer = SimpleNamespace(forward_passes=0, computed_tokens=0, real_tokens=0,
                                      prompt_length=lambda ex: len(ex.prompt))

    def _value(self) -> torch.Tensor:
        return sum(((p - TARGET[: p.numel()].view_as(p)) ** 2).mean() for p in self.params)

    def _count(self) -> int:
        n = self.scorer.forward_passes
        self.scorer.forward_passes += 1
        self.scorer.computed_tokens += 10
        self.scorer.real_tokens += 8
        if self.kill_at is not None and n >= self.kill_at:
            raise Killed(f"killed at forward pass {n}")
        return n

    def loss(self, batch) -> float:
        n = self._count()
        return math.nan if n in self.nan_at else float(self._value().detach())

    def loss_tensor(self, batch) -> torch.Tensor:
        n = self._count()
        value = self._value()
        return value * math.nan if n in self.nan_at else value

    def predict(self, examples) -> list[int]:
        self._count()
        score = float(self._value().detach())
        return [int((score * 1000 + i) % 2) for i in range(len(examples))]


def task() -> SimpleNamespace:
    def score(preds, examples):
        return {"accuracy": sum(int(p == ex.label) for p, ex in zip(preds, examples)) / max(len(examples), 1)}
    return SimpleNamespace(metric="accuracy", score=score)


def make_loop(run_dir: Path, solver, params: list[torch.Tensor], every: int = 2, num_dev: int = 4,
              **kwargs) -> tuple[Loop, QuadraticObjective]:
    objective = QuadraticObjective(params, **{k: kwargs.pop(k) for k in ("nan_at", "kill_at") if k in kwargs})
    solver.setup(params, objective, EXAMPLES)
    data = {"train": EXAMPLES, "dev": EXAMPLES[:num_dev], "test": EXAMPLES[:4]}
    loop = Loop(solver, objective, task(), data, Tracker(run_dir), Checkpointer(run_dir, every=every),
                torch.device("cpu"), **kwargs)
    return loop, objective


def outcome(run_dir: Path) -> dict:
    """What must be identical between an uninterrupted run and a resumed one."""
    summary = __import__("json").loads((run_dir / "summary.json").read_text())
    return {"metrics": (run_dir / "metrics.jsonl").read_text().splitlines(),
            "trajectory": (run_dir / "trajectory.jsonl").read_text().splitlines(),
            "summary": {k: v for k, v in summary.items() if k not in ("wall_time_s", "peak_mem_gb")}}
