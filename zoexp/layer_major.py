"""Layer-major probes: every probe of a step passes through a decoder block before the next
block runs, so a block that must be fetched first (streamed from host memory, all-gathered
from its shards) is fetched once per step instead of once per forward.

How. The objective pushes P copies of the batch through one forward (`group_losses`, rows
group-major). The model is cut into *units*: its decoder blocks (the classes a Hugging Face
model lists in `_no_split_modules`) and every other module that owns parameters (embeddings,
final norm, LM head). Each unit's `forward` is replaced by one that runs row group g under
probe g's perturbation of the unit's own trainable parameters, walking the probes with the
same chained verbs as the sequential strategy (`probes.step_to`), and returns the groups'
outputs concatenated. Between units the activations of all P probes are alive (one tensor per
probe); nothing else is kept.

Why the losses equal the sequential strategy's, bit for bit:
* every unit computes on exactly the rows and shapes a forward of the sequential run sees --
  group g's rows are a view with the strides of the tensor the sequential run passes -- so
  each matmul and norm sees the same operands in the same shapes;
* its parameters hold the same values: the solver's own directions restricted to the unit
  (`subset`: z stays the function of the global element index, DESIGN.md invariant 2), walked
  through the same sweeps, so in place each element goes through the same rounding steps;
* what runs between units on all P x rows at once is row-wise (position embeddings added,
  attention masks, rotary angles, the objective's log-softmax; the per-group mean is taken on
  each group alone: `Objective.group_losses`).
A unit's arguments are split by one rule: a tensor of two or more dimensions whose first
dimension is the call's row count (that of its first such tensor) holds rows; everything else
(a [T] cache position, a broadcast [1, 1, T, T] mask) is passed whole. Checked for OPT and
Llama: tests/test_layer_major.py. Tied parameters (OPT's LM head is its embedding matrix) are
perturbed by each unit that uses them: exact (virtual) perturbation is unaffected; in place
such a tensor goes through two perturb/restore chains a step instead of one.

Placements plug in through `hooks` (`enter(unit)` before a unit runs: upload a streamed
block; `leave(unit, wrote)` after: write it back) and `updates`, a log of deferred updates
that a unit applies when it next runs, the last one fused with its first perturbation
(zoexp/offload.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from zoexp.probes import STRATEGIES, Probe, step_to

THETA = Probe()


@dataclass(eq=False)
class Unit:
    """A module that runs its row groups under their perturbations: a decoder block, or a
    module outside the blocks that owns parameters."""

    name: str
    module: torch.nn.Module
    block: bool
    trainable: list[tuple[str, int]] = field(default_factory=list)  # (name in module, global index)

    @property
    def indices(self) -> list[int]:
        return [i for _, i in self.trainable]

    def current_params(self) -> list[torch.Tensor]:
        """The tensors that hold this unit's trainable parameters right now (an uploaded block's
        GPU copies, an FSDP block's unsharded parameters)."""
        return [self.module.get_parameter(name) for name, _ in self.trainable]


def block_class_names(model: torch.nn.Module) -> set[str]:
    """The decoder block classes of a Hugging Face model (its `_no_split_modules`), also
    through a peft wrapper."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def is_block(module: torch.nn.Module, names: set[str]) -> bool:
    return any(cls.__name__ in names for cls in type(module).__mro__)  # FSDP2 subclasses it


def find_units(model: torch.nn.Module, trainable: Sequence[tuple[str, torch.Tensor]]) -> list[Unit]:
    """The units of `model` in forward (module) order; `trainable` is the solver's parameter
    list as (name, tensor) pairs -- a tensor's global index is its position there."""
    index = {id(p): i for i, (_, p) in enumerate(trainable)}
    names, units = block_class_names(model), []

    def visit(prefix: str, module: torch.nn.Module) -> None:
        block = is_block(module, names)
        if block or next(module.named_parameters(recurse=False), None) is not None:
            owned = [(n, index[id(p)]) for n, p in module.named_parameters() if id(p) in index]
            units.append(Unit(prefix.rstrip("."), module, block, owned))
            return
        for name, child in module.named_children():
            visit(f"{prefix}{name}.", child)

    visit("", model)
    return units


class Units:
    """A model's units with their forwards replaced (see the module doc). One per model:
    `Units.of` returns the installed one."""

    def __init__(self, model: torch.nn.Module, trainable: Sequence[tuple[str, torch.Tensor]]) -> None:
        self.model = model
        self.list = find_units(model, trainable)
        self.directions = None             # the solver's directions (`subset` per unit)
        self.probes: list[Probe] | None = None  # set for one grouped forward by LayerMajorProbes
        self.hooks = None                  # placement: enter(unit) / leave(unit, wrote)
        self.updates = None                # placement: deferred updates (pending / applied)
        self._engines: dict[int, tuple[tuple, object]] = {}
        for unit in self.list:
            self._wrap(unit)
        model._zo_units = self

    @classmethod
    def of(cls, model: torch.nn.Module, params: Sequence[torch.Tensor]) -> "Units":
        if getattr(model, "_zo_units", None) is not None:
            return model._zo_units
        by_id = {id(p): n for n, p in model.named_parameters()}
        missing = [i for i, p in enumerate(params) if id(p) not in by_id]
        if missing:
            raise ValueError(f"trainable parameters {missing[:3]} are not parameters of the model")
        return cls(model, [(by_id[id(p)], p) for p in params])

    @property
    def blocks(self) -> list[Unit]:
        return [u for u in self.list if u.block]

    # ---- the replaced forward ------------------------------------------------------------
    def _wrap(self, unit: Unit) -> None:
        original = unit.module.forward

        def forward(*args, **kwargs):
            return self._run(unit, original, args, kwargs)

        unit.module.forward = forward

    def _engine(self, unit: Unit):
        """The solver's directions restricted to the unit, over its current tensors (cached
        while they stay the same objects)."""
        params = unit.current_params()
        key = tuple(map(id, params))
        cached = self._engines.get(id(unit))
        if cached is None or cached[0] != key:
            cached = (key, self.directions.subset(params, unit.indices))
            self._engines[id(unit)] = cached
        return cached[1]

    def _run(self, unit: Unit, original, args: tuple, kwargs: dict):
        probes = self.probes or [THETA]
        pending = self.updates.pending(unit) if self.updates is not None else []
        perturbed = any(p.seed is not None for p in probes)
        if self.hooks is not None:
            self.hooks.enter(unit)
        engine, active, wrote = None, None, False
        try:
            if unit.trainable and (pending or perturbed):
                engine = self._engine(unit)
                wrote = bool(pending) or (perturbed and not getattr(engine, "exact", True))
            fused = False
            if pending:
                active, fused = self._apply(engine, pending, first=probes[0]), True
                self.updates.applied(unit)
            groups = len(probes)
            if groups == 1:
                if engine is not None and not fused:
                    active = step_to(engine, active, probes[0])
                out = original(*args, **kwargs)
            else:
                n = _rows((args, kwargs))
                if n is None or n % groups:
                    raise RuntimeError(f"unit {unit.name!r}: cannot split {n} rows into {groups} "
                                       "probe groups")
                rows, outs = n // groups, []
                for g, probe in enumerate(probes):
                    if engine is not None and not (fused and g == 0):
                        active = step_to(engine, active, probe)
                    outs.append(original(*_group(args, g, rows, n), **_group(kwargs, g, rows, n)))
                out = _concat(outs, rows)
            if engine is not None:
                active = step_to(engine, active, THETA)
        finally:
            if active is not None:  # an exception mid-walk: leave the weights at theta
                step_to(engine, active, THETA)
            if self.hooks is not None:
                self.hooks.leave(unit, wrote)
        return out

    @staticmethod
    def _apply(engine, pending: list[tuple[int, float, float]], first: Probe) -> Probe | None:
        """Apply deferred updates, the last one fused with the first perturbation."""
        for seed, coef, decay in pending[:-1]:
            engine.update(seed, coef, decay)
        seed, coef, decay = pending[-1]
        engine.update_perturb(seed, coef, decay, first.seed, first.scale)
        return first if first.seed is not None else None

    def flush(self) -> None:
        """Apply every deferred update now (a streamed block is uploaded, updated and written
        back): before anything reads the stored weights."""
        if self.updates is None:
            return
        for unit in self.list:
            pending = self.updates.pending(unit)
            if not pending:
                continue
            if self.hooks is not None:
                self.hooks.enter(unit)
            try:
                engine = self._engine(unit)
                for seed, coef, decay in pending:
                    engine.update(seed, coef, decay)
                self.updates.applied(unit)
            finally:
                if self.hooks is not None:
                    self.hooks.leave(unit, True)


def _rows(obj) -> int | None:
    """The row count of a unit call: the first dimension of its first tensor of 2+ dims."""
    if isinstance(obj, torch.Tensor):
        return obj.shape[0] if obj.dim() >= 2 else None
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    for item in items:
        n = _rows(item)
        if n is not None:
            return n
    return None


def _group(obj, g: int, rows: int, n: int):
    """Row group g of every row-holding tensor in obj (tuples, lists and dicts followed)."""
    if isinstance(obj, torch.Tensor):
        return obj[g * rows:(g + 1) * rows] if obj.dim() >= 2 and obj.shape[0] == n else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_group(o, g, rows, n) for o in obj)
    if isinstance(obj, dict):
        return {k: _group(v, g, rows, n) for k, v in obj.items()}
    return obj


def _concat(outs: list, rows: int):
    """The groups' outputs as one: row tensors concatenated, anything else from group 0."""
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs) if first.dim() >= 1 and first.shape[0] == rows else first
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([o[i] for o in outs], rows) for i in range(len(first)))
    if first is None or isinstance(first, (int, float, bool, str)):
        return first
    raise TypeError(f"a unit returned {type(first).__name__}; layer-major probes merge tensors, "
                    "tuples and lists")


class LayerMajorProbes:
    """One grouped forward per step: each unit runs every probe's rows before the next unit
    (module doc). `units` come from a placement that streams or shards the model, else they
    are installed on the objective's model here."""

    name = "layer_major"

    def __init__(self, directions, objective, units: Units | None = None) -> None:
        self.directions, self.objective = directions, objective
        self.units = units or Units.of(objective.scorer.model, directions.params)
        self.units.directions = directions

    def losses(self, batch, probes: Sequence[Probe]) -> list[float]:
        self.units.probes = list(probes)
        try:
            return self.objective.group_losses(batch, len(probes))
        finally:
            self.units.probes = None


STRATEGIES["layer_major"] = LayerMajorProbes
