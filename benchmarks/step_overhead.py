"""Where a MeZO step's time goes at every model size, in one run per model shape.

For each model (random weights built from its config; the default model's real weights with
`--real-model DIR`), on one fixed batch (16 x 64 tokens, bf16, SST-2-style classification:
one forward per probe, the candidate logits read at the last position):

* two eager forwards: the scorer's model call (`zoexp.graphs.forward_logits`), as today;
* two graphed forwards: the same call replayed from a captured CUDA graph (`GraphedForward`);
* the compute floor: the forward's FLOPs over the bf16 matmul rate measured in this run
  (and, for a step, plus one update sweep's bytes over the measured copy bandwidth);
* the MeZO step itself (`zoexp.solvers.mezo.MeZO.step` through the real objective and scorer):
  in place (Rademacher), exact (Rademacher) and exact (Gaussian, the default), each on the
  fast path (CUDA graphs) and on the eager path, with steps per second;
* one update sweep over all weights: one launch (multi-tensor apply) vs one launch per
  tensor of >= 4 M elements (the previous layout);
* peak memory of a graphed exact step against a graphed forward.

    python benchmarks/step_overhead.py                       # all shapes, on a CUDA GPU
    python benchmarks/step_overhead.py --real-model DIR      # + SmolLM2-135M's real weights
    python benchmarks/step_overhead.py --quick               # a tiny model on the CPU (smoke test)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import time
import traceback

import torch

from tasks.base import Example
from zoexp.bench import DTYPES, model_config, random_model, word_tokenizer
from zoexp.graphs import GraphedForward, forward_logits
from zoexp.objectives import CandidateScorer, ClassificationLoss
from zoexp.solvers.mezo import MeZO

MODELS = ["smollm2-135m", "opt-1.3b", "opt-6.7b", "opt-13b"]
VARIANTS = [("in place, Rademacher", "rademacher", False), ("exact, Rademacher", "rademacher", True),
            ("exact, Gaussian (default)", "gaussian", True)]
EPS, LR = 1e-3, 1e-7


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, budget_s: float, min_reps: int = 5, max_reps: int = 200, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of fn (synchronised), repeated within a time budget."""
    for _ in range(warmup):
        fn()
    sync()
    times, start = [], time.perf_counter()
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def peaks(device: str) -> tuple[float, float]:
    """(bf16 matmul FLOP/s, copy bytes/s counting read + write), measured here."""
    if device != "cuda":
        return float("nan"), float("nan")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm = timed(lambda: a @ b, 0.5, warmup=3)
    src = torch.randn(1 << 29, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy = timed(lambda: dst.copy_(src), 0.5, warmup=3)
    del a, b, src, dst
    return 2 * 8192 ** 3 / (mm / 1e3), 2 * (1 << 29) * 2 / (copy / 1e3)


def forward_flops(model, rows: int, length: int, keep: int) -> float:
    """Matmul FLOPs of one forward: every weight matrix outside the embedding once per token,
    attention scores and values, and the LM head on the kept positions."""
    config = model.config
    hidden, layers = config.hidden_size, config.num_hidden_layers
    vocab = config.vocab_size
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    matrices = sum(p.numel() for p in model.parameters()
                   if p.dim() == 2 and p is not embed and p is not head)
    tokens = rows * length
    attention = 2 * 2 * layers * rows * length * length * hidden
    return 2 * tokens * matrices + attention + 2 * rows * keep * vocab * hidden


def examples_for(tokenizer, rows: int, length: int, seed: int = 0) -> list[Example]:
    """`rows` prompts of `length` tokens each (words the tokenizer keeps whole), SST-2 labels."""
    g = torch.Generator().manual_seed(seed)
    words = [w for w in ("movie film good bad great story acting plot time fun dull the a and "
                         "of it was is").split()]
    out = []
    for _ in range(rows):
        prompt = ""
        while len(tokenizer(prompt + " It was")["input_ids"]) < length:
            prompt += " " + words[int(torch.randint(len(words), (1,), generator=g))]
        while len(tokenizer(prompt + " It was")["input_ids"]) > length:
            prompt = prompt.rsplit(" ", 1)[0]
        out.append(Example(prompt=prompt.strip() + " It was", candidates=(" terrible", " great"),
                           label=int(torch.randint(2, (1,), generator=g))))
    return out


def build(name: str, args):
    """(model, tokenizer, label) for a preset or a real model directory."""
    if name.startswith("real:"):
        from zoexp.model import load_model
        bundle = load_model(name[5:], args.dtype, torch.device(args.device))
        return bundle.model, bundle.tokenizer, f"smollm2-135m (real weights, {name[5:]})"
    if args.quick:
        from transformers import LlamaConfig
        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                             tie_word_embeddings=True)
    else:
        config = model_config(name)
    model = random_model(config, DTYPES[args.dtype], args.device)
    vocab = [f"w{i}" for i in range(200)] + ("movie film good bad great story acting plot time "
                                             "fun dull the a and of it was is It terrible").split()
    return model, word_tokenizer(vocab, config.vocab_size), f"{name} (random weights)"


def measure(name: str, args, flops_peak: float, copy_peak: float) -> dict:
    model, tokenizer, label = build(name, args)
    device = args.device
    graphs = device == "cuda"
    params = [p for p in model.parameters()]
    n_params = sum(p.numel() for p in params)
    row = {"model": label, "params": n_params, "dtype": args.dtype, "batch": args.batch}
    batch = examples_for(tokenizer, args.batch, args.seq)
    eager_obj = ClassificationLoss(CandidateScorer(model, tokenizer, torch.device(device)), None)
    enc = eager_obj.scorer._pad([eager_obj.scorer._ids(ex.prompt, True) for ex in batch])
    ids, mask = enc.input_ids, enc.attention_mask
    row["seq"] = ids.shape[1]
    budget = args.budget

    with torch.no_grad():
        row["eager_2fwd_ms"] = timed(lambda: [forward_logits(model, ids, mask, 1) for _ in "ab"],
                                     budget)
        if graphs:
            graphed_fwd = GraphedForward(model, tokenizer.pad_token_id)
            row["graphed_2fwd_ms"] = timed(lambda: [graphed_fwd(ids, mask, 1) for _ in "ab"], budget)
            sync()
            torch.cuda.reset_peak_memory_stats()
            graphed_fwd(ids, mask, 1)
            sync()
            row["graphed_fwd_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            del graphed_fwd
    flops = forward_flops(model, ids.shape[0], ids.shape[1], 1)
    row["fwd_gflop"] = flops / 1e9
    row["floor_2fwd_ms"] = 2 * flops / flops_peak * 1e3
    sweep_bytes = 2 * sum(p.numel() * p.element_size() for p in params)
    row["floor_step_ms"] = row["floor_2fwd_ms"] + sweep_bytes / copy_peak * 1e3

    # the update sweep: one launch vs one per large tensor
    if graphs:
        from kernels import sweep as K
        from zoexp.perturb import PerturbationEngine
        engine = PerturbationEngine(params, dist="rademacher", exact=False)
        with torch.no_grad():
            saved = K.OWN_LAUNCH_NUMEL
            K.OWN_LAUNCH_NUMEL = 1 << 22
            try:
                row["sweep_per_tensor_ms"] = timed(lambda: engine.update(1, 1e-30), budget)
            finally:
                K.OWN_LAUNCH_NUMEL = saved
            row["sweep_one_launch_ms"] = timed(lambda: engine.update(1, 1e-30), budget)
        del engine

    for graphed in ([True, False] if graphs else [False]):
        scorer = CandidateScorer(model, tokenizer, torch.device(device), cuda_graphs=graphed)
        objective = ClassificationLoss(scorer, None)
        for variant, dist, exact in VARIANTS:
            key = f"{variant} [{'graphs' if graphed else 'eager'}]"
            try:
                solver = MeZO(steps=1 << 30, batch_size=args.batch, lr=LR, eps=EPS, dist=dist,
                              exact=exact)
                solver.setup(params, objective)
                counter = iter(range(1 << 30))
                step_ms = timed(lambda: solver.step(batch, next(counter)), budget, warmup=3)
                entry = {"step_ms": step_ms, "steps_per_s": 1e3 / step_ms,
                         "over_eager_2fwd": step_ms / row["eager_2fwd_ms"]}
                if graphed and exact:
                    sync()
                    torch.cuda.reset_peak_memory_stats()
                    solver.step(batch, next(counter))
                    sync()
                    entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                solver.settle()
                row[key] = entry
                del solver
            except Exception as exc:  # noqa: BLE001 - report and go on with the other variants
                row[key] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
        if scorer.graphed is not None:
            row["graphs"] = scorer.graphed.summary()
        del scorer, objective
    del model, params, eager_obj, enc, ids, mask
    gc.collect()
    if graphs:
        torch.cuda.empty_cache()
    return row


def compiled_layers_probe(name: str, args) -> dict:
    """How much fusing the elementwise kernels would add to graphs: the same graphed forward
    and in-place step with each decoder layer compiled by torch.compile (regional, default
    mode: fused Triton kernels, no cudagraphs of its own) inside our captured graph. A probe
    for what to build next, not a zoexp option: exact mode's per-read dispatch does not trace."""
    import signal

    import torch._dynamo

    model, tokenizer, label = build(name, args)
    batch = examples_for(tokenizer, args.batch, args.seq)
    row = {"model": label + ", decoder layers compiled", "params": sum(p.numel() for p in
                                                                     model.parameters()),
           "dtype": args.dtype, "batch": args.batch}
    scorer = CandidateScorer(model, tokenizer, torch.device(args.device))
    enc = scorer._pad([scorer._ids(ex.prompt, True) for ex in batch])
    ids, mask = enc.input_ids, enc.attention_mask
    row["seq"] = ids.shape[1]
    with torch.no_grad():
        row["eager_2fwd_ms"] = timed(lambda: [forward_logits(model, ids, mask, 1) for _ in "ab"],
                                     args.budget)
        plain = GraphedForward(model, tokenizer.pad_token_id)
        row["graphed_2fwd_ms"] = timed(lambda: [plain(ids, mask, 1) for _ in "ab"], args.budget)
    torch._dynamo.config.cache_size_limit = 64
    layers = [m for m in model.modules() if type(m).__name__ in set(model._no_split_modules)]
    started = time.perf_counter()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("compile")))
    signal.alarm(int(args.compile_timeout))
    try:
        for layer in layers:
            layer.compile()
        with torch.no_grad():
            compiled = GraphedForward(model, tokenizer.pad_token_id)
            compiled(ids, mask, 1)
            row["compile_s"] = time.perf_counter() - started
            row["graphed_compiled_2fwd_ms"] = timed(lambda: [compiled(ids, mask, 1) for _ in "ab"],
                                                    args.budget)
            row["compiled_graphs"] = compiled.summary()
        objective = ClassificationLoss(CandidateScorer(model, tokenizer, torch.device(args.device),
                                                       cuda_graphs=True), None)
        solver = MeZO(steps=1 << 30, batch_size=args.batch, lr=LR, eps=EPS, dist="rademacher",
                      exact=False)
        solver.setup(list(model.parameters()), objective)
        counter = iter(range(1 << 30))
        step_ms = timed(lambda: solver.step(batch, next(counter)), args.budget, warmup=3)
        row["in place, Rademacher [graphs + compiled layers]"] = {
            "step_ms": step_ms, "steps_per_s": 1e3 / step_ms,
            "over_eager_2fwd": step_ms / row["eager_2fwd_ms"]}
    finally:
        signal.alarm(0)
    return row


def profile_steps(name: str, args) -> dict:
    """Where the host time of a graphed exact (Gaussian) step goes: cProfile over
    `args.profile` steps, the top functions by own time printed."""
    import cProfile
    import pstats

    model, tokenizer, label = build(name, args)
    batch = examples_for(tokenizer, args.batch, args.seq)
    objective = ClassificationLoss(CandidateScorer(model, tokenizer, torch.device(args.device),
                                                   cuda_graphs=args.device == "cuda"), None)
    solver = MeZO(steps=1 << 30, batch_size=args.batch, lr=LR, eps=EPS, dist="gaussian", exact=True)
    solver.setup(list(model.parameters()), objective)
    for t in range(3):
        solver.step(batch, t)
    sync()
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for t in range(3, 3 + args.profile):
        solver.step(batch, t)
    sync()
    profiler.disable()
    step_ms = (time.perf_counter() - started) / args.profile * 1e3
    print(f"profiled {args.profile} steps of {label}, exact Gaussian, graphs: {step_ms:.2f} ms a "
          "step (with the profiler on)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return {"model": label + ", profiled", "error": f"{step_ms:.2f} ms a step, see above"}


def report(rows: list[dict]) -> str:
    out = []
    for r in rows:
        if "error" in r:
            out.append(f"\n### {r['model']}\n\nerror: {r['error']}\n")
            continue
        e2 = r["eager_2fwd_ms"]
        out.append(f"\n### {r['model']}: {r['params'] / 1e9:.3f} B params, {r['dtype']}, batch "
                   f"{r['batch']} x {r['seq']}\n")
        out.append("| | ms | / two eager forwards | steps/s |\n|---|---:|---:|---:|")
        out.append(f"| two eager forwards | {e2:.2f} | 1.00 | |")
        if "graphed_2fwd_ms" in r:
            out.append(f"| two graphed forwards | {r['graphed_2fwd_ms']:.2f} | "
                       f"{r['graphed_2fwd_ms'] / e2:.2f} | |")
        if "graphed_compiled_2fwd_ms" in r:
            out.append(f"| two graphed forwards, layers compiled ({r['compile_s']:.0f} s to compile) "
                       f"| {r['graphed_compiled_2fwd_ms']:.2f} | "
                       f"{r['graphed_compiled_2fwd_ms'] / e2:.2f} | |")
        if "fwd_gflop" not in r:
            out.extend(_step_rows(r, e2))
            continue
        out.append(f"| compute floor, two forwards ({r['fwd_gflop']:.0f} GFLOP each) | "
                   f"{r['floor_2fwd_ms']:.2f} | {r['floor_2fwd_ms'] / e2:.2f} | |")
        out.append(f"| compute floor, step (+ one update sweep at copy bandwidth) | "
                   f"{r['floor_step_ms']:.2f} | {r['floor_step_ms'] / e2:.2f} | "
                   f"{1e3 / r['floor_step_ms']:.0f} |")
        out.extend(_step_rows(r, e2))
        if "sweep_one_launch_ms" in r:
            out.append(f"\nupdate sweep (Rademacher): one launch {r['sweep_one_launch_ms']:.3f} ms, "
                       f"one launch per tensor >= 4M elements {r['sweep_per_tensor_ms']:.3f} ms; "
                       f"graphed forward peak {r.get('graphed_fwd_peak_gib', float('nan')):.3f} GiB")
        for k in ("graphs", "compiled_graphs"):
            if k in r:
                out.append(f"{r[k]}")
    return "\n".join(out)


def _step_rows(r: dict, e2: float) -> list[str]:
    out = []
    for key, v in r.items():
        if not isinstance(v, dict):
            continue
        if "error" in v:
            out.append(f"| MeZO step, {key} | error: {v['error'][:80]} | | |")
            continue
        peak = f" (peak {v['peak_gib']:.3f} GiB)" if "peak_gib" in v else ""
        out.append(f"| MeZO step, {key}{peak} | {v['step_ms']:.2f} | "
                   f"{v['over_eager_2fwd']:.2f} | {v['steps_per_s']:.0f} |")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--real-model", default=None,
                        help="a folder with SmolLM2-135M's real weights (zoexp's converted copy)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per row")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model on the CPU, eager only: checks the script runs")
    parser.add_argument("--json", default=None, help="also write the raw rows here")
    parser.add_argument("--compile-layers", action="store_true",
                        help="instead: the graphed forward and in-place step with torch.compile'd "
                        "decoder layers (a probe of what fusion would add)")
    parser.add_argument("--compile-timeout", type=float, default=150)
    parser.add_argument("--profile", type=int, default=0,
                        help="instead: cProfile this many graphed exact steps (host time)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("zoexp").setLevel(logging.INFO)  # graph captures that fall back, and why
    args.device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    if args.quick:
        args.models, args.batch, args.seq, args.dtype, args.budget = ["tiny"], 4, 16, "fp32", 0.2
    names = args.models + ([f"real:{args.real_model}"] if args.real_model else [])
    flops_peak, copy_peak = peaks(args.device)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{gpu}, torch {torch.__version__}; bf16 matmul {flops_peak / 1e12:.0f} TFLOP/s, copy "
          f"{copy_peak / 1e12:.2f} TB/s (read + write), measured here", flush=True)
    rows = []
    for name in names:
        started = time.perf_counter()
        try:
            if args.profile:
                rows.append(profile_steps(name, args))
            elif args.compile_layers:
                rows.append(compiled_layers_probe(name, args))
            else:
                rows.append(measure(name, args, flops_peak, copy_peak))
        except Exception as exc:  # noqa: BLE001 - one model's failure leaves the others
            traceback.print_exc()
            rows.append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
        rows[-1]["wall_s"] = time.perf_counter() - started
        print(report(rows[-1:]), f"\n({rows[-1]['wall_s']:.0f} s)", flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"device": gpu, "torch": torch.__version__, "flops_peak": flops_peak,
                           "copy_peak": copy_peak, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
