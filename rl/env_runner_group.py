"""The fleet of env runners, seen through the runtime (in-process or Ray actors)."""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym

from rl.batch import Fragment
from rl.connectors import MeanStdFilter
from rl.env_runner import EnvRunner
from rl.module import ModuleSpec
from runtime import ObjectRef, Runtime


class EnvRunnerFactory:
    """Picklable ``factory(index) -> EnvRunner``: remote actors build their own runner."""

    def __init__(
        self,
        *,
        env_creator: Callable[[], gym.Env],
        env_name: str,
        module_spec: ModuleSpec,
        num_envs: int,
        fragment_length: int,
        seed: int,
        vectorize_mode: str,
        normalize_obs: bool,
    ) -> None:
        self.kwargs = dict(
            env_creator=env_creator,
            env_name=env_name,
            module_spec=module_spec,
            num_envs=num_envs,
            fragment_length=fragment_length,
            vectorize_mode=vectorize_mode,
            normalize_obs=normalize_obs,
        )
        self.seed = seed

    def __call__(self, index: int) -> EnvRunner:
        # Runners get disjoint seed ranges: env i of runner k is seeded seed + 1000 k + i.
        return EnvRunner(**self.kwargs, seed=self.seed + 1000 * index, index=index)


class EnvRunnerGroup:
    def __init__(self, runtime: Runtime, factory: EnvRunnerFactory, count: int) -> None:
        self.runtime = runtime
        self.group = runtime.create_group(factory, count)

    @property
    def size(self) -> int:
        return self.group.size

    def sample(self) -> list[Fragment]:
        return [r.value for r in self.group.call("sample") if r.ok]

    def sync_weights(self, weights_ref: ObjectRef, version: int) -> None:
        """Every runner receives the same object-store reference, resolved once each."""
        self.group.call("set_weights", weights_ref, version)

    def sync_filters(self, driver_filter: MeanStdFilter) -> None:
        """Merge what each runner saw into the driver's filter, then send the merged state."""
        deltas = [r.value for r in self.group.call("pop_filter_delta") if r.ok]
        driver_filter.merge_deltas(deltas)
        self.group.call("set_filter_state", self.runtime.put(driver_filter.get_state()))

    def call(self, method: str, *args: Any) -> list[Any]:
        return [r.value for r in self.group.call(method, *args) if r.ok]

    def stop(self) -> None:
        self.group.shutdown()
