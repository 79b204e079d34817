"""Command-line pre-flight: one-line errors for unknown config-group options.

Hydra reports `solver=nope` with a multi-line block (search path, hints). Checking the
group overrides against `conf/` first gives the one line a user needs:
`error: solver: no option 'nope'; allowed: mezo, zeroshot`.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str] | None:
    """The options of a config group, or None when `group` is not a group folder."""
    folder = conf_dir / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


def check_group_overrides(args: list[str], conf_dir: Path = CONF_DIR) -> str | None:
    """Return an error line for the first `group=option` naming an unknown option, else None."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        if key.startswith(("~", "hydra/")) or "." in key or value.startswith(("choice(", "range(", "glob(")):
            continue  # deletions, Hydra's own plugin groups, value overrides, sweep functions
        options = group_options(key, conf_dir)
        if options is None:
            continue
        for choice in value.split(","):
            choice = choice.strip()
            if choice and choice not in options and choice != "null":
                return f"error: {key}: no option '{choice}'; allowed: {', '.join(options)}"
    return None


# Hydra's flags that take no value: argparse stops collecting overrides at the first of them,
# so `python main.py solver=spsa15 -m solver.n_perts=40,160` would reject the last override.
BARE_FLAGS = ("-m", "--multirun", "-r", "--run")


def flags_first(args: list[str]) -> list[str]:
    """Move Hydra's bare flags before the overrides, keeping every other order as typed."""
    return [a for a in args if a in BARE_FLAGS] + [a for a in args if a not in BARE_FLAGS]


def preflight() -> None:
    """Normalise sys.argv for Hydra, then exit with status 2 and one line on stderr if a
    group override names an unknown option."""
    sys.argv[1:] = flags_first(sys.argv[1:])
    message = check_group_overrides(sys.argv[1:])
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(2)
