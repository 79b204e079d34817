"""Where a run's weights live, and what that changes for the rest of the run.

* `Placement` (`hardware.offload=none`, `hardware.shard=none`, the default): the model sits in
  the device's memory and nothing changes.
* `zoexp.offload.HostOffload` (`hardware.offload=cpu`): decoder blocks stream from pinned host
  memory, for a model larger than the GPU.
* `zoexp.sharding.FSDPShard` (`hardware.shard=fsdp`): every block sharded over the processes
  with PyTorch FSDP2, for a model larger than one GPU on several.

A placement is built from `hardware` before the model loads and refuses what it cannot run
(`check`: one line, exit 2). After the model loads it moves or shards it (`place`) and then
shapes the solver's two seams: the directions its updates go through (`directions`) and the
probe strategy (`probes`: layer-major for both placements above, so each block is fetched
once per step). `settle` finishes deferred work before anything reads the weights. The loop
never sees any of this; a solver says which placements its update allows (`Solver.placements`).
"""

from __future__ import annotations

import torch

from zoexp.distributed import Ranks
from zoexp.errors import ConfigError

OFFLOAD = ("none", "cpu", "simulated")
SHARD = ("none", "fsdp")


class Placement:
    """The model in the memory of its device: the solver's own directions and probes."""

    name = "device"
    field, value = "hardware.offload", "none"   # the config key that chose it, for messages

    def __init__(self, device: torch.device, ranks: Ranks = Ranks()) -> None:
        self.device, self.ranks = device, ranks

    def check(self, solver, peft_config=None) -> None:
        """Refuse, before the model loads, what this placement cannot run."""
        if self.name != "device" and getattr(solver, "batched_probes", False) is True:
            raise ConfigError("solver.batched_probes", f"got true with {self.field}={self.value}; "
                              "allowed: auto, false (its probes run layer-major)")
        if solver.trains and self.name not in solver.placements:
            allowed = ", ".join(p for p in ("offload", "fsdp") if p in solver.placements)
            raise ConfigError(self.field, f"got {self.value!r} with solver {type(solver).__name__} "
                              f"({solver.placement_note or 'its update is not seeded directions'}); "
                              f"allowed: none" + (f" (it supports {allowed})" if allowed else ""))

    graphs = True  # whether captured CUDA graphs can replay its forwards (zoexp.graphs)

    def cuda_graphs(self, requested, resolved: bool) -> bool:
        """`hardware.cuda_graphs` under this placement: a graph replays fixed addresses, so
        blocks that move (uploaded into rotating slots, gathered by FSDP) run eagerly --
        `auto` turns graphs off, `true` is refused."""
        if resolved and not self.graphs:
            if requested is True:
                raise ConfigError("hardware.cuda_graphs", f"got true with {self.field}={self.value}; "
                                  "allowed: auto, false (its blocks move between forwards)")
            return False
        return resolved

    def load_device(self) -> torch.device:
        """Where the model is loaded before `place` (the host, for a model that will not fit)."""
        return self.device

    def place(self, bundle) -> None:
        """Move or shard the loaded model (`bundle.device`, `bundle.trainable` updated)."""

    def directions(self, directions):
        """The directions the solver's updates go through."""
        return directions

    def probes(self, directions, objective):
        """The probe strategy this placement needs, or None for the solver's own."""
        return None

    def settle(self) -> None:
        """Finish deferred work (updates not yet applied to streamed blocks)."""


def build_placement(hardware, device: torch.device, ranks: Ranks) -> Placement:
    """The placement `hardware.offload` / `hardware.shard` ask for (ConfigError otherwise)."""
    offload, shard = hardware.get("offload", "none"), hardware.get("shard", "none")
    if offload not in OFFLOAD:
        raise ConfigError("hardware.offload", f"got {offload!r}; allowed: {list(OFFLOAD)}")
    if shard not in SHARD:
        raise ConfigError("hardware.shard", f"got {shard!r}; allowed: {list(SHARD)}")
    if offload != "none" and shard != "none":
        raise ConfigError("hardware.shard", f"got {shard!r} with hardware.offload={offload}; allowed: "
                          "none (a model either streams from host memory or is sharded, not both)")
    if offload != "none":
        from zoexp.offload import HostOffload

        return HostOffload(device, ranks, simulated=offload == "simulated")
    if shard == "fsdp":
        from zoexp.sharding import FSDPShard

        return FSDPShard(device, ranks)
    return Placement(device, ranks)
