"""Tiny random decoder models for the placement tests (layer-major, offload, FSDP): the real
tokenizer of the default model, a 3-block OPT (embedding tied to the LM head, learned
positions) or Llama (untied head, rotary positions), and one RTE / COPA batch. The tests use
Rademacher directions: the torch reference generates Gaussians ~10x slower on the CPU, and
the vocabulary's embedding matrix is most of these models."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT
from zoexp.model import ModelBundle, resolve_model_source
from zoexp.objectives import CandidateScorer, build_objective

FIXTURES = ROOT / "tests" / "fixtures"


@functools.lru_cache(maxsize=1)
def tokenizer():
    from transformers import AutoTokenizer

    name = OmegaConf.load(ROOT / "conf" / "model" / "smollm2-135m.yaml").name
    tok = AutoTokenizer.from_pretrained(resolve_model_source(name))
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    return tok


def tiny_model(kind: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    tok = tokenizer()
    torch.manual_seed(seed)
    if kind == "opt":
        model = OPTForCausalLM(OPTConfig(
            vocab_size=len(tok), hidden_size=8, ffn_dim=16, num_hidden_layers=3,
            num_attention_heads=2, word_embed_proj_dim=8, max_position_embeddings=512,
            pad_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    else:
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.eos_token_id))
    return model.to(dtype).eval()


def bundle_of(model: torch.nn.Module) -> ModelBundle:
    return ModelBundle(model, tokenizer(), torch.device("cpu"), next(model.parameters()).dtype,
                       [(n, p) for n, p in model.named_parameters()])


def task_batch(task: str = "rte", n: int = 4):
    from tasks.copa import COPA
    from tasks.rte import RTE

    data = {"rte": RTE, "copa": COPA}[task](data_dir=str(FIXTURES / task), num_train=n,
                                            num_dev=0, num_eval=1)
    return data, data.sample()["train"]


def objective_for(bundle: ModelBundle, data):
    scorer = CandidateScorer(bundle.model, bundle.tokenizer, bundle.device, max_length=128)
    return build_objective("classification", scorer, data)


def save_tiny(path: Path, kind: str = "opt") -> Path:
    """A tiny model folder that `model=hf model.name=<path>` loads (no hub access)."""
    model = tiny_model(kind, torch.float32)
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path
