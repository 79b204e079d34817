"""Command-line pre-flight: one-line errors for overrides Hydra would reject in a block.

Hydra reports `solver=nope`, `solver.lrr=1` (a key that does not exist), a malformed
override or a sweep without `-m` with a multi-line message and exit code 1. Checking the
overrides first -- group options against `conf/`, then composing the config exactly as
Hydra will -- gives the one line every other bad input gets, and exit code 2:
`error: solver: no option 'nope'; allowed: mezo, zeroshot`,
`error: solver.lrr: not a config key; allowed: batch_size, eps, ... (or +solver.lrr=... to add one)`.
"""

from __future__ import annotations

import itertools
import re
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


MAX_COMPOSED = 16  # sweep combinations of group options composed at most (one each)


def _keys_under(conf_dir: Path, overrides: list[str], key: str) -> str:
    """The keys next to `key` in the config composed from the group overrides alone."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    parent = key.rsplit(".", 1)[0] if "." in key else ""
    def is_group(override: str) -> bool:
        name = override.split("=", 1)[0].lstrip("+~").split("@")[0]
        return "=" in override and ("/" in name or group_options(name, conf_dir) is not None)

    groups = [o for o in overrides if is_group(o)]
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose("config", overrides=groups, return_hydra_config=parent.startswith("hydra"))
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = sorted(str(k) for k in node.keys() if not str(k).startswith("_")) if OmegaConf.is_dict(node) else []
    except Exception:  # noqa: BLE001 - the hint is optional
        keys = []
    shown = ", ".join(keys[:24]) + (", ..." if len(keys) > 24 else "")
    return f"one of {parent or 'the top-level keys'}: {shown}" if keys else "an existing key"


def _one_line(exc: Exception, overrides: list[str], conf_dir: Path) -> str:
    """Hydra's composition error as `error: <field>: got ...; allowed: ...`."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if (m := re.match(r"Could not override '([^']+)'", text)):
        key = m.group(1)
        return (f"error: {key}: not a config key; allowed: {_keys_under(conf_dir, overrides, key)} "
                f"(or +{key}=... to add a new one)")
    if (m := re.match(r"Could not append to config\. An item is already at '([^']+)'", text)):
        key = m.group(1)
        return f"error: +{key}: {key} already exists; allowed: {key}=<value> (without +), or ++{key}=<value>"
    if (m := re.match(r"Could not delete from config\. '([^']+)' does not exist", text)):
        key = m.group(1)
        return f"error: ~{key}: not a config key; allowed: {_keys_under(conf_dir, overrides, key)}"
    if (m := re.match(r"Ambiguous value for argument '([^'=]+)=([^']*)'", text)):
        return (f"error: {m.group(1)}: got {m.group(2)}, several values; allowed: one value, -m to sweep "
                f"over them, [a,b] for a list or 'a,b' for a string")
    return f"error: overrides: {first}; allowed: overrides that compose (see python main.py --help)"


def check_composition(args: list[str], conf_dir: Path = CONF_DIR) -> str | None:
    """Compose the config from the command line's overrides as Hydra will (each combination
    of swept group options, the first value of other sweeps) and return Hydra's error as one
    line, or None. Unusual flags (--config-name, --cfg, ...) are left to Hydra."""
    if any(a.startswith("-") and a not in BARE_FLAGS for a in args):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    parser = OverridesParser.create()
    choices: list[list[str]] = []
    for arg in overrides:
        try:
            override = parser.parse_override(arg)
        except HydraException as exc:
            first = str(exc).strip().splitlines()[0]
            return f"error: {arg}: cannot parse ({first}); allowed: key=value (Hydra's override grammar)"
        if not override.is_sweep_override():
            choices.append([arg])
            continue
        key = override.key_or_group
        if not multirun:
            return (f"error: {key}: got {arg.split('=', 1)[1]}, a sweep; allowed: one value, or -m to sweep "
                    f"(quote a string with commas: {key}='a,b')")
        try:
            values = list(override.sweep_string_iterator())
        except HydraException:
            return None  # interval() and other sweeper-specific forms: the sweeper checks them
        group = "/" in key or group_options(key, conf_dir) is not None
        element = override.get_key_element()
        choices.append([f"{element}={v}" for v in (values if group else values[:1])])
    for combination in itertools.islice(itertools.product(*choices), MAX_COMPOSED):
        try:
            with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
                compose("config", overrides=list(combination), return_hydra_config=True)
        except Exception as exc:  # noqa: BLE001 - every composition error becomes one line
            return _one_line(exc, list(combination), conf_dir)
    return None


def preflight() -> None:
    """Normalise sys.argv for Hydra, then exit with status 2 and one line on stderr if an
    override names an unknown group option or key, or does not compose."""
    sys.argv[1:] = flags_first(sys.argv[1:])
    message = check_group_overrides(sys.argv[1:]) or check_composition(sys.argv[1:])
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(2)
