"""Can the weight sweeps hide under the forward passes? A sweep on a second CUDA stream.

An in-place MeZO step is two forwards plus two sweeps; if a sweep (memory-bound) ran
concurrently with a forward (tensor-core-bound), a layer-pipelined step could hide it. This
times, at OPT-13B shape (random bf16 weights, batch 16 x 64), a forward alone, a Rademacher
move over as many elements alone, and both launched together on two streams (equal priority,
then the forward on a high-priority stream), and prints how much of the sweep was hidden.

    PYTHONPATH=. python benchmarks/stream_overlap.py
"""
import time, torch
from zoexp.bench import model_config, random_model
from kernels.sweep import sweep
from kernels.sweep_op import SweepOp

torch.manual_seed(0)
model = random_model(model_config("opt-13b"), torch.bfloat16, "cuda")
ids = torch.randint(0, 50000, (16, 64), device="cuda")
n = sum(p.numel() for p in model.parameters())
flat = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_(0, 0.02)
chunks = list(flat.split(1 << 28))
offs = [i * (1 << 28) for i in range(len(chunks))]
op = SweepOp(seed1=3, restore_scale=1e-3, perturb_scale=-1e-3)  # a move
s2 = torch.cuda.Stream()

@torch.no_grad()
def fwd():
    return model(input_ids=ids, labels=ids).loss

def do_sweep():
    sweep(chunks, offs, op, "rademacher")

def timed(fn, r=10):
    for _ in range(3): fn()
    torch.cuda.synchronize(); ts = []
    for _ in range(r):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[r // 2]

def both():
    s2.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s2):
        do_sweep()
    fwd()
    torch.cuda.current_stream().wait_stream(s2)

def both_lowprio():
    lo = torch.cuda.Stream(priority=0); hi = torch.cuda.Stream(priority=-1)
    lo.wait_stream(torch.cuda.current_stream()); hi.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(lo):
        do_sweep()
    with torch.cuda.stream(hi):
        fwd()
    torch.cuda.current_stream().wait_stream(lo); torch.cuda.current_stream().wait_stream(hi)

tf, ts = timed(fwd), timed(do_sweep)
tb, tl_ = timed(both), timed(both_lowprio)
print(f"forward {tf:.1f} ms, sweep {ts:.1f} ms, sum {tf+ts:.1f}; concurrent {tb:.1f} ms "
      f"(hidden {(tf+ts-tb)/ts:.0%} of the sweep); forward high-priority stream {tl_:.1f} ms (hidden {(tf+ts-tl_)/ts:.0%})")
