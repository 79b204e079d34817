"""Tiny causal LMs with random weights and a word-level tokenizer, for tests that need the
real model path (scorer, objective, graphs) without the default model's files: the GPU
machine has neither the hub nor the GGUF package."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import NEGATIVE, POSITIVE
from zoexp.bench import word_tokenizer

WORDS = sorted({w for s in POSITIVE + NEGATIVE for w in s.split()} | {"It", "was", "great",
                                                                      "terrible", "(", ")"}
               | {str(i) for i in range(200)})


def tokenizer():
    return word_tokenizer(WORDS, vocab_size=256)


def tiny_model(arch: str, dtype=torch.float32, device="cpu", seed: int = 0):
    """A 2-layer Llama (tied embeddings, grouped KV heads, like SmolLM2) or OPT."""
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=True, pad_token_id=0, bos_token_id=0,
                             eos_token_id=0)
        model = LlamaForCausalLM(config)
    else:
        config = OPTConfig(vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                           num_attention_heads=4, word_embed_proj_dim=64, pad_token_id=0,
                           bos_token_id=0, eos_token_id=0, max_position_embeddings=256)
        model = OPTForCausalLM(config)
    return model.to(device=device, dtype=dtype).eval()


def save_tiny_model(folder: Path, arch: str = "llama") -> Path:
    """A model folder `python main.py model=hf model.name=<folder>` loads."""
    tiny_model(arch).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder
