"""Padding overhead of SST-2 training batches with and without length grouping.

Prints computed tokens / real tokens (every batch padded to its longest prompt) over whole
epochs of `zoexp.batching.LengthGroupedBatches`, for the MeZO training sample (num_train
examples) and for the full GLUE train split. Lengths are the default model's token counts of
the rendered prompts, the sequences the classification objective feeds the model. Exits with
status 1 if the grouped ratio of the MeZO sample exceeds --max-ratio.

    python benchmarks/padding.py [--data-dir ../shared/assets/sst2] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.sst2 import SST2  # noqa: E402
from zoexp.batching import LengthGroupedBatches, padding_ratio  # noqa: E402


def default_tokenizer():
    """The tokenizer of conf/config.yaml's default model (offline: the packaged SmolLM2)."""
    from transformers import AutoTokenizer

    from zoexp.model import resolve_model_source

    model = next(d["model"] for d in OmegaConf.load(ROOT / "conf" / "config.yaml").defaults
                 if OmegaConf.is_dict(d) and "model" in d)
    name = OmegaConf.load(ROOT / "conf" / "model" / f"{model}.yaml").name
    return name, AutoTokenizer.from_pretrained(resolve_model_source(name))


def epoch_stats(lengths: list[int], batch_size: int, seed: int, group: bool, epochs: int) -> tuple[float, float]:
    """(token-weighted ratio over the epochs, worst single batch)."""
    sampler = LengthGroupedBatches(lengths, batch_size, seed=seed, group=group)
    computed = real = 0
    worst = 1.0
    for step in range(epochs * sampler.per_epoch):
        batch = [lengths[i] for i in sampler.batch(step)]
        computed += len(batch) * max(batch)
        real += sum(batch)
        worst = max(worst, padding_ratio(batch))
    return computed / real, worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "assets" / "sst2"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-ratio", type=float, default=1.10)
    args = parser.parse_args()

    task = SST2(data_dir=args.data_dir, num_train=args.num_train, num_dev=0, num_eval=1, seed=args.seed)
    model_name, tok = default_tokenizer()

    def lengths(prompts: list[str]) -> list[int]:
        return [len(ids) for ids in tok(prompts)["input_ids"]]

    sample = lengths([ex.prompt for ex in task.sample()["train"]])
    full = lengths([task.render(row).prompt for row in task.load_rows("train")])
    print(f"SST-2 prompts tokenised by {model_name}; batch size {args.batch_size}, {args.epochs} epochs, seed {args.seed}")
    print(f"{'examples':>28} | {'mean len':>8} | {'ungrouped':>9} | {'grouped':>9} | worst batch (grouped)")
    grouped_sample = None
    for label, lens in ((f"MeZO sample (num_train={len(sample)})", sample), (f"full train ({len(full)})", full)):
        plain, _ = epoch_stats(lens, args.batch_size, args.seed, False, args.epochs)
        grouped, worst = epoch_stats(lens, args.batch_size, args.seed, True, args.epochs)
        grouped_sample = grouped if grouped_sample is None else grouped_sample
        print(f"{label:>28} | {sum(lens) / len(lens):8.1f} | {plain:9.3f} | {grouped:9.3f} | {worst:.3f}")
    ok = grouped_sample <= args.max_ratio
    print(f"grouped ratio on the MeZO sample {grouped_sample:.3f} {'<=' if ok else '>'} {args.max_ratio}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
