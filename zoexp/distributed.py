"""Scale-out over processes (GPUs): the directions of a ZO step are dealt to the ranks, and
only scalars cross the network.

Every rank holds the whole model and sees the same batch. Rank r probes directions
k = r, r + W, r + 2 W, ... of the step (W ranks); each probe's (f+, f-) goes into an [n, 2]
table that one all-reduce sums across ranks (every entry is written by exactly one rank, so
the sum is exact), and every rank then applies the same update from all n (seed,
coefficient) pairs in the same order. The weights stay bit-identical on all ranks without
sending a tensor, and a W-rank run takes the same steps, bit for bit, as one process does
(`tests/test_distributed.py`). That needs perturbations that restore exactly (the default
`solver.exact=true`): in-place sweeps would leave each rank its own rounding drift.

Evaluation is split the same way: the ranks predict alternate eval batches (the batches
one process would form) and exchange the predictions, so every rank scores all of them.

Launch with `torchrun --nproc-per-node W main.py ...` on one machine, or under SLURM with
`hardware.tasks_per_node=W` (one task per GPU; submitit exports the rendezvous). Rank 0 alone
writes metrics, checkpoints and W&B; NCCL carries the scalars on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group; `Ranks()` is a run of one process."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where the all-reduce buffers live (cuda for NCCL)
    lockstep: bool = False  # every forward is collective (FSDP): all ranks run all of them

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> list[int]:
        """Which of n work items (a step's directions, eval batches) this rank takes."""
        return list(range(self.rank, n, self.world))

    def share_batches(self, n: int) -> list[int]:
        """Which of n evaluation batches this rank predicts: its share, or all of them when
        every forward is collective (`lockstep`, FSDP: all ranks must take part in each)."""
        return list(range(n)) if self.lockstep else self.share(n)

    def combine(self, table: torch.Tensor) -> torch.Tensor:
        """Sum a float64 table over the ranks (each entry filled in by one rank only)."""
        if self.world == 1:
            return table
        buf = table.to(self.device)
        torch.distributed.all_reduce(buf)
        return buf.cpu()

    def from_main(self, value):
        """Rank 0's `value` (any picklable object), on every rank."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def merge(self, values: list) -> list:
        """Each slot from the rank that filled it (the others hold None there), on every rank."""
        if self.world == 1:
            return values
        gathered: list = [None] * self.world
        torch.distributed.all_gather_object(gathered, values)
        return [next((g[i] for g in gathered if g[i] is not None), None) for i in range(len(values))]

    def total(self, count: int) -> int:
        """Sum of an integer (forward passes, say) over the ranks."""
        if self.world == 1:
            return count
        return int(self.combine(torch.tensor([float(count)], dtype=torch.float64)).item())


def launched_world() -> int:
    """How many processes the launcher started for this run: torchrun's WORLD_SIZE, else the
    tasks of a submitit SLURM job (1 when neither: a plain `python main.py`, even inside a
    SLURM allocation of several tasks)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return int(os.environ.get("SLURM_NTASKS", "1"))
    return 1


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 in a one-process run), readable before
    the process group exists: only rank 0 locks and writes the run directory."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and launched_world() > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


def init_ranks(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group the launcher set up (if any): (ranks, this rank's device)."""
    if launched_world() == 1:
        return Ranks(), device
    if "RANK" not in os.environ:  # SLURM tasks: submitit knows the rendezvous
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank, world, str(device)), device


def close(ranks: Ranks) -> None:
    if ranks.world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
