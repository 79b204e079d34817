"""LOZO-M (Chen et al., ICLR 2025, arXiv 2410.07698): LOZO with momentum kept in low-rank form.

Within a window of `nu` steps V is fixed, so every LOZO estimate of a matrix is c U V^T and
their exponential average is N V^T with N m x r: the momentum costs an m x r factor per
matrix instead of an m x n buffer. Per step (c_k the directions' coefficients, U_k their left
factors, n directions):

    first step:            N <- (1/n) sum_k c_k U_k
    V changed (new window): N <- N (V_old^T V_new) / n_cols          (projection onto the new V)
    then:                  N <- beta N + (1 - beta) (1/n) sum_k c_k U_k
    W <- (1 - lr wd) W - lr N V^T

where n_cols is the number of columns of W (V^T V ~ n_cols I for Gaussian V, so the projection
keeps the momentum's component in the new row space). Parameters that are not matrices keep
an ordinary dense momentum m <- beta m + (1 - beta) (1/n) sum_k c_k z_k (m = the estimate on
the first step). This is the released trainer's rule (first step without the (1 - beta)
factor, no 1/r, see `lozo.py`); one deliberate difference: the projection is applied whenever
the window changes, also for nu = 1, where the released code skips momentum altogether.

Memory: N (m x r float32) per trainable matrix, plus a dense float32 buffer for each trainable
non-matrix tensor (none under the default LoRA). Replay rebuilds N by replaying the records in
order (the old window's V is regenerated from its seed), so a run replays bit-exactly.
"""

from __future__ import annotations

import torch

from zoexp.solvers.base import check, is_number
from zoexp.solvers.lozo import LOZO


class LOZOM(LOZO):
    placements = ("device",)  # the update writes the weights from its momentum factors directly
    placement_note = "its momentum is kept per tensor and applied to the weights directly"

    def __init__(self, momentum: float = 0.9, **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.momentum", is_number(momentum) and 0 <= momentum < 1, momentum, "a number in [0, 1)")
        self.momentum = float(momentum)
        self.window: int | None = None  # the window whose V the momentum factors refer to
        self.buffers: dict[int, torch.Tensor] = {}

    def make_record(self, step: int, seeds: list[int], grads: list[float]) -> dict:
        return {"subspace": self.subspace_index(step), "seeds": seeds, "proj_grads": grads,
                "lr": self.lr_at(step)}

    @torch.no_grad()
    def replay(self, record: dict) -> None:
        lazy, beta = self.low_rank, self.momentum
        window, seeds, lr = record["subspace"], record["seeds"], record["lr"]
        lazy.use_subspace(window)
        weights = [g / len(seeds) for g in record["proj_grads"]]
        for i, p in enumerate(self.params):
            matrix = i in lazy.bases
            factor = lazy.left_factor if matrix else lazy.direction
            fresh = sum(w * factor(seed, i) for seed, w in zip(seeds, weights))
            if self.window is None:
                buf = fresh
            else:
                buf = self.buffers[i]
                if matrix and window != self.window:
                    v_old, v_new = lazy.right_factor(self.window, i), lazy.bases[i]
                    buf = buf @ (v_old.T @ v_new) / v_new.shape[0]
                buf = beta * buf + (1 - beta) * fresh
            self.buffers[i] = buf
            if self.weight_decay:
                p.mul_(1.0 - lr * self.weight_decay)
            p.add_((buf @ lazy.bases[i].T if matrix else buf).to(p.dtype), alpha=-lr)
        self.window = window

    def state_dict(self) -> dict:
        return {"window": self.window, "buffers": {i: b.cpu() for i, b in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.window = state["window"]
        self.buffers = {i: b.to(self.params[i].device) for i, b in state["buffers"].items()}
