"""hardware.offload (zoexp.offload): decoder blocks stream from host memory, updates are
deferred to a block's next upload, and the run is the in-memory run bit for bit.

On the CPU the host/device split is simulated (`hardware.offload=simulated`): the blocks'
'GPU' slots are separate tensors filled by explicit copies, so the same code runs as on a GPU
minus the streams (a `gpu`-marked test runs the real thing).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.conftest import assert_fails_early, run_main
from tests.tiny_models import bundle_of, objective_for, save_tiny, task_batch, tiny_model
from zoexp.distributed import Ranks
from zoexp.errors import ConfigError
from zoexp.offload import HostOffload
from zoexp.placement import Placement, build_placement
from zoexp.solvers.fo_sgd import FOSGD
from zoexp.solvers.hizoo import HiZOO
from zoexp.solvers.lozo import LOZO
from zoexp.solvers.lozo_m import LOZOM
from zoexp.solvers.mezo import MeZO
from zoexp.solvers.sparse_mezo import SparseMeZO
from zoexp.solvers.spsa15 import SPSA15
from zoexp.solvers.subzero import SubZero
from zoexp.solvers.zeroshot import ZeroShot
from zoexp.solvers.zo_adam import ZOAdam
from zoexp.solvers.zo_cons import ZOCons
from zoexp.solvers.zo_sgd_momentum import ZOSGDMomentum
from zoexp.solvers.zo_sign import ZOSign

STEPS = 4
CPU = torch.device("cpu")


def train(cls, kw: dict, placement: Placement, kind: str = "opt", device=CPU):
    """STEPS steps; returns (records, weights after settle, block weights before settle,
    forward passes, the placement's byte counters after each step)."""
    bundle = bundle_of(tiny_model(kind))
    solver = cls(steps=STEPS, batch_size=4, eps=1e-2, lr=1e-2, **kw)
    placement.check(solver)
    placement.place(bundle)
    data, batch = task_batch("rte")
    objective = objective_for(bundle, data)
    solver.place(placement)
    solver.setup(bundle.params, objective)
    records, traffic = [], []
    for t in range(STEPS):
        records.append(solver.step(batch, t).record)
        store = getattr(placement, "store", None)
        traffic.append((store.bytes_up, store.bytes_down) if store else None)
    unsettled = [p.detach().to("cpu", copy=True) for p in bundle.params]
    solver.settle()
    return (records, [p.detach().to("cpu", copy=True) for p in bundle.params], unsettled,
            objective.scorer.forward_passes, traffic)


R = {"dist": "rademacher"}  # tests/tiny_models.py: why


@pytest.mark.parametrize("cls,kw", [(MeZO, R), (SPSA15, {"n_perts": 2, **R}),
                                    (SubZero, {"n_perts": 2, "rank": 2, "update_interval": 2}),
                                    (LOZO, {"n_perts": 2, "rank": 2, "update_interval": 2})],
                         ids=["mezo", "spsa15", "subzero", "lozo"])
def test_offloaded_run_equals_in_memory_run(cls, kw):
    memory = train(cls, kw, Placement(CPU))
    offload = HostOffload(CPU, Ranks(), simulated=True)
    streamed = train(cls, kw, offload)
    assert streamed[0] == memory[0]                                   # the trajectory
    assert all(torch.equal(a, b) for a, b in zip(streamed[1], memory[1]))  # the final weights
    assert streamed[3] == memory[3]                                   # forward passes
    # Before settle the last update waits in the log for the blocks' next upload.
    blocks = {i for unit in offload.units.blocks for i in unit.indices}
    for i, (before, after) in enumerate(zip(streamed[2], streamed[1])):
        assert torch.equal(before, after) == (i not in blocks), i
    # A block crosses each way once a step: uploaded (the last blocks prefetch the first of
    # the next forward), written back after its deferred update. Steps 2 -> 3: no subspace
    # switch of SubZero's in between (which settles: one more pass).
    store = offload.store
    trainable = sum(b.write_bytes for b in store.order)
    (up2, down2), (up3, down3) = streamed[4][2], streamed[4][3]
    assert up3 - up2 == store.host_bytes and down3 - down2 == trainable
    assert streamed[4][0][1] == 0   # step 0 had nothing to write back


def test_in_place_offload_equals_in_memory_run():
    """In place the deferred update is fused with the block's first perturbation (one
    sweep, kernels round after each stage): the same weights as MeZO's carried sweeps."""
    memory = train(MeZO, {"exact": False, **R}, Placement(CPU), kind="llama")
    streamed = train(MeZO, {"exact": False, **R}, HostOffload(CPU, Ranks(), simulated=True),
                     kind="llama")
    assert streamed[0] == memory[0]
    assert all(torch.equal(a, b) for a, b in zip(streamed[1], memory[1]))


def test_lora_offload_equals_in_memory_and_writes_back_the_adapters_only():
    import peft

    def lora(kind):
        model = tiny_model(kind)
        torch.manual_seed(1)
        model = peft.get_peft_model(model, peft.LoraConfig(
            task_type="CAUSAL_LM", r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():  # B = 0 at init would hide half the adapter
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 1e-2)
        return model

    results = []
    for placement in (Placement(CPU), HostOffload(CPU, Ranks(), simulated=True)):
        model = lora("opt")
        bundle = bundle_of(model)
        bundle.trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        solver = SPSA15(steps=3, batch_size=4, n_perts=2, eps=1e-2, lr=1e-1, **R)
        placement.check(solver, peft.LoraConfig())
        placement.place(bundle)
        data, batch = task_batch("rte")
        solver.place(placement)
        solver.setup(bundle.params, objective_for(bundle, data))
        records = [solver.step(batch, t).record for t in range(3)]
        solver.settle()
        results.append((records, [p.detach().clone() for p in bundle.params]))
    assert results[1][0] == results[0][0]
    assert all(torch.equal(a, b) for a, b in zip(results[1][1], results[0][1]))
    store = placement.store
    # only the trainable prefix of each block goes back: 3 updates (2 steps + settle)
    assert sum(b.write_bytes for b in store.order) < store.host_bytes / 4
    assert store.bytes_down == 3 * sum(b.write_bytes for b in store.order)


def test_writes_to_host_weights_reach_the_next_forward():
    """The loop writes the stored weights directly (resume, best-on-dev weights) while the
    first blocks of the next forward are already prefetched: they are uploaded again."""
    memory, streamed = bundle_of(tiny_model("opt")), bundle_of(tiny_model("opt"))
    HostOffload(CPU, Ranks(), simulated=True).place(streamed)
    data, batch = task_batch("rte")
    losses = []
    for bundle in (memory, streamed):
        objective = objective_for(bundle, data)
        first = objective.loss(batch)   # leaves blocks 0 and 1 prefetched when offloaded
        with torch.no_grad():
            bundle.model.model.decoder.layers[0].fc1.weight.mul_(-1.5)
        losses.append((first, objective.loss(batch)))
    assert losses[0] == losses[1] and losses[0][0] != losses[0][1]


def test_refusals_before_the_model_loads():
    offload = HostOffload(CPU, Ranks(), simulated=True)
    for solver, text in ((FOSGD(steps=1), "FOSGD"), (ZOAdam(steps=1), "moments m and v are dense"),
                         (ZOSGDMomentum(steps=1), "momentum buffer is dense"),
                         (HiZOO(steps=1), "Hessian estimate is dense"),
                         (LOZOM(steps=1), "momentum is kept per tensor"),
                         (SparseMeZO(steps=1), "masks each tensor"),
                         (ZOSign(steps=1), "sign of the dense estimate")):
        with pytest.raises(ConfigError) as err:
            offload.check(solver)
        assert err.value.field == "hardware.offload" and text in str(err.value)
        assert "\n" not in str(err.value)
    for solver in (ZeroShot(), ZOSign(steps=1, sign_of="projected_grad"), ZOCons(steps=1),
                   LOZO(steps=1)):
        offload.check(solver)  # evaluation streams the blocks; seeded updates defer
    with pytest.raises(ConfigError) as err:
        offload.check(SPSA15(steps=1, batched_probes=True, peft_target="peft.LoraConfig"))
    assert err.value.field == "solver.batched_probes"
    assert offload.cuda_graphs("auto", True) is False  # blocks move: no captured graphs
    with pytest.raises(ConfigError) as err:
        offload.cuda_graphs(True, True)
    assert err.value.field == "hardware.cuda_graphs"
    with pytest.raises(ConfigError, match="hardware.device=cpu"):
        HostOffload(CPU, Ranks()).check(MeZO(steps=1))
    with pytest.raises(ConfigError, match="processes"):
        HostOffload(CPU, Ranks(0, 2), simulated=True).check(MeZO(steps=1))
    from peft import PromptTuningConfig
    with pytest.raises(ConfigError, match="PromptTuningConfig"):
        offload.check(MeZO(steps=1), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    for hardware, field in (({"offload": "gpu"}, "hardware.offload"), ({"shard": "zero3"}, "hardware.shard"),
                            ({"offload": "cpu", "shard": "fsdp"}, "hardware.shard")):
        with pytest.raises(ConfigError) as err:
            build_placement(hardware, CPU, Ranks())
        assert err.value.field == field


@pytest.mark.parametrize("overrides,expected,allowed", [
    (["hardware=cpu", "hardware.offload=cpu"], "hardware.offload: got 'cpu' with hardware.device=cpu",
     "allowed: none"),
    (["hardware=cpu", "hardware.offload=simulated", "solver=zo_adam"], "hardware.offload: got 'simulated'",
     "allowed: none"),
], ids=["cpu-device", "zo_adam"])
def test_cli_refuses_in_one_line(tmp_path, overrides, expected, allowed):
    assert_fails_early(tmp_path, overrides, expected, allowed)


@pytest.mark.slow
def test_cli_offloaded_run_matches_and_resumes_from_a_checkpoint(tmp_path, sst2_dir):
    """`main.py ... hardware.offload=simulated` against the same run in memory: the same
    trajectory, metrics and mid-run checkpoint (the deferred update is flushed before it);
    restarted from that checkpoint it ends the same again."""
    model = save_tiny(tmp_path / "tiny-opt")
    common = ["hardware=cpu", "hardware.dtype=bf16", "peft=none", "model=hf", f"model.name={model}",
              "model.max_length=128", "solver=spsa15", "solver.n_perts=2", "solver.steps=4",
              "solver.eval_every=2", "solver.batch_size=4", "solver.lr=1e-2", "solver.eps=1e-2",
              "task.num_train=16", "task.num_dev=8", "task.num_eval=8", f"task.data_dir={sst2_dir}",
              "checkpoint_every=2"]
    runs = {name: tmp_path / name for name in ("memory", "offload")}
    for name, extra in (("memory", []), ("offload", ["hardware.offload=simulated"])):
        proc = run_main(*common, *extra, f"hydra.run.dir={runs[name]}")
        assert proc.returncode == 0, proc.stderr[-3000:]

    def outcome(run_dir):
        summary = json.loads((run_dir / "summary.json").read_text())
        metrics = [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
                   for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return ((run_dir / "trajectory.jsonl").read_text(), metrics,
                {k: v for k, v in summary.items() if k not in ("wall_time_s", "peak_mem_gb")})

    assert outcome(runs["offload"]) == outcome(runs["memory"])
    assert len(outcome(runs["memory"])[0].splitlines()) == 1 + 4  # the trajectory header, 4 steps
    ckpt = {k: torch.load(d / "checkpoint.pt", weights_only=False) for k, d in runs.items()}
    assert ckpt["offload"]["loop"].step == 2
    assert all(torch.equal(a, b) for a, b in zip(ckpt["offload"]["params"], ckpt["memory"]["params"]))
    # Killed after the checkpoint: the dir without its summary resumes from step 2.
    resumed = tmp_path / "resumed"
    shutil.copytree(runs["offload"], resumed)
    (resumed / "summary.json").unlink()
    proc = run_main(*common, "hardware.offload=simulated", f"hydra.run.dir={resumed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outcome(resumed) == outcome(runs["memory"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("exact", [True, False])
def test_gpu_offload_equals_in_memory_run(exact):
    """The real thing: pinned host buffers, copy / write-back streams, Triton sweeps."""
    cuda = torch.device("cuda")

    def on_gpu(kind):
        bundle = bundle_of(tiny_model(kind).to(cuda))
        bundle.device = cuda
        return bundle

    results = []
    for placement in (Placement(cuda), HostOffload(cuda, Ranks())):
        bundle = on_gpu("llama") if placement.name == "device" else bundle_of(tiny_model("llama"))
        solver = SPSA15(steps=STEPS, batch_size=4, n_perts=2, eps=1e-2, lr=1e-2, exact=exact,
                        dist="rademacher")
        placement.check(solver)
        placement.place(bundle)
        data, batch = task_batch("rte")
        objective = objective_for(bundle, data)
        solver.place(placement)
        solver.setup(bundle.params, objective)
        records = [solver.step(batch, t).record for t in range(STEPS)]
        solver.settle()
        results.append((records, [p.detach().cpu() for p in bundle.params]))
    assert results[1][0] == results[0][0]
    assert all(torch.equal(a, b) for a, b in zip(results[1][1], results[0][1]))
