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




@dataclass
class Encoded:
    """Left-padded token ids for a batch."""

    input_ids: torch.Tensor        # [n_seq, T]
    attention_mask: torch.Tensor   # [n_seq, T]
    real_tokens: int               # non-pad tokens, for the padding ratio


class CandidateScorer:
    """Scores the candidates of Examples with a causal LM (forward passes only)."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, max_length: int = 512) -> None:
        self.model, self.tokenizer, self.device, self.max_length = model, tokenizer, device, max_length
        self.forward_passes = 0    # batched forward calls, for the fwd_passes metric
        self.computed_tokens = 0   # padded tokens pushed through the model
        self.real_tokens = 0
        self._cache: dict[str, list[int]] = {}

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
        position, candidate span) sit in the last few columns and the LM head runs only there."""
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        return Encoded(ids.to(self.device), mask.to(self.device), sum(len(s) for s in seqs))

    def _truncate(self, prompt: list[int], cont: list[int]) -> list[int]:
        keep = self.max_length - len(cont)
        return (prompt[-keep:] if keep > 0 else prompt[-1:]) + cont  # cut the prompt's start

    def _logits(self, enc: Encoded, keep: int) -> torch.Tensor:
        """Logits of the last `keep` positions (float32)."""
        self.forward_passes += 1
        self.computed_tokens += enc.input_ids.numel()
        self.real_tokens += enc.real_tokens
        positions = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                         position_ids=positions, logits_to_keep=keep)
        return out.logits[:, -keep:].float()

    def single_token_words(self, examples: Sequence[Example]) -> list[int] | None:
        """The shared one-token label words of the batch, or None if the fast path does not apply."""
        cands = examples[0].candidates
        if any(ex.candidates != cands for ex in examples):
            return None
        ids = [self._ids(c, prefix=False) for c in cands]
        return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None

    # ---- scoring (differentiable when grad is enabled: the first-order baselines use it) ---
    def score(self, examples: Sequence[Example]) -> torch.Tensor:
        """[n_examples, n_candidates] log-likelihood of each candidate (padded with -inf)."""
        words = self.single_token_words(examples)
        if words is not None:
            seqs = [self._truncate(self._ids(ex.prompt, True), []) for ex in examples]
            logp = self._logits(self._pad(seqs), keep=1)[:, -1].log_softmax(-1)
            return logp[:, words]
        return self._score_pairs(examples, [list(range(len(ex.candidates))) for ex in examples])

    def _score_pairs(self, examples: Sequence[Example], which: list[list[int]]) -> torch.Tensor:
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
        logp = self._logits(enc, keep=keep).log_softmax(-1)
        width = max(len(ex.candidates) for ex in examples)
        out = torch.full((len(examples), width), float("-inf"), device=logp.device)
        for row, (n, (e, c)) in enumerate(zip(span_lengths, owners)):
            targets = enc.input_ids[row, -n:]
            token_logp = logp[row, keep - n - 1 : keep - 1].gather(-1, targets[:, None]).squeeze(-1)
            out[e, c] = token_logp.mean()
        return out

    def gold_logprob(self, examples: Sequence[Example]) -> torch.Tensor:
        """Mean log-prob of the gold continuation only (the teacher-forced LM objective)."""
        for ex in examples:
            if ex.label is None:
                raise ValueError("the lm objective needs a gold candidate (Example.label)")
        scores = self._score_pairs(examples, [[ex.label] for ex in examples])
        return scores.gather(1, torch.tensor([[ex.label] for ex in examples], device=scores.device)).squeeze(1)

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

    def loss_tensor(self, examples: Sequence[Example]) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, examples: Sequence[Example]) -> float:
        with torch.no_grad():
            return self.loss_tensor(examples).item()

    @torch.no_grad()
    def predict(self, examples: Sequence[Example]) -> list:
        if self.task.kind == "generation":
            return self.scorer.generate(examples)
        return self.scorer.score(examples).argmax(-1).tolist()


class ClassificationLoss(Objective):
    """Cross-entropy over the candidates' log-likelihoods (MeZO's classification loss)."""

    name = "classification"
    kinds = ("classification", "multiple_choice")

    def loss_tensor(self, examples):
        scores = self.scorer.score(examples)
        labels = torch.tensor([ex.label for ex in examples], device=scores.device)
        return F.cross_entropy(scores, labels)


class LMLoss(Objective):
    """Teacher-forced negative log-likelihood of the gold continuation."""

    name = "lm"

    def loss_tensor(self, examples):
        return -self.scorer.gold_logprob(examples).mean()


class NegativeMetric(Objective):
    """Minus the task's own metric on the batch (accuracy, F1): non-differentiable, and ZO
    does not care -- it optimises what is reported (MeZO, section on non-differentiable objectives)."""

    differentiable = False

    def loss_tensor(self, examples):
        return torch.tensor(-self.task.score(self.predict(examples), examples)[self.name])


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
