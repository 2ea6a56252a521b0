"""Turn whatever the user hands in as ``env`` into a picklable creator of one env.

Accepted: a name registered here with :func:`register_env`, a gymnasium id (also ids the
user registered with ``gymnasium.register``), a ``gymnasium.Env`` subclass (built as
``cls(**env_config)``), or any callable ``creator(env_config) -> Env``. The creator is a
plain picklable object so remote actors can build their own envs from it.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import sysconfig
from types import ModuleType
from typing import Any, Callable

import gymnasium as gym

_REGISTRY: dict[str, Callable[[dict], gym.Env]] = {}


class EnvNotFoundError(ValueError):
    """The ``env`` given is neither registered, a gymnasium id, an Env class nor a callable."""


class UserModuleError(ValueError):
    """A module of the user's (``--import``) that cannot be imported."""


def import_user_module(spec: str) -> ModuleType:
    """Import the user's module ``spec``, an import name (``mypkg.sims``) or the path of a
    ``.py`` file, so the envs it registers exist here (remote workers get it shipped).
    ``module:function`` calls ``function()`` once imported, for packages that register
    their envs only when asked (``minatar.gym:register_envs``)."""
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        name = os.path.splitext(os.path.basename(path))[0]
        if not os.path.isfile(path):
            raise UserModuleError(f"--import {spec!r}: no such file")
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # what pickles of its functions refer to
        module_spec.loader.exec_module(module)
        return module
    name, _, func = spec.partition(":")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise UserModuleError(f"--import {spec!r}: {e} (give an importable name or the path of a .py file)") from None
    if func and spec not in _CALLED:  # a package whose envs register only when asked (minatar.gym:register_envs)
        register = getattr(module, func, None)
        if not callable(register):
            raise UserModuleError(f"--import {spec!r}: {name} has no function {func!r}")
        register()
        _CALLED.add(spec)
    return module


_CALLED: set[str] = set()  # module:function specs already called in this process


class EnvConfigError(ValueError):
    """``env_config`` holds a key the env's constructor does not take."""


def probe_env(creator: "EnvCreator") -> gym.Env:
    """Build one env to read its spaces; an ``env_config`` key its constructor does not
    take is named with the env (gymnasium says only "unexpected keyword argument")."""
    try:
        return creator()
    except TypeError as e:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if not match or match.group(1) not in creator.env_config:
            raise
        key = match.group(1)
        raise EnvConfigError(f"env {creator.name!r} does not take env_config key {key!r} "
                             f"(its config: {sorted(creator.env_config)})") from None


def register_env(name: str, creator: Callable[[dict], gym.Env]) -> None:
    """Register ``creator(env_config) -> Env`` under ``name`` (usable from the CLI). The
    module that defines the creator goes to remote workers with it (``user_code_modules``)."""
    _REGISTRY[name] = creator


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.realpath(paths[key]) + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib"))


def user_code_modules(env: Any) -> list[ModuleType]:
    """The user's own top-level modules that a remote process needs to build ``env``: the
    module of a registered creator, an Env class or a creator callable, unless it is
    installed (stdlib, site-packages), rlfleet's own, or ``__main__`` (pickled by value).

    Pickles refer to functions and classes by module name; a module imported from beside
    the user's launcher script is not on a remote worker's path (issue 30: runners exited
    3 on ``register_env("corridor", myenv.make)`` run from another directory)."""
    target = _REGISTRY.get(env) if isinstance(env, str) else env
    target = getattr(target, "func", target)  # functools.partial(creator, ...)
    name = getattr(target, "__module__", None)
    if not name or name == "__main__" or name.split(".")[0] in ("rlfleet", "builtins"):
        return []
    top = sys.modules.get(name.split(".")[0])
    path = getattr(top, "__file__", None)
    if top is None or path is None or os.path.realpath(path).startswith(_installed_roots()):
        return []
    return [top]


def registered_envs() -> list[str]:
    """Names usable as ``env``: ours first, then gymnasium's."""
    return sorted(_REGISTRY) + sorted(gym.registry.keys())


def _route_mujoco_warnings() -> None:
    """MuJoCo's own handler prints every model-compiler warning (gymnasium's MuJoCo models
    use attributes MuJoCo 4 deprecates: once per env built, so 8 times per runner) and
    appends it to MUJOCO_LOG.TXT in the working directory. Routed through Python's
    ``warnings`` instead, it is shown once per process and writes no file."""
    import warnings

    import mujoco

    def warn(message: str) -> None:
        warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(warn)


class EnvCreator:
    """A picklable ``() -> Env`` for one env spec and config; ``name`` is for messages."""

    def __init__(self, env: Any, env_config: dict | None = None) -> None:
        self.env = env
        self.env_config = dict(env_config or {})
        self.name = env if isinstance(env, str) else getattr(env, "__name__", type(env).__name__)
        # A creator registered in the driver (say in the user's script) is carried along:
        # a remote runner's process never ran that register_env call.
        self.registered = _REGISTRY.get(env) if isinstance(env, str) else None
        # So is a gymnasium id registered here only (by --import minatar.gym:register_envs):
        # its spec names the entry point, which a remote process can import.
        self.gym_spec = gym.registry.get(env) if isinstance(env, str) and self.registered is None else None

    def __call__(self) -> gym.Env:
        env, cfg = self.env, self.env_config
        if isinstance(env, str):
            registered = self.registered or _registered(env)
            if registered is not None:
                return registered(cfg)
            if str(getattr(gym.registry.get(env), "entry_point", "")).startswith("gymnasium.envs.mujoco"):
                _route_mujoco_warnings()
            # Our runner checks every step against the spaces, so gymnasium's one-off
            # passive checker would only add a wrapper layer to each step.
            spec = env if env in gym.registry or self.gym_spec is None else self.gym_spec
            return without_text(gym.make(spec, disable_env_checker=True, **cfg))
        if inspect.isclass(env):
            return env(**cfg)
        return env(cfg)


def without_text(env: gym.Env) -> gym.Env:
    """``env`` with the text leaves of its Dict observation dropped (MiniGrid's
    ``mission``): a policy network takes arrays, and a string that is one fixed sentence
    per task carries nothing the image does not. Dropped here, in the creator, so that
    fragments, normalisers, serving and export never see a string."""
    space = env.observation_space
    if not isinstance(space, gym.spaces.Dict):
        return env
    keep = [key for key, sub in space.spaces.items() if not _is_text(sub)]
    if len(keep) == len(space.spaces) or not keep:
        return env
    return gym.wrappers.FilterObservation(env, keep)


def _is_text(space: gym.Space) -> bool:
    # MiniGrid's MissionSpace is a Space[str] of its own, not a spaces.Text
    if isinstance(space, gym.spaces.Text):
        return True
    kind = getattr(space.dtype, "kind", None)
    return type(space) not in _ARRAY_SPACES and space.shape is None and (kind is None or kind == "U") \
        and isinstance(space.sample(), str)


_ARRAY_SPACES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary,
                 gym.spaces.Dict, gym.spaces.Tuple)


def shippable(module: ModuleType) -> bool:
    """Whether ``module`` must be shipped to remote workers: the user's own code, not an
    installed package (a remote worker imports those itself)."""
    path = getattr(module, "__file__", None)
    return path is not None and not os.path.realpath(path).startswith(_installed_roots())


def make_env_creator(env: Any, env_config: dict | None = None) -> EnvCreator:
    """Validate ``env`` and return its creator; unknown names name the closest valid one."""
    if isinstance(env, str):
        _registered(env)  # resolve lazily registered families (ALE/...) before the creator is built
    if env is None:
        raise EnvNotFoundError("no env given: set `env` to a gymnasium id, an Env class or a creator")
    if isinstance(env, str):
        if _registered(env) is None and env not in gym.registry:
            close = difflib.get_close_matches(env, registered_envs(), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise EnvNotFoundError(f"unknown env {env!r}{hint}")
    elif inspect.isclass(env):
        if not issubclass(env, gym.Env):
            raise EnvNotFoundError(f"env class {env.__name__} is not a gymnasium.Env subclass")
    elif not callable(env):
        raise EnvNotFoundError(f"env must be a str, an Env class or a callable, got {type(env).__name__}")
    return EnvCreator(env, env_config)


def _registered(name: str) -> Callable[[dict], gym.Env] | None:
    """Our creator for ``name``, or None. An ``ALE/...`` id gets ``envs.atari.make_atari``
    (the DQN preprocessing) on first use, in whichever process asks."""
    if name not in _REGISTRY and name.startswith("ALE/"):
        from rlfleet.envs.atari import register_atari_envs  # needs ale_py: imported only when asked for

        register_atari_envs([name])
    return _REGISTRY.get(name)


# The test envs are usable by name everywhere, the command line included
# (`--env rlfleet/Flaky-v0 --set env_config={fail_every: 50}`).
def _register_test_envs() -> None:
    import functools

    from rlfleet.envs.testing import TEST_ENVS, make_test_env

    for name in TEST_ENVS:
        register_env(name, functools.partial(make_test_env, name))


_register_test_envs()
