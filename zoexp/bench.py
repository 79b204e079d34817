"""`python -m zoexp.bench`: how long one forward pass takes, and what N of them cost.

A ZO run is forward passes (MeZO: two per step, 1.5-SPSA / n-SPSA: more), so the time of one
forward at the run's batch shape, times the GPU's price, prices a whole sweep before it is
launched. The model is built from its config with random weights (no weight download); a
preset name needs no network at all, anything else is read with `AutoConfig.from_pretrained`
(a local directory, or a hub id already in the cache).

    python -m zoexp.bench --model opt-13b --batch 16 --seq 64 --usd-per-hour 2.5
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

# Architecture of the OPT family (facebook/opt-*): hidden, layers, heads, ffn. vocab 50272.
OPT_PRESETS = {
    "opt-125m": (768, 12, 12, 3072),
    "opt-350m": (1024, 24, 16, 4096),
    "opt-1.3b": (2048, 24, 32, 8192),
    "opt-2.7b": (2560, 32, 32, 10240),
    "opt-6.7b": (4096, 32, 32, 16384),
    "opt-13b": (5120, 40, 40, 20480),
    "opt-30b": (7168, 48, 56, 28672),
    "opt-66b": (9216, 64, 72, 36864),
}
OTHER_PRESETS = ("smollm2-135m",)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def model_config(name: str):
    """A transformers config for a preset name (offline) or anything `AutoConfig` can read."""
    if name == "smollm2-135m":
        return smollm2_config()
    if name in OPT_PRESETS:
        from transformers import OPTConfig
        hidden, layers, heads, ffn = OPT_PRESETS[name]
        return OPTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         ffn_dim=ffn, vocab_size=50272, max_position_embeddings=2048,
                         word_embed_proj_dim=hidden if name != "opt-350m" else 512)
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(name)


def smollm2_config():
    """SmolLM2-135M's architecture (the default model), offline: hidden 576, 30 layers, 9 heads
    (3 key/value heads), MLP 1536, vocab 49152, tied embeddings."""
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                       max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def word_tokenizer(words, vocab_size: int | None = None):
    """A real (fast) Hugging Face tokenizer with one token per whitespace-separated word of
    `words` (others -> <unk>), id 0 = <pad>, padded on the left: for models with random
    weights on machines without the hub. Pads the vocabulary to `vocab_size` if given."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    for i in range(len(vocab), vocab_size or 0):
        vocab[f"<extra_{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   padding_side="left")


def random_model(config, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The causal LM of `config` with random weights, built directly on `device` in `dtype`."""
    from transformers import AutoModelForCausalLM
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """--model / --batch / --seq / --dtype: the workload options shared by the benchmarks."""
    parser.add_argument("--model", default="opt-13b",
                        help=f"preset ({', '.join([*OPT_PRESETS, *OTHER_PRESETS])}) or a config "
                        "path / cached hub id")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")


def random_batch_loss(name: str, dtype: torch.dtype, device: str, batch: int, seq: int):
    """(model, its loss on one fixed random batch as a no-grad callable): the workload every
    forward / step benchmark times."""
    model = random_model(model_config(name), dtype, device)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device,
                        generator=torch.Generator(device).manual_seed(0))

    @torch.no_grad()
    def loss() -> torch.Tensor:
        return model(input_ids=ids, labels=ids).loss

    return model, loss


class FixedBatchObjective:
    """The objective a benchmarked solver calls: the loss on the fixed batch of
    `random_batch_loss`, whatever batch it is given."""

    def __init__(self, loss: Callable[[], torch.Tensor]) -> None:
        self.loss_fn = loss

    def loss(self, batch) -> float:
        return float(self.loss_fn())


def _objective_base():
    from zoexp.objectives import Objective

    return Objective


class LastTokenObjective(_objective_base()):
    """Cross-entropy of a fixed random next token at the last position of a fixed random
    batch: the shape of the classification objective (one position, the whole vocabulary)
    with grouped forwards (`Objective.group_losses`), so layer-major probes and offload can be
    timed against the sequential step on the same work."""

    def __init__(self, model: torch.nn.Module, batch: int, seq: int, device) -> None:
        from types import SimpleNamespace

        super().__init__(SimpleNamespace(model=model, forward_passes=0), task=None)
        gen = torch.Generator(device).manual_seed(0)
        vocab = model.config.vocab_size
        self.ids = torch.randint(0, vocab, (batch, seq), device=device, generator=gen)
        self.target = torch.randint(0, vocab, (batch,), device=device, generator=gen)

    def example_losses(self, examples, groups: int = 1) -> torch.Tensor:
        self.scorer.forward_passes += groups
        ids = self.ids.repeat(groups, 1) if groups > 1 else self.ids
        logits = self.scorer.model(input_ids=ids, logits_to_keep=1, use_cache=False).logits
        return torch.nn.functional.cross_entropy(logits[:, -1].float(), self.target.repeat(groups),
                                                 reduction="none")


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock milliseconds of each of `repeats` calls (synchronised), after `warmup` calls."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def cost_table(forward_ms: float, usd_per_hour: float, counts: list[int]) -> str:
    """Markdown table: GPU-hours and dollars for N forward passes at `forward_ms` each."""
    rows = ["| forward passes | MeZO steps (2 fwd) | GPU-hours | cost (USD) |",
            "|---:|---:|---:|---:|"]
    for n in counts:
        hours = n * forward_ms / 3.6e6
        rows.append(f"| {n:,} | {n // 2:,} | {hours:.3f} | {hours * usd_per_hour:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoexp.bench", description=__doc__.split("\n")[0])
    add_workload_args(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--usd-per-hour", type=float, default=2.5, help="price of one GPU-hour")
    parser.add_argument("--forwards", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="forward-pass counts to price")
    args = parser.parse_args(argv)
    for name in ("batch", "seq", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.usd_per_hour < 0:
        parser.error("--usd-per-hour must be >= 0")

    model, loss = random_batch_loss(args.model, DTYPES[args.dtype], args.device, args.batch, args.seq)
    times = time_ms(loss, args.repeats)
    forward = statistics.median(times)
    n_params = sum(p.numel() for p in model.parameters())
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"model {args.model} ({n_params / 1e9:.2f} B params, {args.dtype}) on {device_name}, "
          f"batch {args.batch} x {args.seq} tokens")
    print(f"forward: median {forward:.1f} ms, min {min(times):.1f} ms over {args.repeats} runs")
    print(f"\nat ${args.usd_per_hour:.2f} per GPU-hour:\n")
    print(cost_table(forward, args.usd_per_hour, args.forwards))


if __name__ == "__main__":
    main()
