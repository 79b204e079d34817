"""ZO-SGD-Sign (ZO-Bench: Zhang et al., ICML 2024, arXiv 2402.11592, "Revisiting Zeroth-Order
Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark"; the method is ZO-signSGD of
Liu et al., ICLR 2019): ZO-SGD that steps along the sign of the ZO gradient estimate.

The estimate is n-SPSA's, g_hat = 1/n sum_k g_k z_k with g_k = (f(theta + eps z_k) -
f(theta - eps z_k)) / (2 eps) (2 n forwards; 1 + n with `perturbation=one_side`), and

    sign_of: estimate        theta <- (1 - lr wd) theta - lr sign(g_hat)     (elementwise; the paper)
    sign_of: projected_grad  theta <- (1 - lr wd) theta - lr 1/n sum_k sign(g_k) z_k

The first is the benchmark's (and Liu et al.'s) definition: every coordinate moves by exactly
lr. The second is what the benchmark's released trainer computes (`zo_sign_opt`: the sign of
the scalar projected gradient times z), kept as a documented alternative because the two
differ: it keeps z's magnitudes and only normalises the step's scale.

`estimate` needs the estimate itself, so it rebuilds g_hat one parameter tensor at a time
(`dense_estimate`: one temporary the size of that tensor, like zo_adam; no state). Both
replay bit-exactly from (seeds, g_k, lr).
"""

from __future__ import annotations

import torch

from zoexp.solvers.base import check
from zoexp.solvers.spsa import SPSA
from zoexp.solvers.zo import dense_estimate

SIGN_OF = ("estimate", "projected_grad")


class ZOSign(SPSA):
    def __init__(self, sign_of: str = "estimate", **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.sign_of", sign_of in SIGN_OF, sign_of, str(list(SIGN_OF)))
        self.sign_of = sign_of
        if sign_of == "estimate":  # the sign of the dense estimate, written to the weights directly
            self.placements = ("device",)
            self.placement_note = "sign_of=estimate steps by the sign of the dense estimate"

    def make_record(self, step: int, seeds: list[int], grads: list[float]) -> dict:
        return {"seeds": seeds, "proj_grads": grads, "lr": self.lr_at(step)}

    @torch.no_grad()
    def replay(self, record: dict) -> None:
        seeds, lr = record["seeds"], record["lr"]
        n, decay = len(seeds), lr * self.weight_decay
        if self.sign_of == "projected_grad":
            self.apply(seeds, [-lr * ((g > 0) - (g < 0)) / n for g in record["proj_grads"]], decay)
            return
        weights = [g / n for g in record["proj_grads"]]
        for i, p in enumerate(self.params):
            step = torch.sign(dense_estimate(self.directions, seeds, weights, i))
            if decay:
                p.mul_(1.0 - decay)
            p.add_(step.to(p.dtype), alpha=-lr)
