"""Batched probes: every perturbed forward of a step as row groups of one batched forward.

n-SPSA / 1.5-SPSA / MeZO probe 2 n (+1) perturbations of the *same* batch. When the perturbed
parameters are small (LoRA, prefix and prompt tuning) or the perturbation is low-rank
(SubZero's Z = U S V^T), the probes need not run one after another: `Objective.group_losses`
pushes G copies of the batch through one forward (rows group-major), and for the duration of
that forward each module that owns a perturbed parameter is given a grouped forward in which
row group g sees probe g's perturbation. Nothing is written into the stored weights.

How a module's rows see their probe (`_Grouped*` below):

* nn.Linear (LoRA's lora_A / lora_B, a prefix projection, any linear layer):
  per-probe weights stacked [G, out, in] and applied with one `bmm` (measured against
  `torch.func.vmap` of `F.linear`: the same time on a CPU, benchmarks/README.md); a low-rank
  direction instead adds scale_g (x V) S_g^T U^T to the unperturbed W x -- three thin matmuls,
  no copy of W.
* nn.Embedding (the virtual tokens of prompt tuning, the key/value prefixes of prefix tuning,
  whose `get_prompt` looks up one row of virtual tokens per batch row): each row looks up its
  group's table; low-rank: E[idx] + scale_g U[idx] S_g V^T.
* any other module (RMSNorm / LayerNorm weights and biases): `torch.func.vmap` over the row
  groups of its first argument, with the group's values substituted (`functional_call`).

The per-probe values are exactly what a sequential probe reads. For the engine's directions
(Gaussian / Rademacher) they are rnd(theta + scale z(seed)) from the engine's own element
function (`kernels.probe_values`: `kernels.sweep`'s body over a second grid axis of probes, one
launch for all probes and tensors; the torch reference per probe on a CPU); for SubZero the
1-D parameters get `ExactDirections`' rnd(theta + scale z) and the matrices the low-rank form
above. So the only difference from sequential probes is the order of summation inside the
batched matmuls (and, for SubZero matrices, applying U S V^T to x instead of to W): losses agree
to float tolerance, the seeds and the update (applied afterwards, by the solver, as always) are
the ones of sequential probes, and a run replays bit-exactly from its trajectory.

While a grouped forward runs, the perturbed parameters are guarded (the engine's class swap,
`zoexp.perturb`): a read of one outside the modules that own it -- a model that reuses a
weight in an unexpected place -- raises instead of silently seeing theta; with
`batched_probes=auto` the strategy then falls back to sequential probes for the rest of the run.

Where it applies (`solver.batched_probes`):

* engine directions (spsa, spsa15, mezo, zo_adam, zo_sgd_momentum, ...) with peft = lora,
  prefix or prompt: the per-probe copies are small (at most `MAX_VALUE_SHARE` of the model).
  peft=none needs a copy of every weight per probe: `true` is refused before the model loads.
* low-rank directions (subzero) with any peft, peft=none included: matrices of linear layers
  and embeddings take the low-rank form, every other parameter (norm weights, biases) is
  copied per probe.
* the objective must group its forwards (`Objective.group_losses`; generation metrics such as
  `objective=f1` do not): checked once the objective exists.

`auto` batches wherever it applies on a GPU, where a small model's forward is launch-bound
(hundreds of kernel launches whatever the rows) and one forward of G n rows costs a fraction
of G forwards. On a CPU the forward is compute-bound already and batching saves only the
Python between probes, so `auto` keeps sequential probes there (README, "Batched probes").

Chunking (`solver.probe_chunk`): probes run in as few batched passes as fit. `auto` sizes a pass
from free GPU memory and an estimate of the activation bytes per token of the model (from its
config, with a 2x margin) plus the per-probe copies; a pass that still runs out of memory is
halved and retried, and the learnt limit kept. On a CPU a pass holds at most `CPU_PASS_TOKENS`
tokens. An integer caps the probes per pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoexp.errors import ConfigError
from zoexp.perturb import PerturbationEngine, _alias, _refresh, _swap_in, _swap_out
from zoexp.probes import STRATEGIES, Probe, ProbeStrategy, SequentialProbes

log = logging.getLogger("zoexp")

MAX_VALUE_SHARE = 0.1     # per-probe copies only of tensors adding up to <= this share of the model
CPU_PASS_TOKENS = 8192    # tokens (rows x padded length) per batched pass on a CPU (probe_chunk=auto)
GPU_MEMORY_SHARE = 0.8    # share of the free GPU memory a pass may plan to use (probe_chunk=auto)


class NotBatchable(Exception):
    """Why batched probes cannot serve this model / directions / objective."""


# ---- the solver option ----------------------------------------------------------------------
class ProbeChoice:
    """`solver.batched_probes` and `solver.probe_chunk` of a seeded ZO solver (ZOSolver, MeZO
    and all their subclasses). Validated in the constructor, i.e. before the model loads;
    `choose_probes` builds the strategy once the parameters and the objective exist.

    `peft` is the peft group's `_target_` (the YAML key `peft_target: ${oc.select:peft._target_,null}`;
    None: every weight trains), which is all the early check needs: with dense directions
    (`directions_kind = "dense"`) and no adapters, `true` cannot apply."""

    directions_kind = "dense"  # "low_rank": SubZero-like directions, batched with any peft

    def init_probe_choice(self, batched_probes="auto", probe_chunk="auto", peft=None) -> None:
        from zoexp.solvers.base import check

        check("solver.batched_probes", batched_probes == "auto" or isinstance(batched_probes, bool),
              batched_probes, "auto, true or false")
        check("solver.probe_chunk", probe_chunk == "auto" or (
            isinstance(probe_chunk, int) and not isinstance(probe_chunk, bool) and probe_chunk >= 1),
            probe_chunk, "auto or an integer >= 1 (probes per batched forward)")
        if batched_probes is True and self.directions_kind == "dense" and peft is None:
            raise ConfigError("solver.batched_probes", "got true with peft=none (dense directions "
                              "over every weight would need a copy of the model per probe); "
                              "allowed: auto or false, or peft=lora|prefix|prompt, or solver=subzero")
        self.batched_probes, self.probe_chunk = batched_probes, probe_chunk

    def choose_probes(self, directions) -> ProbeStrategy:
        """Batched probes where asked for (true) or where they apply and help (auto), else
        the sequential ones (`zoexp.probes`)."""
        sequential = SequentialProbes(directions, self.objective)
        mode = getattr(self, "batched_probes", False)
        if mode is False or self.objective is None:  # replay builds solvers without an objective
            return sequential
        params = list(getattr(directions, "params", []))
        if mode == "auto" and not (params and params[0].is_cuda):
            return sequential  # a CPU forward is compute-bound already: see the module doc
        try:
            strategy = BatchedProbes(directions, self.objective, chunk=self.probe_chunk,
                                     fallback=sequential if mode == "auto" else None)
        except NotBatchable as why:
            if mode is True:
                raise ConfigError("solver.batched_probes", f"got true, but {why}; allowed: auto, false") from None
            log.info("batched probes do not apply (%s): probing sequentially", why)
            return sequential
        return strategy


# ---- per-probe values -------------------------------------------------------------------------
@dataclass
class GroupValues:
    """What the G row groups of one pass see: per-probe copies of the copied parameters
    (`values[i]`: [G, *shape]) and, for low-rank directions, (U, V, scale_g * S_g) per matrix."""

    groups: int
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    # matrix index -> (U, scale_g S_g, V): U [m, r] or one per group [G, m, r], S [G, r, r'],
    # V [n, r'] or [G, n, r'] (which are per group: the directions' `seeded_factors`)
    factors: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _low_rank(directions):
    """The low-rank directions object (`LowRankDirections`: `bases`, `factors`) behind
    `directions` (itself, or wrapped by `ExactDirections`), or None."""
    inner = getattr(directions, "directions", directions)
    return inner if hasattr(inner, "factors") and hasattr(inner, "bases") else None


class EngineValues:
    """rnd(theta + scale z(seed)) of the engine's directions for each probe, exactly as the
    engine's virtual perturbation materialises them (`PerturbationEngine._materialize`)."""

    def __init__(self, engine: PerturbationEngine, copied: list[int]) -> None:
        self.engine, self.copied = engine, copied
        self.fused = engine.kernels.__name__ == "kernels.sweep"  # the Triton backend

    def __call__(self, probes: Sequence[Probe]) -> GroupValues:
        engine, G = self.engine, len(probes)
        raws = engine.raw_tensors()
        out = GroupValues(G)
        perturbed = [g for g, p in enumerate(probes) if p.seed is not None]
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i in self.copied:
            by_dtype.setdefault(raws[i].dtype, []).append(i)
        for dtype, idx in by_dtype.items():
            sizes = [raws[i].numel() for i in idx]
            bases = [sum(sizes[:k]) for k in range(len(idx))]
            flat = torch.empty(G, sum(sizes), dtype=dtype, device=raws[idx[0]].device)
            views = [flat[:, b:b + n] for b, n in zip(bases, sizes)]
            for g, probe in enumerate(probes):
                if probe.seed is None:
                    for i, v in zip(idx, views):
                        v[g].copy_(raws[i].view(-1))
            if self.fused:
                from kernels.probe_values import probe_values

                probe_values([raws[i] for i in idx], [engine.offsets[i] for i in idx], bases, flat,
                             perturbed, [int(probes[g].seed) for g in perturbed],
                             [float(probes[g].scale) for g in perturbed], engine.dist)
            else:
                from kernels.sweep_op import SweepOp

                for g in perturbed:
                    op = SweepOp(seed1=int(probes[g].seed), perturb_scale=float(probes[g].scale))
                    engine.kernels.sweep([raws[i] for i in idx], [engine.offsets[i] for i in idx],
                                         op, engine.dist, out=[v[g] for v in views])
            for i, v in zip(idx, views):
                out.values[i] = v.view(G, *raws[i].shape)
        return out


class LowRankValues:
    """Low-rank directions (SubZero's U S V^T, LOZO's U V^T, ZO-Muon's P U) for each probe:
    the factors of Z = U S V^T for the matrices (`LowRankDirections.factors`), and
    rnd(theta + scale z) for the other parameters, as `ExactDirections` materialises them."""

    def __init__(self, directions, factored: list[int], copied: list[int]) -> None:
        self.low_rank, self.factored, self.copied = _low_rank(directions), factored, copied
        self.raws = [_alias(p) for p in directions.params]

    def __call__(self, probes: Sequence[Probe]) -> GroupValues:
        lr, G = self.low_rank, len(probes)
        _refresh(self.raws, lr.params)
        raws = self.raws
        out = GroupValues(G)
        seeded = lr.seeded_factors
        for i in self.factored:
            drawn = [lr.factors(p.seed, i) for p in probes if p.seed is not None]
            if not drawn:  # only theta: a zero perturbation through the same path
                drawn = [lr.factors(0, i)]
            rows = iter(drawn)
            per_probe = [next(rows) if p.seed is not None else None for p in probes]
            u, s, v = drawn[0]
            cores = torch.stack([torch.zeros_like(s) if f is None else f[1] * p.scale
                                 for f, p in zip(per_probe, probes)])
            stack = lambda k, shared: torch.stack([shared if f is None else f[k] for f in per_probe])
            out.factors[i] = (stack(0, u) if "u" in seeded else u, cores.to(u.device),
                              stack(2, v) if "v" in seeded else v)
        for i in self.copied:
            raw = raws[i]
            rows = [raw if p.seed is None else
                    (raw.float() + torch.tensor(p.scale, dtype=torch.float32) * lr.direction(p.seed, i)
                     ).to(raw.dtype) for p in probes]
            out.values[i] = torch.stack(rows)
        return out


# ---- grouped module forwards ----------------------------------------------------------------
def _split(x: torch.Tensor, groups: int) -> int:
    """Rows per group of a module input whose leading dimension holds the G row groups."""
    if x.dim() == 0 or x.shape[0] % groups:
        raise NotBatchable(f"a module input of shape {tuple(x.shape)} does not split into {groups} "
                           "row groups")
    return x.shape[0] // groups


class _GroupedLinear:
    """y_g = x_g W_g^T + b_g for row group g of an nn.Linear."""

    def __init__(self, module: nn.Linear, weight: int | None, bias: int | None, raws) -> None:
        self.module, self.weight, self.bias, self.raws = module, weight, bias, raws

    def __call__(self, state: GroupValues):
        m, G = self.module, state.groups
        weight = self.raws[self.weight] if self.weight is not None else m.weight
        wv = state.values.get(self.weight)
        bv = state.values.get(self.bias)
        bias = None if self.bias is not None else m.bias
        factors = state.factors.get(self.weight)

        def forward(x: torch.Tensor) -> torch.Tensor:
            _split(x, G)
            xs = x.reshape(G, -1, x.shape[-1])
            if wv is not None:
                y = torch.bmm(xs, wv.transpose(1, 2))
                if bias is not None:
                    y = y + bias
            else:
                y = F.linear(xs, weight, bias)
            if factors is not None:  # x Z^T = x V S^T U^T (U, V shared or one per group)
                u, s, v = (t.to(x.dtype) for t in factors)
                y = y + ((xs @ v) @ s.transpose(1, 2)) @ u.transpose(-1, -2)
            if bv is not None:
                y = y + bv[:, None, :]
            return y.reshape(*x.shape[:-1], y.shape[-1])

        return forward


class _GroupedEmbedding:
    """Row group g of an nn.Embedding looks up its own table (or E + scale_g U S_g V^T)."""

    def __init__(self, module: nn.Embedding, weight: int, raws) -> None:
        self.module, self.weight, self.raws = module, weight, raws

    def __call__(self, state: GroupValues):
        m, G = self.module, state.groups
        table = self.raws[self.weight]
        values, factors = state.values.get(self.weight), state.factors.get(self.weight)

        def forward(idx: torch.Tensor) -> torch.Tensor:
            rows = _split(idx, G)
            if values is not None:
                n_rows = values.shape[1]
                shift = torch.arange(G, device=idx.device).mul_(n_rows).repeat_interleave(rows)
                flat = values.reshape(G * n_rows, -1)
                return F.embedding(idx + shift.view(-1, *[1] * (idx.dim() - 1)), flat)
            out = F.embedding(idx, table, m.padding_idx)
            u, s, v = (t.to(out.dtype) for t in factors)
            if u.dim() == 3:  # one U per group: row group g looks up U_g
                group = torch.arange(G, device=idx.device).repeat_interleave(rows)
                picked = u[group.view(-1, *[1] * (idx.dim() - 1)), idx]
            else:
                picked = u[idx]
            low = (picked.reshape(G, -1, u.shape[-1]) @ s) @ v.transpose(-1, -2)
            return out + low.reshape(out.shape)

        return forward


def _lookup_all(state: GroupValues, index: int, table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[G, len(tokens), D]: every row group's embedding of the same `tokens`."""
    values, factors = state.values.get(index), state.factors.get(index)
    if values is not None:
        return values[:, tokens]
    base = F.embedding(tokens, table)
    u, s, v = (t.to(base.dtype) for t in factors)
    picked = u[:, tokens] if u.dim() == 3 else u[tokens].expand(state.groups, -1, -1)
    low = (picked @ s) @ v.transpose(-1, -2)
    return base.unsqueeze(0) + low


class _GroupedPromptTuning:
    """peft prompt tuning embeds the virtual tokens once and repeats them over the batch
    (`PeftModel.get_prompt`), so its embedding never sees the rows: here `get_prompt` itself
    returns each row its group's virtual tokens (the same values, exactly, as the embedding)."""

    def __init__(self, peft_model, weight: int, raws) -> None:
        self.peft_model, self.weight, self.raws = peft_model, weight, raws

    def __call__(self, state: GroupValues):
        G, model = state.groups, self.peft_model
        table = self.raws[self.weight]

        def get_prompt(batch_size: int, task_ids=None, **kwargs) -> torch.Tensor:
            if batch_size % G:
                raise NotBatchable(f"a batch of {batch_size} rows does not split into {G} row groups")
            tokens = model.prompt_tokens[model.active_adapter].to(table.device)
            return _lookup_all(state, self.weight, table, tokens).repeat_interleave(batch_size // G, 0)

        return get_prompt


class _ClassForward(nn.Module):
    """Calls `module`'s class forward (not the grouped one installed on the instance)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return type(self.module).forward(self.module, *args, **kwargs)


class _GroupedModule:
    """Any other module: vmap over the row groups of its first argument, each group's
    parameter values substituted (norm weights and biases)."""

    def __init__(self, module: nn.Module, names: dict[str, int]) -> None:
        self.plain, self.names = _ClassForward(module), names

    def __call__(self, state: GroupValues):
        G = state.groups
        keys = [f"module.{name}" for name in self.names]
        values = tuple(state.values[i] for i in self.names.values())

        def forward(x: torch.Tensor, *args, **kwargs):
            rows = _split(x, G)

            def one(vals, xg):
                return torch.func.functional_call(self.plain, dict(zip(keys, vals)), (xg, *args), kwargs)

            try:
                y = torch.func.vmap(one)(values, x.reshape(G, rows, *x.shape[1:]))
            except RuntimeError as err:  # an operation vmap has no batching rule for
                raise NotBatchable(f"vmap over {type(self.plain.module).__name__}: "
                                   f"{str(err).splitlines()[0]}") from None
            if not isinstance(y, torch.Tensor):
                raise NotBatchable(f"{type(self.plain.module).__name__} returns {type(y).__name__}")
            return y.reshape(x.shape[0], *y.shape[2:])

        return forward


class _ReadGuard:
    """Owner of the guarded parameters during a grouped forward: any read of one outside its
    grouped module means the model uses it somewhere the row groups are not arranged."""

    def __init__(self, params) -> None:
        self.params = params

    def _materialize(self, index: int):
        p = self.params[index]
        raise NotBatchable(f"trainable parameter #{index} ({tuple(p.shape)}) is read outside "
                           "the modules that own it")


# ---- the strategy -----------------------------------------------------------------------------
class BatchedProbes:
    """Probes as row groups of as few batched forwards as fit (module doc)."""

    name = "batched"

    def __init__(self, directions, objective, chunk="auto", fallback: ProbeStrategy | None = None
                 ) -> None:
        if not hasattr(objective, "group_losses") or not hasattr(objective, "scorer"):
            raise NotBatchable("the objective has no grouped forward")
        self.directions, self.objective, self.chunk, self.fallback = directions, objective, chunk, fallback
        self.model: nn.Module = objective.scorer.model
        self.params = list(directions.params)
        if not self.params:
            raise NotBatchable("there are no trainable parameters")
        self.device = self.params[0].device
        self.raws = [_alias(p) for p in self.params]
        self.overrides, factored, copied = self._plan(directions)
        model_numel = sum(p.numel() for p in self.model.parameters())
        copied_numel = sum(self.params[i].numel() for i in copied)
        if copied_numel > MAX_VALUE_SHARE * model_numel:
            raise NotBatchable(f"a copy per probe of {copied_numel:,} parameters "
                               f"({copied_numel / model_numel:.0%} of the model) does not pay")
        if isinstance(directions, PerturbationEngine):
            self.make_values = EngineValues(directions, copied)
        else:
            self.make_values = LowRankValues(directions, factored, copied)
        self.value_bytes = sum(self.params[i].numel() * self.params[i].element_size() for i in copied)
        self.pass_tokens: int | None = None  # learnt limit after an out-of-memory pass
        self.failed = False

    def _plan(self, directions):
        """Which module serves which parameter, and how: factored (low-rank) or copied."""
        index = {id(p): i for i, p in enumerate(self.params)}
        owners: dict[nn.Module, dict[str, int]] = {}
        for module in self.model.modules():
            for name, p in module._parameters.items():
                if p is not None and id(p) in index:
                    owners.setdefault(module, {})[name] = index[id(p)]
        found = {i for names in owners.values() for i in names.values()}
        if len(found) < len(self.params):
            missing = min(set(range(len(self.params))) - found)
            raise NotBatchable(f"trainable parameter #{missing} belongs to no module of the model")
        low_rank = _low_rank(directions)
        if not isinstance(directions, PerturbationEngine) and low_rank is None:
            raise NotBatchable(f"{type(directions).__name__} directions have no batched form")
        kinds = {m: _kind(m) for m in owners}
        factored = set()
        if low_rank is not None:
            for i, p in enumerate(self.params):
                users = [(m, name) for m, names in owners.items() for name, j in names.items() if j == i]
                if p.dim() == 2 and all(kinds[m] != "module" and name == "weight" for m, name in users):
                    factored.add(i)
        copied = sorted(set(range(len(self.params))) - factored)
        overrides = []  # (object, attribute, grouped factory)
        prompt = _prompt_tuning_embedding(self.model)
        for m, names in owners.items():
            if m is prompt:
                overrides.append((self.model, "get_prompt",
                                  _GroupedPromptTuning(self.model, names["weight"], self.raws)))
            elif kinds[m] == "linear":
                overrides.append((m, "forward", _GroupedLinear(m, names.get("weight"),
                                                               names.get("bias"), self.raws)))
            elif kinds[m] == "embedding":
                overrides.append((m, "forward", _GroupedEmbedding(m, names["weight"], self.raws)))
            else:
                overrides.append((m, "forward", _GroupedModule(m, names)))
        return overrides, sorted(factored), copied

    # ---- ProbeStrategy --------------------------------------------------------------------
    def losses(self, batch, probes: Sequence[Probe]) -> list[float]:
        if self.failed:
            return self.fallback.losses(batch, probes)
        try:
            return self._losses(batch, probes)
        except NotBatchable as why:
            if self.fallback is None:
                raise ConfigError("solver.batched_probes", f"got true, but {why}; allowed: auto, false") from None
            log.warning("batched probes: %s; probing sequentially from now on", why)
            self.failed = True
            return self.fallback.losses(batch, probes)

    def _losses(self, batch, probes: Sequence[Probe]) -> list[float]:
        out: list[float] = []
        start = 0
        while start < len(probes):
            size = min(self.pass_size(batch), len(probes) - start)
            chunk = probes[start:start + size]
            losses = self._pass(batch, chunk)
            if losses is None:  # out of memory: halve and remember
                if size == 1:
                    raise torch.cuda.OutOfMemoryError("one probe group does not fit in GPU memory")
                self.pass_tokens = max(1, (size // 2) * self.tokens_per_group(batch))
                continue
            out.extend(losses)
            start += size
        return out

    def _pass(self, batch, probes: Sequence[Probe]) -> list[float] | None:
        try:
            state = self.make_values(probes)
            with self.grouped(state):
                return self.objective.group_losses(batch, len(probes))
        except NotImplementedError as why:  # e.g. objective=f1: generation has no grouped form
            raise NotBatchable(f"objective={getattr(self.objective, 'name', '?')} cannot group its "
                               f"forwards ({why})") from None
        except torch.cuda.OutOfMemoryError:
            pass
        return None  # outside the except block, so the failed pass's tensors are freed

    # ---- chunking ----------------------------------------------------------------------------
    def group_shape(self, batch) -> tuple[int, int]:
        """(rows, padded length) of one copy of the batch (an upper bound when candidates are
        scored as sequences of their own)."""
        scorer = self.objective.scorer
        if scorer.single_token_words(batch) is not None:
            return len(batch), min(max(scorer.prompt_length(ex) for ex in batch), scorer.max_length)
        return sum(len(ex.candidates) for ex in batch), scorer.max_length

    def tokens_per_group(self, batch) -> int:
        rows, length = self.group_shape(batch)
        return rows * length

    def pass_size(self, batch) -> int:
        """Probes per batched forward: `probe_chunk`, or as many as fit (module doc), and never
        more tokens than a pass that ran out of memory had."""
        rows, length = self.group_shape(batch)
        tokens = rows * length
        if self.chunk != "auto":
            size = self.chunk
        elif self.device.type != "cuda":
            size = max(1, CPU_PASS_TOKENS // tokens)
        else:
            vocab = getattr(self.model.config, "vocab_size", 0) or 0
            per_group = (tokens * self.bytes_per_token(length) + rows * vocab * 12  # fp32 logits,
                         + 2 * self.value_bytes)                                      # log-softmax
            free, _ = torch.cuda.mem_get_info(self.device)
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            size = max(1, int(GPU_MEMORY_SHARE * free // per_group))
        if self.pass_tokens is not None:
            size = min(size, max(1, self.pass_tokens // tokens))
        return size

    def bytes_per_token(self, length: int) -> int:
        """Activation bytes a token holds at the peak of a forward, from the model config
        (hidden states, attention scores over `length` positions, MLP, the fp32 input of
        LoRA's matmuls), with a 2x margin."""
        cfg = self.model.config
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", 1024)
        inner = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * hidden
        heads = getattr(cfg, "num_attention_heads", 16)
        width = next(self.model.parameters()).element_size()
        return 2 * (width * (10 * hidden + 3 * inner + heads * length) + 4 * hidden)

    # ---- the grouped forward ------------------------------------------------------------------
    def grouped(self, state: GroupValues):
        return _GroupedForward(self, state)


class _GroupedForward:
    """For one forward: each owning module (peft prompt tuning: the model's `get_prompt`)
    gets its grouped version, and the perturbed parameters are guarded against reads
    elsewhere; both undone on exit."""

    def __init__(self, strategy: BatchedProbes, state: GroupValues) -> None:
        self.strategy, self.state = strategy, state
        self.saved: list[tuple[object, str, object]] = []
        self.classes: list[type] = []

    def __enter__(self):
        if getattr(self.strategy.directions, "active", None) is not None:
            raise RuntimeError("batched probes with a perturbation active; restore it first")
        for target, attr, grouped in self.strategy.overrides:
            self.saved.append((target, attr, target.__dict__.get(attr)))
            setattr(target, attr, grouped(self.state))
        self.classes = _swap_in(self.strategy.params, _ReadGuard(self.strategy.params))
        return self

    def __exit__(self, *exc) -> None:
        _swap_out(self.strategy.params, self.classes)
        for target, attr, previous in reversed(self.saved):
            if previous is None:
                delattr(target, attr)
            else:
                setattr(target, attr, previous)


def _prompt_tuning_embedding(model: nn.Module) -> nn.Module | None:
    """The embedding holding peft prompt tuning's virtual tokens, if `model` uses it."""
    config = getattr(model, "active_peft_config", None)
    if config is None or getattr(config, "peft_type", None) != "PROMPT_TUNING":  # a str enum
        return None
    if config.inference_mode:  # get_prompt then reads the weight itself: the guard would refuse
        return None
    encoder = model.prompt_encoder[model.active_adapter]
    return getattr(encoder, "embedding", None) if type(encoder).__name__ == "PromptEmbedding" else None


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return "linear"
    if (isinstance(module, nn.Embedding) and type(module).forward is nn.Embedding.forward
            and module.max_norm is None):
        return "embedding"
    return "module"


STRATEGIES["batched"] = BatchedProbes
