"""`hardware.offload=cpu`: train a model larger than the GPU by streaming its decoder blocks
from pinned host memory (ZO2-class offload), for every seeded ZO solver.

Where things live. Each decoder block's parameters are one flat pinned host buffer in the
model dtype (trainable parameters first); embeddings, final norm and LM head stay on the GPU.
The GPU holds `buffers` block-sized slots (3 by default: one computing, two uploading).

A step (with `zoexp.layer_major`'s probes). Every probe of the step passes through a block
before the next block runs, so a block crosses PCIe once per step:
* `enter`: block i waits for its upload (issued earlier on the copy stream), its parameters
  point into its slot, and the uploads of blocks i+1, i+2 are issued (double buffering: they
  copy while block i computes; the last blocks of a forward prefetch the first of the next);
* the block's deferred updates -- the update of step t is known only after the last block
  ran, so it is applied when the block is uploaded at step t+1 -- run on the GPU, the last
  one fused with the block's first perturbation (`Units._apply`), then its probes run;
* `leave`: if the block changed (an update was applied, or in place the probes swept it) it
  is written back to host memory on a third stream, while the next blocks compute; its slot is
  reused once that write is done.
Evaluation streams the blocks the same way (one forward, no probes). `settle` (called by the
loop before evaluation, checkpoints and the end: `Solver.settle`) applies the updates still
deferred, so the host buffers -- which are the model's parameters while not uploaded -- hold
theta for checkpoints and replay; the loop's own writes there (resume, best weights) are seen
through the parameters' version counters and make a stale prefetch upload again.

Same numbers as in GPU memory: each element goes through the same sweeps in the same order
(a deferred update then the next perturbation, each rounded: `kernels.sweep` rounds after every
stage), and layer-major forwards compute what sequential ones do, so in exact mode a run's
trajectory and weights equal the in-GPU run's bit for bit (tests/test_offload.py, with the
host/device split simulated on the CPU: `hardware.offload=simulated`).

What it refuses (one line before the model loads: `check`): a CPU device (nothing to offload
to; `simulated` is the test mode), solvers whose update is not seeded directions (the
first-order baselines, ZO-Adam and momentum: their state is dense, the size of the model),
prefix / prompt tuning, several processes, and sharding (zoexp.placement).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from zoexp.errors import ConfigError
from zoexp.layer_major import LayerMajorProbes, Unit, Units
from zoexp.placement import Placement

BUFFERS = 3   # GPU slots: one block computing while two upload (a third hides the write-back)
ALIGN = 512   # byte alignment of each parameter inside a block's flat buffer


class _Streams:
    """The copy and write-back streams and their events on CUDA; on the CPU (simulated
    offload) nothing: every copy is synchronous."""

    def __init__(self, device: torch.device) -> None:
        self.cuda, self.device = device.type == "cuda", device
        self.copy = torch.cuda.Stream(device) if self.cuda else None
        self.back = torch.cuda.Stream(device) if self.cuda else None

    def compute(self):
        return torch.cuda.current_stream(self.device) if self.cuda else None

    def record(self, stream):
        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record(stream)
        return event

    @staticmethod
    def wait(stream, event) -> None:
        if stream is not None and event is not None:
            stream.wait_event(event)

    def on(self, stream):
        return torch.cuda.stream(stream) if self.cuda else _NoStream()

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


class _NoStream:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@dataclass(eq=False)
class _Slot:
    buffer: torch.Tensor          # uint8, on the device
    block: "_Block | None" = None
    free: object = None           # event: its last occupant finished computing / writing back


@dataclass(eq=False)
class _Block:
    unit: Unit
    host: torch.Tensor            # uint8, pinned: the block's parameters while not uploaded
    layout: list = field(default_factory=list)  # (param, byte offset, host view)
    write_bytes: int = 0          # the prefix holding trainable parameters (written back)
    slot: _Slot | None = None
    ready: object = None          # event: upload into `slot` done
    written: object = None        # event: last write-back into `host` done
    versions: tuple = ()          # parameter versions when the upload was issued

    def current_versions(self) -> tuple:
        return tuple(p._version for p, _, _ in self.layout)


def _register(host: torch.Tensor) -> None:
    """Page-lock a host tensor in place (cudaHostRegister): pinned without the caching host
    allocator's power-of-two rounding, which would take 2 GB for a 1.2 GB OPT-30B block."""
    cudart = torch.cuda.cudart()
    rc = cudart.cudaHostRegister(host.data_ptr(), host.numel(), 0)
    if int(rc) != 0:
        raise RuntimeError(f"cudaHostRegister of {host.numel() / 2**30:.1f} GiB failed ({rc}): "
                           "not enough lockable host memory?")
    weakref.finalize(host, cudart.cudaHostUnregister, host.data_ptr())  # before the memory is freed


class BlockStore:
    """The decoder blocks in host memory and their GPU slots: `enter` / `leave` are the
    `Units.hooks` (see the module doc)."""

    def __init__(self, blocks: list[Unit], device: torch.device, trainable_ids: set[int],
                 buffers: int = BUFFERS) -> None:
        self.streams, self.device = _Streams(device), device
        self.order: list[_Block] = []
        self.by_unit: dict[int, _Block] = {}
        self.bytes_up = self.bytes_down = 0
        for unit in blocks:
            block = self._store(unit, trainable_ids)
            self.order.append(block)
            self.by_unit[id(unit)] = block
        size = max(b.host.numel() for b in self.order)
        self.slots = [_Slot(torch.empty(size, dtype=torch.uint8, device=device))
                      for _ in range(min(buffers, len(self.order)))]
        self.position = {id(b): i for i, b in enumerate(self.order)}

    def _store(self, unit: Unit, trainable_ids: set[int]) -> _Block:
        """Copy the block's parameters into one flat host buffer (trainable first) and make
        them views of it; the block's buffers (non-parameters) go to the device."""
        params = list(unit.module.named_parameters())
        params.sort(key=lambda np: id(np[1]) not in trainable_ids)  # stable: trainable first
        offsets, total, write = [], 0, 0
        for _, p in params:
            total = -(-total // ALIGN) * ALIGN
            offsets.append(total)
            total += p.numel() * p.element_size()
            if id(p) in trainable_ids:
                write = total
        host = torch.empty(total, dtype=torch.uint8)
        if self.streams.cuda:
            host.zero_()  # first touch on every core (torch's CPU threads), then page-lock
            _register(host)
        block = _Block(unit, host, write_bytes=write)
        with torch.no_grad():
            for (_, p), off in zip(params, offsets):
                view = _view(host, off, p)
                view.copy_(p.data)
                p.data = view
                block.layout.append((p, off, view))
        for module in unit.module.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None:
                    module._buffers[name] = buf.to(self.device)
        return block

    # ---- Units.hooks ----------------------------------------------------------------------
    def enter(self, unit: Unit) -> None:
        block = self.by_unit.get(id(unit))
        if block is None:
            return
        if block.slot is None or block.versions != block.current_versions():
            self._upload(block)
        self.streams.wait(self.streams.compute(), block.ready)
        for p, off, _ in block.layout:
            p.data = _view(block.slot.buffer, off, p)
        at = self.position[id(block)]
        for k in range(1, len(self.slots)):
            nxt = self.order[(at + k) % len(self.order)]
            if nxt.slot is None:
                self._upload(nxt, evict=False)

    def leave(self, unit: Unit, wrote: bool) -> None:
        block = self.by_unit.get(id(unit))
        if block is None:
            return
        slot, streams = block.slot, self.streams
        done = streams.record(streams.compute())
        if wrote and block.write_bytes:
            streams.wait(streams.back, done)
            with streams.on(streams.back):
                block.host[:block.write_bytes].copy_(slot.buffer[:block.write_bytes],
                                                     non_blocking=streams.cuda)
            block.written = streams.record(streams.back)
            self.bytes_down += block.write_bytes
            done = block.written
        for p, _, view in block.layout:
            p.data = view
        slot.free, slot.block, block.slot = done, None, None

    # ---- transfers ------------------------------------------------------------------------
    def _upload(self, block: _Block, evict: bool = True) -> bool:
        """Issue the block's host-to-device copy into its home slot (block i always lives in
        slot i mod `buffers`: the same addresses every step, so the perturbation engines keep
        their launch plans). A prefetch waits while another block holds that slot (`evict`
        False: returns False); the block's own forward takes it from a block that was only
        prefetched."""
        slot = self.slots[self.position[id(block)] % len(self.slots)]
        if slot.block is not None and slot.block is not block:
            if not evict or _in_use(slot.block):
                if evict:
                    raise RuntimeError("offload: two blocks in use at once share a slot")
                return False
            slot.block.slot = None
        streams = self.streams
        streams.wait(streams.copy, slot.free)
        streams.wait(streams.copy, block.written)
        with streams.on(streams.copy):
            slot.buffer[:block.host.numel()].copy_(block.host, non_blocking=streams.cuda)
        block.ready = streams.record(streams.copy)
        block.versions = block.current_versions()
        slot.block, block.slot = block, slot
        self.bytes_up += block.host.numel()
        return True

    def synchronize(self) -> None:
        """Wait for every write-back: the host buffers hold the stored weights after this."""
        self.streams.synchronize()

    @property
    def host_bytes(self) -> int:
        return sum(b.host.numel() for b in self.order)


def _in_use(block: _Block) -> bool:
    """Whether the block's parameters point into its slot (entered, not yet left)."""
    p, off, view = block.layout[0]
    return p.data_ptr() != view.data_ptr()


def _view(buffer: torch.Tensor, offset: int, p: torch.Tensor) -> torch.Tensor:
    nbytes = p.numel() * p.element_size()
    return buffer[offset:offset + nbytes].view(p.dtype).view(p.shape)


class DeferredDirections:
    """The solver's directions over an offloaded model. Updates of parameters on the GPU
    (embeddings, norms, head) are applied at once; those of streamed blocks are logged, and a
    block applies what it has not yet applied when it next runs (`Units._run`, `Units.flush`).
    Probes are the units' business (layer-major): perturbing the whole model is refused."""

    def __init__(self, inner, units: Units) -> None:
        self.inner, self.params = inner, inner.params
        self.exact = getattr(inner, "exact", True)
        streamed = {i for unit in units.blocks for i in unit.indices}
        resident = [i for i in range(len(self.params)) if i not in streamed]
        self.resident = inner.subset([self.params[i] for i in resident], resident) if resident else None
        self.log: list[tuple[int, float, float]] = []
        self.base = 0  # log position of log[0]
        self.done = {id(u): 0 for u in units.blocks if u.trainable}

    def update(self, seed: int, coef: float, decay: float = 0.0) -> None:
        if self.resident is not None:
            self.resident.update(seed, coef, decay)
        if self.done and (coef != 0.0 or decay != 0.0):
            self.log.append((seed, coef, decay))

    def pending(self, unit: Unit) -> list[tuple[int, float, float]]:
        applied = self.done.get(id(unit))
        return [] if applied is None else self.log[applied - self.base:]

    def applied(self, unit: Unit) -> None:
        self.done[id(unit)] = self.base + len(self.log)
        oldest = min(self.done.values())
        del self.log[:oldest - self.base]
        self.base = oldest

    def subset(self, params, indices):
        return self.inner.subset(params, indices)

    def direction(self, seed: int, index: int) -> torch.Tensor:
        return self.inner.direction(seed, index)

    def _whole_model(self, *args, **kwargs):
        raise RuntimeError("an offloaded model runs its probes layer-major (zoexp.layer_major): "
                           "units perturb their own parameters, the whole model is never perturbed")

    perturb = move = restore = restore_update_perturb = restore_and_update = _whole_model


class HostOffload(Placement):
    """`hardware.offload=cpu` (module doc); `simulated=True` plays the same roles on a CPU
    device -- separate storage for the 'GPU' slots, explicit copies -- so CPU tests can compare
    an offloaded run with an in-memory one bit for bit."""

    name = "offload"
    graphs = False

    def __init__(self, device: torch.device, ranks, simulated: bool = False,
                 buffers: int = BUFFERS) -> None:
        super().__init__(device, ranks)
        self.simulated, self.buffers = simulated, buffers
        self.value = "simulated" if simulated else "cpu"
        self.units: Units | None = None
        self.store: BlockStore | None = None

    def check(self, solver, peft_config=None) -> None:
        if self.device.type == "cpu" and not self.simulated:
            raise ConfigError("hardware.offload", "got 'cpu' with hardware.device=cpu; allowed: none "
                              "(the model is in host memory already; 'simulated' plays the "
                              "host/device split on the CPU, for tests)")
        if self.simulated and self.device.type != "cpu":
            raise ConfigError("hardware.offload", f"got 'simulated' on {self.device.type}; allowed: "
                              "cpu (simulated is the CPU test mode)")
        if self.ranks.world > 1:
            raise ConfigError("hardware.offload", f"got {self.value!r} in a run of {self.ranks.world} "
                              "processes; allowed: none (offload runs in one process; several "
                              "GPUs: hardware.shard=fsdp)")
        kind = type(peft_config).__name__ if peft_config is not None else None
        if kind not in (None, "LoraConfig"):
            raise ConfigError("hardware.offload", f"got {self.value!r} with {kind}; allowed: none "
                              "(offload runs peft=none or peft=lora)")
        super().check(solver, peft_config)

    def load_device(self) -> torch.device:
        return torch.device("cpu")

    def place(self, bundle) -> None:
        model = bundle.model
        self.units = Units(model, bundle.trainable)
        blocks = self.units.blocks
        if not blocks:
            raise ConfigError("hardware.offload", f"got {self.value!r} but {type(model).__name__} "
                              "names no decoder blocks (_no_split_modules); allowed: none")
        trainable_ids = {id(p) for _, p in bundle.trainable}
        self.store = BlockStore(blocks, self.device, trainable_ids, self.buffers)
        streamed = {id(p) for b in self.store.order for p, _, _ in b.layout}
        with torch.no_grad():
            for module in model.modules():
                for name, p in module._parameters.items():
                    if p is not None and id(p) not in streamed:
                        p.data = p.data.to(self.device)
                for name, buf in module._buffers.items():
                    if buf is not None:
                        module._buffers[name] = buf.to(self.device)
        self.units.hooks = self.store
        bundle.device = self.device

    def directions(self, directions) -> DeferredDirections:
        deferred = DeferredDirections(directions, self.units)
        self.units.updates = deferred
        return deferred

    def probes(self, directions, objective) -> LayerMajorProbes:
        return LayerMajorProbes(directions, objective, self.units)

    def settle(self) -> None:
        if self.units is not None:
            self.units.flush()
            self.store.synchronize()
