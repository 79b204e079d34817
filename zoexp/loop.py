"""The one training loop: steps, periodic dev eval, best-on-dev parameters, resume, logging.

It knows the interfaces only (Solver, Objective, Task, Tracker, Checkpointer), never a
particular method or task, so a new solver or task plugs in without touching this file.

What a number in the run dir promises:
* resume: a checkpoint restores the loop's state, and metrics.jsonl / trajectory.jsonl are
  cut back to it (a run without a checkpoint starts both afresh), so they always hold each
  step taken exactly once;
* divergence: a solver raises `Diverged` before applying a non-finite update
  (`Solver.ensure_finite`); with `on_divergence=stop` the run ends with `diverged: true` in
  summary.json and no test score, with `skip_step` the step is recorded as skipped and counted;
* SIGTERM stops at the next step boundary with a checkpoint (`zoexp.signals`).
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from tasks.base import Example, Task
from zoexp.batching import LengthGroupedBatches, length_sorted
from zoexp.checkpoint import Checkpointer
from zoexp.distributed import Ranks
from zoexp.errors import Diverged, Terminated
from zoexp.jsonl import CorruptFile
from zoexp.objectives import Objective
from zoexp.progress import Progress
from zoexp.signals import NEVER, GracefulStop
from zoexp.sharding import host_copy, load_into
from zoexp.solvers.base import Solver
from zoexp.tracking import Tracker

log = logging.getLogger("zoexp")
ON_DIVERGENCE = ("stop", "skip_step")


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
    skipped_steps: int = 0  # steps not applied under on_divergence=skip_step

    def __setstate__(self, state: dict) -> None:  # checkpoints of older versions lack new fields
        self.__dict__.update(LoopState().__dict__ | state)


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Loop:
    def __init__(self, solver: Solver, objective: Objective, task: Task, data: dict[str, list[Example]],
                 tracker: Tracker, checkpointer: Checkpointer, device: torch.device, seed: int = 0,
                 eval_batch_size: int = 32, group_by_length: bool = True, keep_best: bool = True,
                 ranks: Ranks = Ranks(), on_divergence: str = "stop", progress_every_s: float = 30.0,
                 stop: GracefulStop = NEVER) -> None:
        self.solver, self.objective, self.task, self.data = solver, objective, task, data
        self.tracker, self.checkpointer, self.device = tracker, checkpointer, device
        self.ranks = ranks  # forward passes are counted over all processes
        self.eval_batch_size, self.keep_best, self.group_by_length = eval_batch_size, keep_best, group_by_length
        if on_divergence not in ON_DIVERGENCE:
            raise ValueError(f"on_divergence: got {on_divergence!r}; allowed: {list(ON_DIVERGENCE)}")
        self.on_divergence, self.progress_every_s, self.stop = on_divergence, progress_every_s, stop
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
        self.tracker.sync()  # the records the checkpoint counts are on disk before it is
        self.checkpointer.save({"loop": self.state, "params": self._snapshot(), "solver": self.solver.state_dict(),
                                "records": self.tracker.records, "seed_bits": self.solver.seed_bits},
                               self.state.step)

    def _resume(self) -> None:
        ckpt = self.checkpointer.load()
        if ckpt is None:  # a fresh start: drop whatever an interrupted fresh start left
            stale = (self.tracker.truncate(0),
                     self.checkpointer.start_trajectory(self.solver.seed_bits) if self.solver.trains else 0)
            if any(stale):
                log.warning("no checkpoint: starting at step 0; removed %d metric and %d trajectory records "
                            "left by an interrupted run", *stale)
            return
        self.state = ckpt["loop"]
        self._load_params(ckpt["params"])
        self.solver.load_state_dict(ckpt["solver"])
        bits = ckpt.get("seed_bits", 31)  # checkpoints before 64-bit seeds continue with 31 bits
        self.solver.set_seed_bits(bits)
        dropped_metrics = self.tracker.truncate(ckpt["records"])
        trajectory_bits, dropped_steps = self.checkpointer.resume_trajectory(self.state.step)
        if trajectory_bits != bits:
            raise CorruptFile(self.checkpointer.trajectory_path, f"has {trajectory_bits}-bit seeds but the "
                              f"checkpoint {bits}-bit; allowed: the trajectory the run wrote")
        dropped = (f"; dropped {dropped_metrics} metric and {dropped_steps} trajectory records written after it"
                   if dropped_metrics or dropped_steps else "")
        log.info("resumed from step %d of %d (%s)%s", self.state.step, self.solver.steps,
                 self.checkpointer.path, dropped)

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

    def _stop_requested(self) -> bool:
        """SIGTERM seen by any process (all must stop at the same step boundary)."""
        return self.ranks.total(int(self.stop.requested)) > 0 if self.ranks.world > 1 else self.stop.requested

    def _train_step(self, step: int) -> float:
        """One step: the solver's update, its records and the step's metrics. Returns the loss."""
        solver, state, scorer = self.solver, self.state, self.objective.scorer
        batch = [self.data["train"][i] for i in self.batches.batch(step)]
        before = scorer.forward_passes
        computed, real = scorer.computed_tokens, scorer.real_tokens
        try:
            result = solver.step(batch, step)
            try:  # the backstop for a solver that applied its update without `ensure_finite`
                solver.ensure_finite(step, result.loss, record=result.record)
            except Diverged as late:
                late.applied = True
                raise
        except Diverged as diverged:
            state.fwd_passes += self.ranks.total(scorer.forward_passes - before)
            if self.on_divergence == "stop" or diverged.applied:
                raise
            state.skipped_steps += 1
            self.checkpointer.record(step, {"skipped": str(diverged)})
            state.step = step + 1
            self.tracker.log({"train_loss": diverged.value if "loss" in diverged.what else math.nan,
                              "skipped": 1, "fwd_passes": state.fwd_passes}, state.step)
            log.warning("step %d skipped (on_divergence=skip_step): %s; %d skipped so far", step,
                        diverged, state.skipped_steps)
            return math.nan
        state.fwd_passes += self.ranks.total(scorer.forward_passes - before)
        state.computed_tokens += scorer.computed_tokens - computed
        state.real_tokens += scorer.real_tokens - real
        ratio = (scorer.computed_tokens - computed) / max(scorer.real_tokens - real, 1)
        self.checkpointer.record(step, result.record)
        state.step = step + 1
        self.tracker.log({"train_loss": result.loss, "fwd_passes": state.fwd_passes,
                          "padding_ratio": ratio, **result.metrics}, state.step)
        return result.loss

    def _train(self) -> None:
        solver, state = self.solver, self.state
        progress = Progress(solver.steps, state.step, self.ranks.main, self.progress_every_s)
        try:
            if state.step == 0 and state.best_step < 0 and not state.history:
                self._eval_dev(0)
            while state.step < solver.steps:
                loss = self._train_step(state.step)
                if solver.eval_every and state.step % solver.eval_every == 0 and state.step < solver.steps:
                    solver.settle()
                    self._eval_dev(state.step)
                progress.update(state.step, loss, state.best_dev)
                state.wall_time_s = time.perf_counter() - self.started
                stop = self._stop_requested()
                if stop or self.checkpointer.due(state.step, solver.steps):
                    solver.settle()
                    self._save()
                if stop:
                    raise Terminated(f"stopped by SIGTERM at step {state.step} of {solver.steps}; checkpoint "
                                     "written -- rerun the same command to resume")
            solver.settle()
        finally:
            progress.close()

    def _diverged_summary(self, diverged: Diverged) -> dict:
        state, metric = self.state, self.task.metric
        summary = {
            "metric": metric,
            "diverged": True,
            "diverged_step": diverged.step,
            "diverged_reason": str(diverged),
            f"best_dev_{metric}": state.best_dev if state.history else None,
            "best_step": state.best_step,
            "steps": state.step,
            "skipped_steps": state.skipped_steps,
            "fwd_passes": state.fwd_passes,
            "wall_time_s": round(time.perf_counter() - self.started, 2),
            "peak_mem_gb": round(peak_memory_gb(self.device), 3),
        }
        self.tracker.log({"diverged": 1, "fwd_passes": state.fwd_passes}, diverged.step + 1)
        self.tracker.summary(summary)
        return summary

    def run(self) -> dict:
        self._resume()
        solver, state = self.solver, self.state
        self.started = time.perf_counter() - state.wall_time_s
        if solver.trains:
            try:
                with self.stop.deferred():
                    self._train()
            except Diverged as diverged:
                diverged.summary = self._diverged_summary(diverged)
                raise
        final_dev = self._eval_dev(state.step)
        if self.keep_best and state.best_params is not None and state.best_step != state.step:
            self._load_params(state.best_params)  # test the best-on-dev parameters
        test = self.evaluate("test")
        state.wall_time_s = time.perf_counter() - self.started
        metric = self.task.metric
        summary = {
            "metric": metric,
            f"best_dev_{metric}": state.best_dev if state.history else None,
            f"final_dev_{metric}": None if math.isnan(final_dev) else final_dev,
            **{f"test_{k}": v for k, v in test.items()},
            "best_step": state.best_step,
            "steps": state.step,
            "fwd_passes": state.fwd_passes,
            "wall_time_s": round(state.wall_time_s, 2),
            "peak_mem_gb": round(peak_memory_gb(self.device), 3),
            "padding_ratio": round(state.computed_tokens / state.real_tokens, 4) if state.real_tokens else None,
            "diverged": False,
            "skipped_steps": state.skipped_steps,
        }
        self.tracker.log({f"test_{k}": v for k, v in test.items()} | {"fwd_passes": state.fwd_passes}, state.step)
        self.tracker.summary(summary)
        return summary
