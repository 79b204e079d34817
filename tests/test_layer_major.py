"""Layer-major probes (zoexp.layer_major): one grouped forward in which every unit runs each
probe's rows under that probe's perturbation gives the sequential strategy's losses and
updates bit for bit -- the property offload and sharding build on."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import bundle_of, objective_for, task_batch, tiny_model
from zoexp.layer_major import LayerMajorProbes, _concat, _group, find_units
from zoexp.probes import Probe
from zoexp.solvers.spsa15 import SPSA15

STEPS = 2


def run(kind: str, task: str, exact: bool, layer_major: bool):
    bundle = bundle_of(tiny_model(kind))
    data, batch = task_batch(task)
    objective = objective_for(bundle, data)
    solver = SPSA15(steps=STEPS, batch_size=4, n_perts=2, eps=1e-2, lr=1e-2, exact=exact,
                    dist="rademacher")
    solver.setup(bundle.params, objective)
    if layer_major:
        solver.probes = LayerMajorProbes(solver.directions, objective)
    results = [solver.step(batch, t) for t in range(STEPS)]
    return ([(r.loss, r.record) for r in results], [p.detach().clone() for p in bundle.params],
            objective.scorer.forward_passes)


@pytest.mark.parametrize("kind,task,exact", [
    ("opt", "copa", True),     # tied head, learned positions, one sequence per candidate
    ("llama", "rte", True),    # rotary positions, shared one-token label words
    ("llama", "rte", False),   # in place: the same sweeps per element (untied weights)
])
def test_layer_major_equals_sequential_bit_for_bit(kind, task, exact):
    seq_records, seq_params, seq_passes = run(kind, task, exact, layer_major=False)
    lm_records, lm_params, lm_passes = run(kind, task, exact, layer_major=True)
    assert lm_records == seq_records   # every loss, seed and coefficient
    assert all(torch.equal(a, b) for a, b in zip(lm_params, seq_params))
    assert lm_passes == seq_passes == STEPS * 5   # 2 n + 1 probes a step, counted per group
    start = bundle_of(tiny_model(kind)).params
    assert not all(torch.equal(a, b) for a, b in zip(lm_params, start))  # it trained


def test_probe_groups_see_their_own_perturbation():
    """Group 1 of a grouped forward under [theta, +eps z, theta] has the loss of the model
    perturbed by +eps z (computed by hand); groups 0 and 2 the unperturbed loss."""
    bundle = bundle_of(tiny_model("llama"))
    data, batch = task_batch("rte")
    objective = objective_for(bundle, data)
    solver = SPSA15(steps=1, batch_size=4, n_perts=1, eps=5e-2, dist="rademacher")
    solver.setup(bundle.params, objective)
    base = objective.loss(batch)
    with torch.no_grad():
        saved = [p.detach().clone() for p in bundle.params]
        for i, p in enumerate(bundle.params):
            p.copy_((p.float() + 5e-2 * solver.directions.direction(7, i)).to(p.dtype))
        perturbed = objective.loss(batch)
        for p, s in zip(bundle.params, saved):
            p.copy_(s)
    losses = LayerMajorProbes(solver.directions, objective).losses(batch, [Probe(), Probe(7, 5e-2), Probe()])
    assert losses == [base, perturbed, base] and perturbed != base
    assert all(torch.equal(p, s) for p, s in zip(bundle.params, saved))  # theta restored


def test_units_are_the_blocks_and_the_other_parameter_owners():
    bundle = bundle_of(tiny_model("opt"))
    units = find_units(bundle.model, bundle.trainable)
    by_name = {u.name.removeprefix("model.decoder."): u for u in units}
    assert set(by_name) == {"embed_tokens", "embed_positions", "final_layer_norm", "lm_head",
                            "layers.0", "layers.1", "layers.2"}
    assert [u.name for u in units if u.block] == [f"model.decoder.layers.{i}" for i in range(3)]
    covered = sorted(i for u in units for i in u.indices if u.name != "lm_head")
    assert covered == list(range(len(bundle.params)))  # every trainable tensor, once
    # the tied head perturbs the embedding matrix too
    assert by_name["lm_head"].indices == by_name["embed_tokens"].indices


def test_arguments_split_only_where_they_hold_rows():
    n, rows, t = 6, 2, 6   # a [T] tensor as long as the row count must not be split
    hidden = torch.arange(n * t * 4.0).view(n, t, 4)
    cache_position = torch.arange(t)
    broadcast_mask = torch.zeros(1, 1, t, t)
    args = (hidden, {"position_embeddings": (hidden, hidden), "cache_position": cache_position,
                     "mask": broadcast_mask, "flag": True})
    part = _group(args, 1, rows, n)
    assert torch.equal(part[0], hidden[2:4])
    assert all(torch.equal(x, hidden[2:4]) for x in part[1]["position_embeddings"])
    assert part[1]["cache_position"] is cache_position and part[1]["mask"] is broadcast_mask
    assert part[1]["flag"] is True
    merged = _concat([(hidden[k * rows:(k + 1) * rows], None) for k in range(3)], rows)
    assert torch.equal(merged[0], hidden) and merged[1] is None
