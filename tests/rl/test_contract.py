"""The package's shape: imports flow one way, files stay small, every algorithm trains
through the one learner entry, LM configs carry only LM fields, checkpoints name their
algorithm and format."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
import torch

from rlfleet.algorithms import get_config_class
from rlfleet.algorithms.grpo import GRPOConfig
from rlfleet.algorithms.ppo.lm import LMPPO, LMPPOConfig
from rlfleet.rl.checkpoint import CheckpointError
from rlfleet.rl.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("rl", "algorithms", "envs", "runtime", "scripts")
# What each package may import of ours (DESIGN.md): algorithms -> rl -> runtime, rl -> envs.
ALLOWED = {
    "runtime": {"runtime"},
    "envs": {"envs"},
    "rl": {"rl", "runtime", "envs"},
    "algorithms": {"algorithms", "rl", "envs", "runtime"},
    "scripts": {"scripts", "algorithms", "rl", "envs", "runtime", "tuned_examples"},
}


def library_files():
    for package in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py") and "peers" not in root:
                    yield package, os.path.join(root, name)


def imported_packages(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] in PACKAGES + ("tuned_examples",):
                yield name  # a top-level import of our folders: never allowed
            elif parts[0] == "rlfleet" and len(parts) > 1:
                yield parts[1]


def test_imports_flow_one_way_and_always_through_the_namespace():
    bad = []
    for package, path in library_files():
        for target in imported_packages(path):
            if target not in ALLOWED[package]:
                bad.append(f"{os.path.relpath(path, REPO)} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_library_file_is_over_500_lines():
    long = {os.path.relpath(p, REPO): n for _, p in library_files()
            if (n := sum(1 for _ in open(p, encoding="utf-8"))) > 500}
    assert not long, long


def test_algorithms_train_only_through_the_learner_entry():
    out = subprocess.run(["git", "grep", "-nE", r"learner_group\.(call|learner)", "--", "algorithms", "rl"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1 and not out.stdout, out.stdout  # 1: nothing found


@pytest.mark.parametrize("key", ["hidden_sizes", "num_envs_per_runner", "normalize_obs", "vectorize_mode", "gamma"])
def test_lm_configs_refuse_control_rl_keys(key):
    for cls in (GRPOConfig, LMPPOConfig):
        with pytest.raises(ConfigError, match=f"unknown key '{key}' for {cls.algo_name}"):
            cls.from_dict({key: 1})


def test_lm_ppo_is_a_sibling_of_grpo_with_its_own_name_and_rules():
    assert not issubclass(LMPPOConfig, GRPOConfig) and not issubclass(GRPOConfig, LMPPOConfig)
    assert LMPPOConfig(group_size=1).group_size == 1  # no group rule: PPO needs no groups
    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        GRPOConfig(group_size=1)
    assert get_config_class("ppo", "text-addition") is LMPPOConfig
    assert get_config_class("lm-ppo") is LMPPOConfig
    assert LMPPOConfig.algo_name == "lm-ppo"


def small_lm_ppo(**kw):
    return LMPPOConfig(env="text-addition", seed=0, warmup_steps=0, prompts_per_runner=4, minibatch_size=8,
                       n_layer=1, n_head=2, n_embd=16, **kw)


def test_lm_ppo_checkpoints_carry_its_name_and_old_formats_are_refused_in_one_line(tmp_path):
    from rlfleet.rl.checkpoint import load_checkpoint

    algo = small_lm_ppo().build()
    try:
        algo.train()
        path = algo.save(str(tmp_path / "ckpt"))
        state = algo.get_state()
    finally:
        algo.stop()
    assert load_checkpoint(path)["algo"] == "lm-ppo" and load_checkpoint(path)["format"] == 3
    restored = LMPPO.from_checkpoint(str(tmp_path / "ckpt"))
    restored.stop()

    state.update(format=1, algo="ppo")  # what rlfleet 0.1 wrote for LM-PPO
    old = tmp_path / "old"
    old.mkdir()
    torch.save(state, old / "checkpoint.pt")
    with pytest.raises(CheckpointError) as info:
        LMPPO.from_checkpoint(str(old))
    message = str(info.value)
    assert "old checkpoint" in message and "rlfleet convert-checkpoint" in message and "\n" not in message


def test_the_rlfleet_command_names_an_unknown_subcommand():
    out = subprocess.run([sys.executable, "-m", "rlfleet.scripts.cli", "trian"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "rlfleet: error: unknown command 'trian'; did you mean 'train'? (choose from train, regression, serve, evaluate, export, tune, convert-checkpoint, plot)"
