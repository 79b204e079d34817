"""The one training loop: steps, periodic dev eval, best-on-dev parameters, resume, logging.

It knows the interfaces only (Solver, Objective, Task, Tracker, Checkpointer), never a
particular method or task, so a new solver or task plugs in without touching this file.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from tasks.base import Example, Task
from zoexp.batching import LengthGroupedBatches, length_sorted
from zoexp.checkpoint import Checkpointer
from zoexp.distributed import Ranks
from zoexp.objectives import Objective
from zoexp.sharding import host_copy, load_into
from zoexp.solvers.base import Solver
from zoexp.tracking import Tracker


@dataclass
class LoopState:
    """Everything the loop itself must carry across a preemption."""

    step: int = 0
    fwd_passes: int = 0
    best_dev: float = float("-inf")
    best_step: int = -1
    best_params: list | None = None
    wall_time_s: float = 0.0
    computed_tokens: int = 0  # padded tokens of training batches, for the padding ratio
    real_tokens: int = 0
    history: list = field(default_factory=list)  # (step, dev metric) pairs


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Loop:
    def __init__(self, solver: Solver, objective: Objective, task: Task, data: dict[str, list[Example]],
                 tracker: Tracker, checkpointer: Checkpointer, device: torch.device, seed: int = 0,
                 eval_batch_size: int = 32, group_by_length: bool = True, keep_best: bool = True,
                 ranks: Ranks = Ranks()) -> None:
        self.solver, self.objective, self.task, self.data = solver, objective, task, data
        self.tracker, self.checkpointer, self.device = tracker, checkpointer, device
        self.ranks = ranks  # forward passes are counted over all processes
        self.eval_batch_size, self.keep_best, self.group_by_length = eval_batch_size, keep_best, group_by_length
        scorer = objective.scorer
        lengths = [scorer.prompt_length(ex) for ex in data["train"]]
        self.batches = LengthGroupedBatches(lengths, solver.batch_size, seed=seed, group=group_by_length)
        self.state = LoopState()

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        examples = self.solver.eval_examples(self.data[split])
        if not examples:
            return {}
        order = list(range(len(examples)))
        if self.group_by_length:  # sorted batches pad far less; predictions go back in data order
            order = length_sorted([self.objective.scorer.prompt_length(ex) for ex in examples])
        batches = [order[start : start + self.eval_batch_size]
                   for start in range(0, len(examples), self.eval_batch_size)]
        preds: list = [None] * len(examples)
        for k in self.ranks.share_batches(len(batches)):  # every batch, or this process's share
            for i, pred in zip(batches[k], self.objective.predict([examples[i] for i in batches[k]])):
                preds[i] = pred
        return self.task.score(self.ranks.merge(preds), examples)

    def _snapshot(self) -> list[torch.Tensor]:
        return [host_copy(p) for p in self.solver.params]  # a sharded one is gathered

    @torch.no_grad()
    def _load_params(self, tensors: Sequence[torch.Tensor]) -> None:
        for p, saved in zip(self.solver.params, tensors):
            load_into(p, saved)

    # ---- checkpoints ---------------------------------------------------------------------
    def _save(self) -> None:
        self.checkpointer.save({"loop": self.state, "params": self._snapshot(),
                                "solver": self.solver.state_dict(), "records": self.tracker.records})

    def _resume(self) -> None:
        ckpt = self.checkpointer.load()
        if ckpt is None:
            return
        self.state = ckpt["loop"]
        self._load_params(ckpt["params"])
        self.solver.load_state_dict(ckpt["solver"])
        self.tracker.truncate(ckpt["records"])
        self.checkpointer.truncate_trajectory(self.state.step)

    # ---- the loop ------------------------------------------------------------------------
    def _eval_dev(self, step: int) -> float:
        metric = self.task.metric
        dev = self.evaluate("dev")
        if not dev:
            return float("nan")
        value = dev[metric]
        self.state.history.append((step, value))
        if value > self.state.best_dev:
            self.state.best_dev, self.state.best_step = value, step
            if self.keep_best:
                self.state.best_params = self._snapshot()
        self.tracker.log({f"dev_{k}": v for k, v in dev.items()} | {"fwd_passes": self.state.fwd_passes}, step)
        return value

    def run(self) -> dict:
        self._resume()
        solver, state, scorer = self.solver, self.state, self.objective.scorer
        started = time.perf_counter() - state.wall_time_s
        if solver.trains:
            bar = tqdm(total=solver.steps, initial=state.step, disable=None if self.ranks.main else True,
                       desc="train", dynamic_ncols=True)
            if state.step == 0 and state.best_step < 0:
                self._eval_dev(0)
            while state.step < solver.steps:
                step = state.step
                batch = [self.data["train"][i] for i in self.batches.batch(step)]
                before = scorer.forward_passes
                computed, real = scorer.computed_tokens, scorer.real_tokens
                result = solver.step(batch, step)
                state.fwd_passes += self.ranks.total(scorer.forward_passes - before)
                state.computed_tokens += scorer.computed_tokens - computed
                state.real_tokens += scorer.real_tokens - real
                ratio = (scorer.computed_tokens - computed) / max(scorer.real_tokens - real, 1)
                self.checkpointer.record(step, result.record)
                state.step = step + 1
                self.tracker.log({"train_loss": result.loss, "fwd_passes": state.fwd_passes,
                                  "padding_ratio": ratio, **result.metrics}, state.step)
                if solver.eval_every and state.step % solver.eval_every == 0 and state.step < solver.steps:
                    solver.settle()
                    self._eval_dev(state.step)
                bar.update(1)
                bar.set_postfix(loss=f"{result.loss:.4f}", dev=f"{state.best_dev:.3f}")
                state.wall_time_s = time.perf_counter() - started
                if self.checkpointer.due(state.step, solver.steps):
                    solver.settle()
                    self._save()
            solver.settle()
            bar.close()
        final_dev = self._eval_dev(state.step)
        if self.keep_best and state.best_params is not None and state.best_step != state.step:
            self._load_params(state.best_params)  # test the best-on-dev parameters
        test = self.evaluate("test")
        state.wall_time_s = time.perf_counter() - started
        metric = self.task.metric
        summary = {
            "metric": metric,
            f"best_dev_{metric}": state.best_dev,
            f"final_dev_{metric}": final_dev,
            **{f"test_{k}": v for k, v in test.items()},
            "best_step": state.best_step,
            "steps": state.step,
            "fwd_passes": state.fwd_passes,
            "wall_time_s": round(state.wall_time_s, 2),
            "peak_mem_gb": round(peak_memory_gb(self.device), 3),
            "padding_ratio": round(state.computed_tokens / state.real_tokens, 4) if state.real_tokens else None,
        }
        self.tracker.log({f"test_{k}": v for k, v in test.items()} | {"fwd_passes": state.fwd_passes}, state.step)
        self.tracker.summary(summary)
        return summary
