"""What an Algorithm puts into a checkpoint and takes back out (rl/checkpoint.py writes
and reads the files): its state, the restore that continues training, the load that only
acts (serving, evaluation), the model card, and the conversion of format-2 checkpoints."""

from __future__ import annotations

import collections
import math
import os
import random
import shlex
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
import tree
import yaml

from rlfleet.rl.checkpoint import (BEST_METRIC, FORMAT, STATE, TRAINER, WEIGHTS, CheckpointError, copy_checkpoint,
                                   load_checkpoint, read_old_checkpoint, save_checkpoint, to_json)
from rlfleet.rl.models.module import ModuleSpec, spec_to_dict


def _spec_state(spec: Any) -> dict[str, Any] | None:
    """The module spec(s) as plain data: one, ``{"policies": {id: spec}}`` (multi-agent),
    or None (an LM, which serving rebuilds from its config)."""
    if isinstance(spec, dict):
        return {"policies": {pid: spec_to_dict(s) for pid, s in spec.items()}}
    return spec_to_dict(spec) if isinstance(spec, ModuleSpec) else None


def _shapes(weights: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of one module's weights, or ``policy/name`` of one per policy."""
    if all(isinstance(v, dict) for v in weights.values()) and weights:
        return {f"{pid}/{k}": shape for pid, w in weights.items() for k, shape in _shapes(w).items()}
    return {k: tuple(v.shape) for k, v in weights.items()}


def _module_weights(learner_state: dict[str, Any]) -> dict[str, Any]:
    if "policies" in learner_state:
        return {pid: s["module"] for pid, s in learner_state["policies"].items()}
    return learner_state["module"]


def _to_torch(state: Any) -> Any:
    return tree.map_structure(lambda x: torch.from_numpy(x) if isinstance(x, np.ndarray) else x, state)


def _to_numpy(state: Any) -> Any:
    return tree.map_structure(lambda x: x.numpy() if isinstance(x, torch.Tensor) else x, state)


# -- the state --------------------------------------------------------------------------


def algorithm_state(algo: Any) -> dict[str, Any]:
    """``Algorithm.get_state``: everything a checkpoint holds (rl/checkpoint.py decides
    which file each part goes to)."""
    return {
        "format": FORMAT,
        "algo": algo.config.algo_name,
        "config": algo.config.to_dict(),
        "learner": algo.learner_group.get_state(),
        "connector": _to_numpy(algo.connector.get_state()) if algo.connector is not None else None,
        "reward_normalizer": algo.reward_normalizer.get_state() if algo.reward_normalizer is not None else None,
        # What rebuilds the policy without its env (serving, export; rl/inference.py).
        "module_spec": _spec_state(algo.module_spec),
        **algo.checkpointed_progress(),
        "rng": {"python": random.getstate(), "numpy": _to_torch(np.random.get_state()), "torch": torch.get_rng_state()},
    }


def progress_state(algo: Any) -> dict[str, Any]:
    """``Algorithm.progress_state``: the counters and episode windows, as they are now."""
    return {
        "counters": {
            "iteration": algo.iteration,
            "env_steps": algo.env_steps,
            "episodes": algo.episodes,
            "num_env_errors": algo.num_env_errors,
            "num_stale_episodes": algo.num_stale_episodes,
            "weights_version": algo.weights_version,
            "weight_sync_s": algo.env_runner_group.last_sync_s,
            "time_s": algo.time_before_restore + time.perf_counter() - algo.started,
            "runner_env_steps": dict(algo.runner_env_steps),
            "best_return_mean": algo.best_return_mean,
            # the best evaluation return so far (checkpoint_best; scripts/tools/experiment.py run_until)
            "best_evaluation_return": algo.best_evaluation_return,
        },
        "episode_returns": list(algo.episode_returns),
        "episode_lengths": list(algo.episode_lengths),
        "custom_metrics": {k: list(v) for k, v in algo.custom_metrics.items()},
    }


def save(algo: Any, path: str, copies: tuple[str, ...] = ()) -> list[str]:
    """Write ``algo``'s state as checkpoint directory ``path``, and the same state into each
    of ``copies`` (linked files, their own model card); the directories written."""
    state = algo.get_state()
    argv = list(sys.argv)

    def card(where: str) -> str:
        return model_card(state, path=where, result=algo.last_result, argv=argv, algorithm=type(algo))

    written = [save_checkpoint(path, state, card=card(path))]
    for copy in copies:
        written.append(copy_checkpoint(written[0], copy, card=card(copy)))
    return written


def restore(algo: Any, path: str, *, training: bool = True, state: dict[str, Any] | None = None) -> None:
    """``Algorithm.restore`` (``training``: weights, optimisers, connectors, counters, RNG and
    the algorithm's own state, from every file), or, without ``training``, what acting needs
    (weights, connectors, counters) from state.json and model.safetensors alone: nothing is
    unpickled. Refused, changing nothing, when it does not fit ``algo``."""
    if state is None:
        state = load_checkpoint(path, training=training)
    if state["algo"] != algo.config.algo_name:
        raise CheckpointError(f"checkpoint {path!r} is for {state['algo']!r}, not {algo.config.algo_name!r}")
    if (state["connector"] is None) != (algo.connector is None):
        raise CheckpointError(f"checkpoint {path!r}: normalize_obs differs from this config")
    if (state.get("reward_normalizer") is None) != (algo.reward_normalizer is None):
        raise CheckpointError(f"checkpoint {path!r}: normalize_rewards differs from this config")
    saved = _shapes(_module_weights(state["learner"]))
    ours = _shapes(algo.learner_group.get_weights())
    if saved != ours:
        diff = sorted(set(saved.items()) ^ set(ours.items()))[0][0]
        raise CheckpointError(
            f"checkpoint {path!r} does not fit this config's model (first difference: {diff!r}); "
            "was it saved with other hidden_sizes or another env?"
        )
    if training:
        algo.learner_group.set_state(state["learner"])
    else:  # the learner's own optimisers and RNG stay; only the module's weights change
        algo.learner_group.set_state(_with_weights(algo.learner_group.get_state(), state["learner"]))
    if algo.connector is not None:
        algo.connector.set_state(_to_numpy(state["connector"]))  # reaches the runners below
    if algo.reward_normalizer is not None:
        algo.reward_normalizer.set_state(state["reward_normalizer"])
        algo.reward_normalizer.returns.clear()  # the restored run starts fresh episodes
    c = state["counters"]
    algo.iteration, algo.env_steps, algo.episodes = c["iteration"], c["env_steps"], c["episodes"]
    algo.num_env_errors = c.get("num_env_errors", 0)
    algo.num_stale_episodes = c.get("num_stale_episodes", 0)
    algo.weights_version = c["weights_version"]
    algo.runner_env_steps = {int(k): int(v) for k, v in c.get("runner_env_steps", {}).items()}
    algo.best_return_mean = float(c.get("best_return_mean", math.nan))
    algo.best_evaluation_return = float(c.get("best_evaluation_return", math.nan))
    algo.logger.drop_after(algo.iteration)
    algo.time_before_restore, algo.started = c["time_s"], time.perf_counter()
    algo.episode_returns.clear()
    algo.episode_returns.extend(state["episode_returns"])
    algo.episode_lengths.clear()
    algo.episode_lengths.extend(state["episode_lengths"])
    algo.custom_metrics = {k: collections.deque(v, maxlen=algo.config.metrics_smoothing_episodes)
                           for k, v in state.get("custom_metrics", {}).items()}
    if training:
        random.setstate(state["rng"]["python"])
        np.random.set_state(_to_numpy(state["rng"]["numpy"]))
        torch.set_rng_state(state["rng"]["torch"])
        algo.restore_own_state(state, path)
    algo.sync_weights(new_version=False)


def _with_weights(current: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """A learner state: ``current``'s, with ``saved``'s module weights."""
    if "policies" in current:
        return {"policies": {pid: _with_weights(s, saved["policies"][pid]) for pid, s in current["policies"].items()}}
    return {**current, "module": saved["module"]}


def from_checkpoint(cls: Any, path: str, overrides: dict[str, Any]) -> Any:
    """``Algorithm.from_checkpoint``: the algorithm rebuilt in this process, writing nothing,
    with the checkpoint's weights, connectors and counters (not its optimisers or RNG:
    this is for acting; ``restore`` continues training)."""
    state = load_checkpoint(path)
    if state["algo"] != cls.config_class.algo_name:
        raise CheckpointError(f"checkpoint {path!r} is for {state['algo']!r}, not {cls.config_class.algo_name!r}")
    # in this process, writing nothing: no logs, videos, checkpoints or the run's callbacks
    local = {"logdir": None, "log_to_console": False, "num_env_runners": 0, "num_learners": 0, "callbacks": [],
             "video_every": 0, "keep_checkpoints": 0, "checkpoint_best": False}
    config = cls.config_class.from_dict({**state["config"], **local, **overrides}, source=path)
    algo = cls(config)
    try:
        restore(algo, path, training=False, state=state)
    except BaseException:
        algo.stop()
        raise
    return algo


# -- the model card -----------------------------------------------------------------------


def model_card(state: dict[str, Any], *, path: str, result: dict[str, Any] | None, argv: list[str] | None,
               algorithm: type | None = None) -> str:
    """README.md of a checkpoint directory: what it is, how it was made (``argv``), how well
    it did (``result``: the last progress row), and how to load it (an LM through its
    ``algorithm`` class)."""
    config, counters = state["config"], state["counters"]
    algo, env = state["algo"], str(config.get("env"))
    result = result or {}
    returns = state.get("episode_returns") or []
    final = result.get("episode_return_mean", float(np.mean(returns)) if returns else math.nan)
    rows = [(f"training, last {config.get('metrics_smoothing_episodes')} episodes (`episode_return_mean`)", final),
            ("training, best window so far (`episode_return_best`)",
             result.get("episode_return_best", counters.get("best_return_mean", math.nan)))]
    if BEST_METRIC in result:
        rows.append((f"evaluation, this iteration (`{BEST_METRIC}`)", result[BEST_METRIC]))
    if not math.isnan(counters.get("best_evaluation_return", math.nan)):
        rows.append((f"evaluation, best so far (`{BEST_METRIC}`)", counters["best_evaluation_return"]))
    spec = state.get("module_spec")
    policies = sorted((spec or {}).get("policies", {}))
    d = shlex.quote(path)
    restore = f"rlfleet train --algo {algo} --env {shlex.quote(env)} --restore {d}"
    if spec is None:  # an LM: completions, no ONNX policy
        use = [f"rlfleet serve --checkpoint {d}            # POST /complete {{\"prompts\": [...]}}",
               f"{restore}   # continue training (with the run's flags)"]
        module, name = (algorithm.__module__, algorithm.__name__) if algorithm else ("rlfleet.algorithms", "...")
        python = [f"from {module} import {name}",
                  f"algo = {name}.from_checkpoint({path!r})",
                  "print(algo.complete([\"a prompt\"]))"]
    else:
        pid = f" --policy-id {policies[0]}" if len(policies) > 1 else ""
        use = [f"rlfleet serve --checkpoint {d}{pid}            # POST /act {{\"obs\": ...}}",
               *([] if pid else [f"rlfleet evaluate --checkpoint {d} --episodes 10"]),
               f"rlfleet export --checkpoint {d}{pid}           # ONNX, normalisation inside",
               f"{restore}   # continue training (with the run's flags)"]
        python = ["from rlfleet.rl.inference import Policy",
                  f"policy = Policy.load({path!r}{f', policy_id={policies[0]!r}' if pid else ''})",
                  "actions = policy.act(observations)[\"actions\"]   # a batch (B, ...)"]
    lines = [
        f"# {algo} on {env}", "",
        f"An rlfleet checkpoint (format {FORMAT}): iteration {counters['iteration']}, "
        f"{counters['env_steps']} env steps, weights version {counters['weights_version']}"
        + (f", policies {', '.join(policies)}" if policies else "") + ".", "",
        "| return | value |", "|---|---|", *[f"| {name} | {_number(v)} |" for name, v in rows], "",
        "## How it was trained", "",
        f"    {shlex.join(argv) if argv else '(not recorded)'}", "",
        "```yaml", yaml.safe_dump(to_json(config), sort_keys=True).rstrip(), "```", "",
        "## Files", "",
        f"- `{STATE}`: algorithm, config, module spec, counters, normaliser statistics (JSON)",
        f"- `{WEIGHTS}`: the weights" + (" (keys `<policy id>/<name>`)" if policies else ""),
        f"- `{TRAINER}`: optimisers, RNG and the like; read only to continue training "
        "(serving, export and evaluation unpickle nothing)", "",
        "## Use it", "",
        *[f"    {line}" for line in use], "",
        *[f"    {line}" for line in python], "",
    ]
    if policies and len(policies) > 1:
        lines += ["Several policies: serve them all without `--policy-id` (requests name theirs); export and "
                  "`Policy.load` take one at a time.", ""]
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "n/a" if not isinstance(value, (int, float)) or math.isnan(value) else f"{value:.2f}"


# -- format 2 -------------------------------------------------------------------------------


def convert_checkpoint(source: str, path: str, *,
                       algorithm_of: Callable[[str], type | None] = lambda name: None) -> str:
    """A format-2 ``checkpoint.pt`` (rlfleet 0.2) written again as checkpoint directory
    ``path``, which must be new (or empty); the old file is left as it is. ``algorithm_of``
    (algorithm name -> its class) names the loader in the model card."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise CheckpointError(f"{path!r} exists: give a new directory")
    state = read_old_checkpoint(source)
    algorithm = algorithm_of(state["algo"])
    state["format"] = FORMAT
    state["connector"] = _to_numpy(state.get("connector"))
    argv = ["rlfleet", "convert-checkpoint", source, path]
    return save_checkpoint(path, state, card=model_card(state, path=path, result=None, argv=argv, algorithm=algorithm))
