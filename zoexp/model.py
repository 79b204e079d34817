"""Model bundle: a Hugging Face causal LM + tokenizer in the requested dtype and device,
optionally wrapped by `peft`, exposing the trainable parameter set the solvers perturb."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zoexp.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


def resolve_dtype(name: str, field_name: str = "model.dtype") -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(field_name, f"got {name!r}; allowed: {list(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError("hardware.device", f"got {name!r}; allowed: {list(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("hardware.device", "cuda requested but no CUDA GPU is visible; allowed here: cpu, auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_model_source(name: str) -> None:
    """Fail before loading when `name` is a local path that does not exist.

    A hub id (`facebook/opt-13b`) is left to transformers; anything that looks like a path
    (absolute, ./, ../, ~) must be an existing directory.
    """
    if not name:
        raise ConfigError("model.name", "empty; allowed: a Hugging Face hub id or a local model directory")
    looks_like_path = name.startswith(("/", "./", "../", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    if looks_like_path and not Path(name).expanduser().is_dir():
        raise ConfigError("model.name", f"no such directory {name!r}; allowed: a Hugging Face hub id "
                          f"(e.g. facebook/opt-13b) or an existing local model directory")


@dataclass
class ModelBundle:
    """What the rest of the framework sees of a model."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    trainable: list[tuple[str, torch.nn.Parameter]] = field(default_factory=list)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.trainable]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.params)


def load_model(name: str, dtype: str, device: torch.device, peft_config=None,
               revision: str | None = None) -> ModelBundle:
    """Load tokenizer + causal LM (hub id or local dir), optionally wrap with peft."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tdtype = resolve_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=tdtype, revision=revision)
    except OSError as exc:  # not on the hub, not cached offline, or not a model folder
        first = str(exc).strip().splitlines()[0]
        raise ConfigError("model.name", f"cannot load {name!r} ({first}); allowed: a Hugging Face "
                          f"hub id reachable or cached, or a local model directory") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.to(device)
    model.eval()  # ZO never needs dropout; first-order baselines switch to train() themselves
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    else:
        model.requires_grad_(True)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # Tied weights (lm_head = embed_tokens) appear once in named_parameters: nothing is perturbed twice.
    return ModelBundle(model=model, tokenizer=tokenizer, device=device, dtype=tdtype, trainable=trainable)
