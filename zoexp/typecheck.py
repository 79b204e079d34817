"""Type checks of a config node against the constructor it will be passed to, before building.

YAML and the command line give a value its type by its spelling, so `solver.lr=true` reaches
the solver as a bool, which Python happily treats as 1 (an lr of 1.0), and `solver.exact=1`
as an int that is truthy. Reading the annotations of the `_target_`'s constructor (and of
its bases, which receive the `**kwargs`) catches these for every solver, task and peft config
without each one re-checking: a bool where a number is declared, a number where a bool is,
a float where an int is, and any non-finite number (inf, nan) where a float is. Annotations
that are not plain bool / int / float (optionally `| None`) are left to the constructor's own
checks, which know the allowed values.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from zoexp.errors import ConfigError

_PLAIN = {bool: "bool", int: "int", float: "float", type(None): "none"}


def constructor_hints(target: Any) -> dict[str, Any]:
    """Parameter name -> annotation over the constructor and those of its bases (first wins)."""
    hints: dict[str, Any] = {}
    classes = target.__mro__ if isinstance(target, type) else (target,)
    for klass in classes:
        init = klass.__dict__.get("__init__") if isinstance(target, type) else klass
        if init is None or klass is object:
            continue
        try:
            found = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - unresolvable annotations: leave to the constructor
            continue
        for name, hint in found.items():
            hints.setdefault(name, hint)
    return hints


def _kinds(hint: Any) -> set[str] | None:
    """{'bool', 'int', 'float', 'none'} allowed by `hint`, or None when it is anything else."""
    if hint in _PLAIN:
        return {_PLAIN[hint]}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = set()
        for arg in typing.get_args(hint):
            if arg not in _PLAIN:
                return None
            kinds.add(_PLAIN[arg])
        return kinds
    return None


def _spell(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    return repr(value)


def _allowed(kinds: set[str]) -> str:
    if "bool" in kinds:
        text = "true or false"
    elif "float" in kinds:
        text = "a finite number"
    else:
        text = "an integer"
    return text + (" or null" if "none" in kinds else "")


def value_fits(value: Any, kinds: set[str]) -> bool:
    if value is None:
        return "none" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return "int" in kinds or "float" in kinds
    if isinstance(value, float):
        return "float" in kinds and math.isfinite(value)
    return False


def check_types(values: dict, target: Any, prefix: str) -> None:
    """ConfigError for the first value of `values` (a resolved config node) whose type does
    not fit the annotation of the parameter of `target` it will be passed to."""
    hints = constructor_hints(target)
    for key, value in values.items():
        if key.startswith("_") or key not in hints:
            continue
        kinds = _kinds(hints[key])
        if kinds is not None and not value_fits(value, kinds):
            raise ConfigError(f"{prefix}.{key}", f"got {_spell(value)}; allowed: {_allowed(kinds)}")


def check_node(node, prefix: str) -> None:
    """`check_types` for a Hydra node with a `_target_` (no-op without one, or when the
    target cannot be imported: instantiate reports that)."""
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    target = node.get("_target_") if node is not None else None
    if not target:
        return
    try:
        obj = get_object(target)
    except Exception:  # noqa: BLE001
        return
    check_types(OmegaConf.to_container(node, resolve=True), obj, prefix)
