"""Forward passes captured once as CUDA graphs and replayed (`hardware.cuda_graphs`).

Why: on small and medium models a ZO step is launch-bound (DESIGN.md, regime 2). A Hugging
Face forward is ~50 kernel launches per decoder layer, each paid in Python and the CUDA
driver, and exact mode adds a Python dispatch per parameter read (`zoexp.perturb._Virtual`);
the GPU's arithmetic is a fraction of that. Captured once into a CUDA graph, the same
kernels replay with one call and no gaps.

What is captured: the scorer's one model call (`forward_logits`: token ids and attention
mask in, float32 logits of the last `keep` positions out), on static buffers. Everything
before it (tokenising, padding) and after it (log-softmax, the loss) stays eager and cheap.
Every caller of the scorer -- every solver's probes, every probe strategy, evaluation --
gets the fast path without knowing of it.

Static shapes. A graph replays one shape. A batch is padded up to a bucket: rows to a power
of two up to 8, then a multiple of 8; length (left padding, mask 0, like the scorer's own)
to a multiple of `LENGTH_MULTIPLE`. Batches are already length-grouped (zoexp.batching), so
a run meets a handful of buckets; each is captured at first sight (one eager warm-up forward,
one captured) and replayed afterwards. Padding changes no real token's logits: its keys are
masked and the positions come from the mask. All graphs share one memory pool, so their
temporaries cost the memory of one forward.

What a replay sees of the weights. A graph replays reads of fixed addresses. In place
(`exact=False`) the weights are the parameters: a graph captured once serves every
perturbation. In exact mode a forward under a perturbation materialises rnd(theta + scale z)
per parameter read; those kernels read the active (seed, scale) from device memory
(`kernels.sweep_op.DeviceScalars`), so a graph captured under one perturbation replays any
other of the same engine, bit for bit like the eager path. Graphs are keyed on
`zoexp.perturb.capture_state()` (plain weights, or which engine's virtual perturbation);
where that state cannot be captured (SubZero's host-side low-rank directions, a packed
direction, another probe strategy's host-side state) the forward runs eagerly.

Not captured: forwards under autograd (first-order solvers), generation (`model.generate`),
grouped forwards (`groups > 1`: a batched-probe strategy's row groups differ by state this
layer cannot see unless that strategy registers it with `zoexp.perturb.activated`; then the
scorer's `groups == 1` condition can go), and a shape whose capture fails (logged once, then
eager). If a parameter's storage is replaced (`p.data = ...`, `module.to`), the graphs are
dropped and recaptured.
"""

from __future__ import annotations

import logging

import torch

from zoexp.errors import ConfigError
from zoexp.perturb import capture_state

log = logging.getLogger("zoexp")

LENGTH_MULTIPLE = 8


def resolve_cuda_graphs(value, device: torch.device, solver=None) -> bool:
    """`hardware.cuda_graphs` -> whether forwards are graph-captured. auto: on for CUDA;
    true: on, and a one-line error where it cannot apply; false: off."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError("hardware.cuda_graphs", f"got {value!r}; allowed: auto, true, false")
    if value == "auto":
        return device.type == "cuda"
    if value and device.type != "cuda":
        raise ConfigError("hardware.cuda_graphs", f"got true on device {device.type}; allowed: auto "
                          "or false (CUDA graphs need a CUDA device)")
    if value and solver is not None and solver.trains and not solver.graphable_steps:
        raise ConfigError("hardware.cuda_graphs", f"got true with {type(solver).__name__}, whose "
                          "training forwards cannot be replayed from a graph (backprop, or "
                          "perturbations computed on the host); allowed: auto, false")
    return value


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   keep: int) -> torch.Tensor:
    """The scorer's model call: float32 logits of the last `keep` positions, [n, keep, vocab].
    Positions come from the mask, so left padding shifts no token."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                logits_to_keep=keep, use_cache=False)
    return out.logits[:, -keep:].float()


def bucket_rows(n: int) -> int:
    return 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8


def bucket_length(t: int) -> int:
    return -(-t // LENGTH_MULTIPLE) * LENGTH_MULTIPLE


class _Captured:
    """One captured forward: its graph and static input / output buffers."""

    def __init__(self, graph, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 logits: torch.Tensor) -> None:
        self.graph, self.input_ids, self.attention_mask, self.logits = (
            graph, input_ids, attention_mask, logits)

    def load(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Right-align the batch in the static buffers. Left of it the mask is zeroed; rows
        below it keep an earlier real row (or the all-ones start), a valid row whose output
        is dropped."""
        n, t = input_ids.shape
        pad = self.input_ids.shape[1] - t
        if pad:
            self.attention_mask[:n, :pad].zero_()
        self.input_ids[:n, pad:].copy_(input_ids)
        self.attention_mask[:n, pad:].copy_(attention_mask)


class GraphedForward:
    """`forward_logits(model, ...)` through captured CUDA graphs (module doc)."""

    def __init__(self, model, pad_token_id: int | None = None) -> None:
        self.model = model
        self.pad = int(pad_token_id or 0)
        self.graphs: dict[tuple, _Captured | None] = {}
        self.pool = None
        self._tensors = [*model.parameters(), *model.buffers()]
        self._addresses = self._current_addresses()
        self._noted: set[str] = set()
        self.counts = {"captured": 0, "replayed": 0, "eager": 0}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 keep: int) -> torch.Tensor:
        entry = self._entry(input_ids, keep)
        if entry is None:
            self.counts["eager"] += 1
            return forward_logits(self.model, input_ids, attention_mask, keep)
        entry.load(input_ids, attention_mask)
        entry.graph.replay()
        self.counts["replayed"] += 1
        return entry.logits[:input_ids.shape[0]].clone()

    def summary(self) -> str:
        c = self.counts
        reasons = f" (eager: {'; '.join(sorted(self._noted))})" if self._noted else ""
        return (f"cuda graphs: {len(self.graphs)} shapes, {c['captured']} captured, "
                f"{c['replayed']} replayed, {c['eager']} eager forwards{reasons}")

    # ---- internals -------------------------------------------------------------------------
    def _entry(self, input_ids: torch.Tensor, keep: int) -> _Captured | None:
        if torch.is_grad_enabled():
            return self._note("forwards under autograd")
        if not input_ids.is_cuda:
            return self._note("tensors not on a CUDA device")
        state = capture_state()
        if state is None:
            return self._note("a perturbation whose values live on the host")
        addresses = self._current_addresses()
        if addresses != self._addresses:  # storage replaced: every graph reads stale memory
            self.graphs.clear()
            self._addresses = addresses
        n, t = input_ids.shape
        key = (bucket_rows(n), bucket_length(t), keep, state)
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key[:3], device=input_ids.device)
        return self.graphs[key]

    def _current_addresses(self) -> list[int]:
        with torch._C.DisableTorchFunctionSubclass():  # exact mode's parameters answer directly
            return [t.data_ptr() for t in self._tensors]

    def _capture(self, rows: int, length: int, keep: int, device) -> _Captured | None:
        input_ids = torch.full((rows, length), self.pad, dtype=torch.long, device=device)
        attention_mask = torch.ones_like(input_ids)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: lazy initialisation, kernel compilation
                forward_logits(self.model, input_ids, attention_mask, keep)
            torch.cuda.current_stream(device).wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                logits = forward_logits(self.model, input_ids, attention_mask, keep)
        except Exception as exc:  # noqa: BLE001 - any failure: this shape runs eagerly
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self._note(f"capture of {rows}x{length} failed: {first}")
            return None
        self.counts["captured"] += 1
        return _Captured(graph, input_ids, attention_mask, logits)

    def _note(self, reason: str) -> None:
        if reason not in self._noted:
            self._noted.add(reason)
            log.info("cuda graphs: eager forward (%s)", reason)
        return None
