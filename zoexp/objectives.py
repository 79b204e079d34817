"""Objectives: a batch of Examples -> one scalar loss, computed without autograd.

All objectives share one scorer, `CandidateScorer`, which turns Examples into padded model
inputs and returns each candidate's log-likelihood given the prompt:

- single-token label words shared by the batch (SST-2's " terrible" / " great") take one
  sequence per example and read the candidate logits at the answer position;
- otherwise every (example, candidate) pair is one sequence and the candidate's score is the
  mean log-probability of its tokens (length-normalised, so long options are not penalised).

`classification` is cross-entropy over the candidates' scores (MeZO's loss), `lm` the
teacher-forced loss on the gold continuation, `accuracy` / `f1` non-differentiable metrics
(ZO optimises them directly). Objectives also predict, so evaluation uses the same path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from tasks.base import Example
from zoexp.errors import ConfigError
from zoexp.graphs import GraphedForward, forward_logits


@dataclass
class Encoded:
    """Left-padded token ids for a batch."""

    input_ids: torch.Tensor        # [n_seq, T]
    attention_mask: torch.Tensor   # [n_seq, T]
    real_tokens: int               # non-pad tokens, for the padding ratio


class CandidateScorer:
    """Scores the candidates of Examples with a causal LM (forward passes only).

    With `cuda_graphs`, its model call replays captured CUDA graphs (`zoexp.graphs`); batches
    go to the device through pinned memory without a host sync, so a step's probes queue up
    on the GPU and only reading their losses waits."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, max_length: int = 512,
                 cuda_graphs: bool = False) -> None:
        self.model, self.tokenizer, self.device, self.max_length = model, tokenizer, device, max_length
        self.graphed = GraphedForward(model, tokenizer.pad_token_id) if cuda_graphs else None
        self.forward_passes = 0    # batched forward calls, for the fwd_passes metric
        self.computed_tokens = 0   # padded tokens pushed through the model
        self.real_tokens = 0
        self._cache: dict[str, list[int]] = {}
        self._last_padded: tuple[tuple, Encoded] | None = None
        self._word_indices: dict[tuple, torch.Tensor] = {}

    # ---- tokenisation --------------------------------------------------------------------
    def _ids(self, text: str, prefix: bool) -> list[int]:
        key = ("P" if prefix else "C") + text
        if key not in self._cache:
            self._cache[key] = self.tokenizer(text, add_special_tokens=prefix)["input_ids"]
        return self._cache[key]

    def prompt_length(self, example: Example) -> int:
        """Tokens of an example's prompt: the key for length-grouped batching."""
        return len(self._ids(example.prompt, True))

    def _pad(self, seqs: list[list[int]]) -> Encoded:
        """Left-pad, so every sequence ends at the last position: the logits needed (answer
        position, candidate span) sit in the last few columns and the LM head runs only there.
        The last batch is kept: a step's probes pad the same sequences again."""
        key = tuple(map(tuple, seqs))
        if self._last_padded is not None and self._last_padded[0] == key:
            return self._last_padded[1]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        enc = Encoded(self.to_device(ids), self.to_device(mask), sum(len(s) for s in seqs))
        self._last_padded = (key, enc)
        return enc

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the scorer's device; on CUDA through pinned memory, asynchronously
        (a plain copy would wait for every queued kernel)."""
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _truncate(self, prompt: list[int], cont: list[int]) -> list[int]:
        keep = self.max_length - len(cont)
        return (prompt[-keep:] if keep > 0 else prompt[-1:]) + cont  # cut the prompt's start

    def _logits(self, enc: Encoded, keep: int, groups: int = 1) -> torch.Tensor:
        """Logits of the last `keep` positions (float32). `groups` > 1 pushes that many copies
        of the batch through one forward (rows group-major: copy g is rows [g n, (g + 1) n)),
        for probe strategies whose row groups see different perturbations; it counts as
        `groups` forward passes, the number of probes it answers."""
        self.forward_passes += groups
        self.computed_tokens += enc.input_ids.numel() * groups
        self.real_tokens += enc.real_tokens * groups
        ids, mask = enc.input_ids, enc.attention_mask
        if groups > 1:
            ids, mask = ids.repeat(groups, 1), mask.repeat(groups, 1)
        if self.graphed is not None and groups == 1:
            # Grouped forwards stay eager: the strategy that makes their row groups differ
            # would have to register its state (zoexp.perturb.activated) for a replay to see it.
            return self.graphed(ids, mask, keep)
        return forward_logits(self.model, ids, mask, keep)

    def _word_index(self, words: list[int]) -> torch.Tensor:
        """The label words' ids as a device tensor, kept (indexing with a Python list would
        copy it to the device, and wait for the GPU, at every call)."""
        key = tuple(words)
        if key not in self._word_indices:
            self._word_indices[key] = self.to_device(torch.tensor(words))
        return self._word_indices[key]

    def single_token_words(self, examples: Sequence[Example]) -> list[int] | None:
        """The shared one-token label words of the batch, or None if the fast path does not apply."""
        cands = examples[0].candidates
        if any(ex.candidates != cands for ex in examples):
            return None
        ids = [self._ids(c, prefix=False) for c in cands]
        return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None

    # ---- scoring (differentiable when grad is enabled: the first-order baselines use it) ---
    def score(self, examples: Sequence[Example], groups: int = 1) -> torch.Tensor:
        """[groups * n_examples, n_candidates] log-likelihood of each candidate (padded with
        -inf); `groups` copies of the batch in one forward (see `_logits`)."""
        words = self.single_token_words(examples)
        if words is not None:
            seqs = [self._truncate(self._ids(ex.prompt, True), []) for ex in examples]
            logp = self._logits(self._pad(seqs), keep=1, groups=groups)[:, -1].log_softmax(-1)
            return logp.index_select(-1, self._word_index(words))
        return self._score_pairs(examples, [list(range(len(ex.candidates))) for ex in examples],
                                 groups)

    def _score_pairs(self, examples: Sequence[Example], which: list[list[int]],
                     groups: int = 1) -> torch.Tensor:
        """Mean token log-prob of chosen candidates, one sequence per (example, candidate)."""
        seqs, span_lengths, owners = [], [], []
        for e, (ex, cand_idx) in enumerate(zip(examples, which)):
            prompt = self._ids(ex.prompt, True)
            for c in cand_idx:
                cont = self._ids(ex.candidates[c], False)
                seqs.append(self._truncate(prompt, cont))
                span_lengths.append(len(cont))
                owners.append((e, c))
        enc = self._pad(seqs)
        keep = max(span_lengths) + 1  # a span of n tokens is predicted by the n positions before its end
        logp = self._logits(enc, keep=keep, groups=groups).log_softmax(-1)
        width = max(len(ex.candidates) for ex in examples)
        out = torch.full((groups * len(examples), width), float("-inf"), device=logp.device)
        for g in range(groups):
            for row, (n, (e, c)) in enumerate(zip(span_lengths, owners)):
                targets = enc.input_ids[row, -n:]
                token_logp = logp[g * len(seqs) + row, keep - n - 1 : keep - 1].gather(
                    -1, targets[:, None]).squeeze(-1)
                out[g * len(examples) + e, c] = token_logp.mean()
        return out

    def gold_logprob(self, examples: Sequence[Example], groups: int = 1) -> torch.Tensor:
        """Mean log-prob of the gold continuation only (the teacher-forced LM objective),
        [groups * n_examples]."""
        for ex in examples:
            if ex.label is None:
                raise ValueError("the lm objective needs a gold candidate (Example.label)")
        scores = self._score_pairs(examples, [[ex.label] for ex in examples], groups)
        labels = self.to_device(torch.tensor([[ex.label] for ex in examples] * groups))
        return scores.gather(1, labels).squeeze(1)

    @torch.no_grad()
    def generate(self, examples: Sequence[Example], max_new_tokens: int = 32, stop: str = "\n") -> list[str]:
        """Greedy continuations of the prompts, cut at `stop` (generation tasks)."""
        room = max(self.max_length - max_new_tokens, 1)
        seqs = [self._ids(ex.prompt, True)[-room:] for ex in examples]
        enc = self._pad(seqs)
        self.forward_passes += 1
        out = self.model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                  max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        return [t.split(stop, 1)[0] if stop else t for t in texts]


class Objective:
    """Base: `loss(examples)` -> float without autograd (what ZO solvers call);
    `loss_tensor(examples)` -> differentiable tensor (first-order baselines);
    `predict(examples)` -> candidate indices, or generated strings for generation tasks."""

    name = "base"
    differentiable = True
    kinds = ("classification", "multiple_choice", "generation")  # task kinds it applies to

    def __init__(self, scorer: CandidateScorer, task) -> None:
        self.scorer = scorer
        self.task = task

    def example_losses(self, examples: Sequence[Example], groups: int = 1) -> torch.Tensor:
        """Per-example losses of `groups` copies of the batch pushed through one forward
        ([groups * n], group-major); differentiable when grad is enabled."""
        raise NotImplementedError

    def loss_tensor(self, examples: Sequence[Example]) -> torch.Tensor:
        return self.example_losses(examples).mean()

    def loss(self, examples: Sequence[Example]) -> float:
        return self.group_losses(examples, 1)[0]

    @torch.no_grad()
    def group_losses(self, examples: Sequence[Example], groups: int) -> list[float]:
        """The batch's loss for each of `groups` row groups of one forward. Whatever makes
        the groups differ (a probe strategy's per-group perturbation) is arranged by the
        caller; `loss` is the one-group case, so both reduce in the same order."""
        return self.group_loss_tensor(examples, groups).tolist()

    @torch.no_grad()
    def group_loss_tensor(self, examples: Sequence[Example], groups: int) -> torch.Tensor:
        """`group_losses` as a tensor not yet read back: a caller can queue more work (the
        next probe) before it waits for the values. Each group's mean is taken on a fresh
        copy of that group alone -- the same reduction, on the same shape and alignment, as
        the one-group case -- so layer-major probes (zoexp.layer_major) give the sequential
        losses bit for bit."""
        losses = self.example_losses(examples, groups)
        n = losses.numel() // groups
        return torch.stack([losses[g * n:(g + 1) * n].clone().mean() for g in range(groups)])

    @torch.no_grad()
    def predict(self, examples: Sequence[Example], groups: int = 1) -> list:
        """Candidate indices (or generated strings for generation tasks) per example,
        [groups * n] group-major."""
        if self.task.kind == "generation":
            if groups != 1:
                raise NotImplementedError("grouped forwards do not generate")
            return self.scorer.generate(examples, self.task.max_new_tokens, self.task.stop)
        return self.scorer.score(examples, groups).argmax(-1).tolist()


class ClassificationLoss(Objective):
    """Cross-entropy over the candidates' log-likelihoods (MeZO's classification loss)."""

    name = "classification"
    kinds = ("classification", "multiple_choice")

    def example_losses(self, examples, groups=1):
        scores = self.scorer.score(examples, groups)
        labels = self.scorer.to_device(torch.tensor([ex.label for ex in examples] * groups))
        return F.cross_entropy(scores, labels, reduction="none")


class LMLoss(Objective):
    """Teacher-forced negative log-likelihood of the gold continuation."""

    name = "lm"

    def example_losses(self, examples, groups=1):
        return -self.scorer.gold_logprob(examples, groups)


class NegativeMetric(Objective):
    """Minus the task's own metric on the batch (accuracy, F1): non-differentiable, and ZO
    does not care -- it optimises what is reported (MeZO, section on non-differentiable objectives)."""

    differentiable = False

    def group_losses(self, examples, groups):
        preds, n = self.predict(examples, groups), len(examples)
        return [-self.task.score(preds[g * n:(g + 1) * n], examples)[self.name] for g in range(groups)]

    def group_loss_tensor(self, examples, groups):
        return torch.tensor(self.group_losses(examples, groups), dtype=torch.float64)

    def loss_tensor(self, examples):
        return torch.tensor(self.group_losses(examples, 1)[0])


class NegativeAccuracy(NegativeMetric):
    name = "accuracy"
    kinds = ("classification", "multiple_choice")


class NegativeF1(NegativeMetric):
    name = "f1"
    kinds = ("generation",)


OBJECTIVES = {cls.name: cls for cls in (ClassificationLoss, LMLoss, NegativeAccuracy, NegativeF1)}
DEFAULT_FOR_KIND = {"classification": "classification", "multiple_choice": "classification", "generation": "lm"}


def resolve_objective_name(name: str, task_kind: str) -> str:
    """`auto` -> the task kind's usual loss; otherwise check the objective fits the task."""
    allowed = ["auto", *OBJECTIVES]
    if name == "auto":
        return DEFAULT_FOR_KIND[task_kind]
    if name not in OBJECTIVES:
        raise ConfigError("objective", f"got {name!r}; allowed: {allowed}")
    if task_kind not in OBJECTIVES[name].kinds:
        fits = [n for n, c in OBJECTIVES.items() if task_kind in c.kinds]
        raise ConfigError("objective", f"{name!r} does not apply to a {task_kind} task; allowed: {['auto', *fits]}")
    return name


def build_objective(name: str, scorer: CandidateScorer, task) -> Objective:
    return OBJECTIVES[resolve_objective_name(name, task.kind)](scorer, task)
