"""Rebuild a run's trained weights from the base model and its seed trajectory.

    python -m zoexp.replay <run dir> [--step last|best|N] [--out FILE] [--verify] [--device DEV]

A ZO step changes the weights by `coef * z(seed)` (plus decay), and z is a pure function of the
seed, so `trajectory.jsonl` -- one JSON line per step with what the solver's `replay` needs
(for MeZO: seed, coef, decay) -- is a complete record of training: a few dozen bytes per step
instead of a copy of the weights. Replay loads the base model exactly as the run did (same
model, dtype, peft wrapper, and the same torch seed for peft's initial weights), then redoes
the updates with `Solver.replay`; no data and no forward pass are needed.

Bit-exactness holds on the device (and perturbation backend) the run used; `--verify` checks it
against the run's `checkpoint.pt`, replaying to the step the checkpoint was taken at.

The trajectory's header line gives its format (`zoexp.checkpoint`): version 2 derives direction
seeds with 64 bits; a file without a header is version 1 (31-bit seeds) and replays with the
derivation it was written with. Steps skipped under `on_divergence=skip_step` change nothing.
A damaged input (config, trajectory, summary or checkpoint) is one line naming the file, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from zoexp.checkpoint import read_trajectory as read_trajectory_file
from zoexp.checkpoint import seed_bits_of
from zoexp.errors import ConfigError
from zoexp.jsonl import CorruptFile


@dataclass
class Replayed:
    step: int                                 # number of updates applied
    names: list[str]                          # trainable parameter names
    params: list[torch.Tensor]                # their replayed values (on the replay device)
    trajectory_bytes: int                     # size of the trajectory lines replayed
    trainable_bytes: int                      # size of a checkpoint of the trainable weights
    model_bytes: int                          # size of every weight of the model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu() for n, p in zip(self.names, self.params)}


def load_run_config(run_dir: Path) -> DictConfig:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        raise ConfigError("run_dir", f"{run_dir} has no .hydra/config.yaml; allowed: a zoexp run directory")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - YAML / decoding errors
        raise CorruptFile(path, f"cannot be read ({_first(exc)}); allowed: the config Hydra wrote") from None
    if not isinstance(cfg, DictConfig) or "solver" not in cfg or "model" not in cfg:
        raise CorruptFile(path, "has no solver / model section; allowed: the config Hydra wrote")
    return cfg


def read_trajectory(run_dir: Path) -> tuple[int, int, list[tuple[dict, int]]]:
    """(seed bits, header size in bytes, [(record, its size in bytes)] in step order); a step
    recorded twice keeps the last; a torn last line is dropped with a warning."""
    path = run_dir / "trajectory.jsonl"
    if not path.exists():
        raise ConfigError("run_dir", f"{run_dir} has no trajectory.jsonl; allowed: a run of a ZO solver")
    header, lines = read_trajectory_file(path)
    by_step: dict[int, tuple[dict, int]] = {}
    for raw, record in lines:
        by_step[record["step"]] = (record, len(raw))
    steps = sorted(by_step)
    if not steps:
        raise ConfigError("trajectory.jsonl", f"{path} holds no steps; allowed: the trajectory of a run that "
                          f"took at least one step")
    if steps != list(range(len(steps))):
        raise ConfigError("trajectory.jsonl", f"steps {steps[:3]}...{steps[-3:]} are not 0..n-1; allowed: "
                          f"a complete trajectory")
    return seed_bits_of(header), len(header[0]) if header else 0, [by_step[s] for s in steps]


def target_step(run_dir: Path, which: str, total: int) -> int:
    """'last' -> all recorded steps; 'best' -> summary.json's best_step; 'N' -> N updates."""
    if which == "last":
        return total
    if which == "best":
        path = run_dir / "summary.json"
        try:
            best = int(json.loads(path.read_text())["best_step"])
        except FileNotFoundError:
            raise ConfigError("--step", f"got 'best', but {path} does not exist (the run did not finish); "
                              f"allowed: last or an integer in 0..{total}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptFile(path, f"has no readable best_step ({_first(exc)}); allowed: the summary the "
                              "run wrote") from None
        if not 0 <= best <= total:
            raise ConfigError("--step", f"got 'best' = step {best}; allowed: 0..{total} (the recorded steps)")
        return best
    if not which.isdigit() or int(which) > total:
        raise ConfigError("--step", f"got {which!r}; allowed: last, best or an integer in 0..{total}")
    return int(which)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def replay(run_dir: Path | str, step: int | str = "last", device: str | None = None) -> Replayed:
    """Base model + the first `step` trajectory records -> the weights the run had after them."""
    import hydra

    from zoexp.model import load_model, resolve_device
    from zoexp.run import build_peft

    run_dir = Path(run_dir)
    if not (run_dir / ".hydra" / "config.yaml").exists():
        raise ConfigError("run_dir", f"{run_dir} has no .hydra/config.yaml; allowed: a zoexp run directory")
    seed_bits, header_bytes, records = read_trajectory(run_dir)
    cfg = load_run_config(run_dir)
    upto = target_step(run_dir, str(step), len(records))
    try:
        solver = hydra.utils.instantiate(cfg.solver)
    except Exception as exc:  # noqa: BLE001 - a damaged or hand-edited solver section
        raise CorruptFile(run_dir / ".hydra" / "config.yaml", f"its solver cannot be built ({_first(exc)}); "
                          "allowed: the config Hydra wrote") from None
    torch.manual_seed(cfg.hardware.seed)  # as zoexp.run: peft's fresh weights come from this seed
    bundle = load_model(cfg.model.name, cfg.model.dtype, resolve_device(device or cfg.hardware.device),
                        build_peft(cfg), revision=cfg.model.get("revision"))
    solver.setup(bundle.params, None)
    solver.set_seed_bits(seed_bits)
    with torch.no_grad():
        for record, _ in records[:upto]:
            if "skipped" in record:
                continue  # on_divergence=skip_step: that step changed nothing
            try:
                solver.replay(record)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise CorruptFile(run_dir / "trajectory.jsonl", f"the record of step {record['step']} cannot be "
                                  f"replayed ({_first(exc)}); allowed: records as {type(solver).__name__} "
                                  "wrote them") from None
    return Replayed(
        step=upto,
        names=[n for n, _ in bundle.trainable],
        params=bundle.params,
        trajectory_bytes=header_bytes + sum(size for _, size in records[:upto]),
        trainable_bytes=sum(p.numel() * p.element_size() for p in bundle.params),
        model_bytes=sum(p.numel() * p.element_size() for p in bundle.model.parameters()),
    )


def verify(run_dir: Path, device: str | None = None) -> tuple[int, bool]:
    """Replay to checkpoint.pt's step and compare bit for bit: (step, equal)."""
    from zoexp.checkpoint import Checkpointer

    if not (run_dir / "checkpoint.pt").exists():
        raise ConfigError("--verify", f"{run_dir} has no checkpoint.pt; allowed: a run with checkpoint_every > 0")
    ckpt = Checkpointer(run_dir, write=False).load()
    step = ckpt["loop"].step
    result = replay(run_dir, step, device)
    saved = ckpt["params"]
    equal = len(saved) == len(result.params) and all(
        torch.equal(a.cpu(), b) for a, b in zip(result.params, saved))
    return step, equal


def _mb(n: int) -> str:
    return f"{n / 2**20:.3f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoexp.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", default="last", help="last (default), best, or a number of steps")
    parser.add_argument("--out", type=Path, help="where to save the weights (default: <run dir>/replayed.pt)")
    parser.add_argument("--device", help="replay on this device (default: the run's hardware.device)")
    parser.add_argument("--verify", action="store_true", help="check against checkpoint.pt bit for bit")
    args = parser.parse_args(argv)
    try:
        if args.verify:
            step, equal = verify(args.run_dir, args.device)
            print(f"replay to step {step} vs checkpoint.pt: {'bit-identical' if equal else 'DIFFERENT'}")
            return 0 if equal else 1
        result = replay(args.run_dir, args.step, args.device)
    except (ConfigError, CorruptFile) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "replayed.pt"
    torch.save(result.state_dict(), out)
    print(f"replayed {result.step} steps -> {out}\n"
          f"  seed trajectory: {_mb(result.trajectory_bytes)}   trainable weights: {_mb(result.trainable_bytes)} "
          f"({result.trainable_bytes / max(result.trajectory_bytes, 1):.0f}x)   "
          f"full model: {_mb(result.model_bytes)} ({result.model_bytes / max(result.trajectory_bytes, 1):.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
