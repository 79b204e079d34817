"""`hardware.shard=fsdp`: a model larger than one GPU, sharded over several with PyTorch FSDP2
(`fully_shard` on every decoder block and on the root), launched like any run of several
processes (torchrun, or SLURM `hardware.tasks_per_node`: zoexp.distributed).

How a ZO step runs on shards. Each rank keeps 1/W of every parameter (rows of dim 0). The
probes are layer-major (`zoexp.layer_major`): FSDP2 all-gathers a block before its forward,
then the block runs every probe's rows with *virtual* (exact) perturbation of the gathered
parameters -- the gathered values are the one-process values, and z comes from the global
element index -- and FSDP2 frees the gathered copy after. So a block is gathered once per step
and the losses are the one-process losses. The update then touches local shards only: each
rank sweeps its rows with z taken at their global indices (`ShardedDirections`), which is the
one-process update restricted to those rows. No weight ever crosses the network for the
update; only the forward's all-gathers and the scalar loss table do.

Why virtual and not in-place perturbation: FSDP2 re-gathers the *sharded* values before every
forward of a block and discards the gathered copy after it, so an in-place perturbation of
the gathered parameters would be lost, and one of the shards would need an all-gather per
probe. `solver.exact=false` is refused.

What combines with it: perturbation-parallel steps (spsa, spsa15: each rank probes its share
of the directions in its one layer-major forward, and the loss table is all-reduced as
without sharding), and MeZO (its two probes are computed on every rank: sharding buys memory,
not speed). Every forward is collective, so evaluation runs every batch on every rank
(`Ranks.lockstep`). Not supported: offload together with sharding, SubZero (its low-rank
directions are not generated element by element), ZO-Adam / momentum (dense state), in-place
perturbation, first-order baselines; and loading a hub checkpoint that does not fit in the host
memory of every process (each process loads the model on the CPU before sharding it).
Tests: tests/test_sharding.py (two gloo processes equal one process bit for bit).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from zoexp.errors import ConfigError
from zoexp.layer_major import LayerMajorProbes, Units, block_class_names, is_block
from zoexp.placement import Placement


def _dtensor():
    from torch.distributed.tensor import DTensor

    return DTensor


def shard_model(model: torch.nn.Module, device_type: str) -> None:
    """fully_shard every decoder block, then the root (embeddings, final norm, head). Every
    module reshards after its forward, the root too (FSDP2 keeps the root gathered by
    default, for a backward that a ZO step never runs): the gathered copy would otherwise
    miss the update that the next step's forward must see."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (torch.distributed.get_world_size(),))
    names = block_class_names(model)
    for module in list(model.modules()):
        if is_block(module, names):
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


def local_start(p) -> int:
    """The global flat index of the first element of a DTensor parameter's local shard."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(not isinstance(pl, Shard) or pl.dim != 0 for pl in p.placements):
        raise ValueError(f"expected a dim-0 shard, got {p.placements}")
    _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    strides = [math.prod(p.shape[d + 1:]) for d in range(len(p.shape))]
    return sum(o * s for o, s in zip(offset, strides))


def host_copy(p: torch.Tensor) -> torch.Tensor:
    """A full CPU copy of a parameter (gathered from every rank if it is sharded: collective)."""
    if isinstance(p, _dtensor()):
        return p.full_tensor().cpu()
    return p.detach().to("cpu", copy=True)


@torch.no_grad()
def load_into(p: torch.Tensor, saved: torch.Tensor) -> None:
    """Write a full saved tensor into a parameter (its own rows only if it is sharded)."""
    if isinstance(p, _dtensor()):
        local = p.to_local()
        start = local_start(p)
        local.copy_(saved.reshape(-1)[start:start + local.numel()].view(local.shape))
    else:
        p.copy_(saved)


class ShardedDirections:
    """The solver's directions over a sharded model: updates sweep each rank's local shards
    at their global indices; probes are the units' business (layer-major, on the gathered
    parameters)."""

    def __init__(self, inner) -> None:
        self.inner, self.params, self.exact = inner, inner.params, inner.exact
        DTensor = _dtensor()
        self.offsets = [offset + local_start(p) if isinstance(p, DTensor) else offset
                        for p, offset in zip(inner.params, inner.offsets)]

    def update(self, seed: int, coef: float, decay: float = 0.0) -> None:
        # The local tensors are looked up at each update: FSDP2 re-saves them at its lazy init.
        DTensor = _dtensor()
        local = [p.to_local() if isinstance(p, DTensor) else p for p in self.params]
        self.inner.on(local, self.offsets).update(seed, coef, decay)

    def subset(self, params, indices):
        return self.inner.subset(params, indices)

    def _whole_model(self, *args, **kwargs):
        raise RuntimeError("a sharded model runs its probes layer-major (zoexp.layer_major) on "
                           "the gathered blocks; the whole model is never perturbed")

    perturb = move = restore = restore_update_perturb = restore_and_update = direction = _whole_model


class FSDPShard(Placement):
    """`hardware.shard=fsdp` (module doc)."""

    name = "fsdp"
    field, value = "hardware.shard", "fsdp"
    graphs = False

    def __init__(self, device: torch.device, ranks) -> None:
        super().__init__(device, dataclasses.replace(ranks, lockstep=True))
        self.units: Units | None = None

    def check(self, solver, peft_config=None) -> None:
        if self.ranks.world < 2:
            raise ConfigError("hardware.shard", "got 'fsdp' in a run of one process; allowed: none "
                              "(fsdp shards over the processes of torchrun or hardware.tasks_per_node)")
        if peft_config is not None:
            raise ConfigError("hardware.shard", f"got 'fsdp' with {type(peft_config).__name__}; "
                              "allowed: none (fsdp trains every weight: peft=none)")
        if solver.trains and not getattr(solver, "exact", True):
            raise ConfigError("solver.exact", "got false with hardware.shard=fsdp; allowed: true "
                              "(FSDP discards the gathered weights after each forward)")
        super().check(solver, peft_config)

    def load_device(self) -> torch.device:
        return torch.device("cpu")

    def place(self, bundle, materialize=None) -> None:
        """Shard the model; `materialize(model)` then allocates and fills the shards of a model
        built on the meta device (benchmarks: a model no process could hold whole)."""
        shard_model(bundle.model, self.device.type)
        if materialize is not None:
            materialize(bundle.model)
        bundle.trainable = [(n, p) for n, p in bundle.model.named_parameters() if p.requires_grad]
        bundle.device = self.device
        self.units = Units(bundle.model, bundle.trainable)

    def directions(self, directions) -> ShardedDirections:
        return ShardedDirections(directions)

    def probes(self, directions, objective) -> LayerMajorProbes:
        return LayerMajorProbes(directions, objective, self.units)
