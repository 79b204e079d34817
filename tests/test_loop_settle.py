"""The loop never lets evaluation or a checkpoint see a perturbed model: a solver that ends
its steps with the next perturbation applied (MeZO in place) is settled first."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from tasks.base import Example
from zoexp.checkpoint import Checkpointer
from zoexp.loop import Loop
from zoexp.solvers.mezo import MeZO
from zoexp.tracking import Tracker


class QuadraticObjective:
    """loss = |theta - 1|^2; `predict` records whether the weights it sees are settled."""

    def __init__(self, param: torch.Tensor, solver: MeZO) -> None:
        self.param, self.solver, self.seen = param, solver, []
        self.scorer = SimpleNamespace(forward_passes=0, computed_tokens=0, real_tokens=0,
                                      prompt_length=lambda ex: len(ex.prompt))

    def loss(self, batch) -> float:
        self.scorer.forward_passes += 1
        return float(((self.param.detach() - 1) ** 2).sum())

    def predict(self, examples) -> list[int]:
        self.seen.append(("eval", self.solver.carried))
        return [0 for _ in examples]


def test_evaluation_and_checkpoints_see_settled_weights(tmp_path):
    param = torch.nn.Parameter(torch.zeros(64))
    solver = MeZO(steps=6, batch_size=2, eval_every=2, lr=0.002, eps=1e-2, exact=False)
    objective = QuadraticObjective(param, solver)
    solver.setup([param], objective)
    carried_after_steps = []
    step = solver.step

    def recording_step(batch, t):
        result = step(batch, t)
        carried_after_steps.append(solver.carried)
        return result
    solver.step = recording_step

    examples = [Example(prompt="x" * (i + 1), candidates=(" a", " b"), label=0) for i in range(8)]
    task = SimpleNamespace(metric="accuracy", score=lambda preds, exs: {"accuracy": 1.0})
    loop = Loop(solver, objective, task, {"train": examples, "dev": examples[:2], "test": examples[:2]},
                Tracker(tmp_path), Checkpointer(tmp_path, every=3), torch.device("cpu"),
                keep_best=False)
    save = loop._save
    loop._save = lambda: (objective.seen.append(("save", solver.carried)), save())[1]
    summary = loop.run()

    assert carried_after_steps[:5] == [solver.direction_seed(t + 1) for t in range(5)]
    assert carried_after_steps[5] is None                       # the last step carries nothing
    kinds = [kind for kind, _ in objective.seen]
    # dev at steps 0 and 2, the checkpoint at 3, dev at 4 and at the end, then test
    assert kinds == ["eval", "eval", "save", "eval", "eval", "eval"]
    assert all(carried is None for _, carried in objective.seen)
    assert summary["steps"] == 6 and summary["fwd_passes"] == 12
    assert float(((param.detach() - 1) ** 2).sum()) < 64        # it trained (loss was 64)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["params"][0]
    assert not torch.equal(saved, torch.zeros(64))
