"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture
def shared_ray():
    """One Ray instance for the test (workers can import ``tests.fleet_envs``), shut down
    after it with a check that none of its processes is left. Modules that start Ray once
    for all their tests define a module-scoped fixture of the same name instead."""
    from tests.fleet_envs import start_shared_ray, stop_shared_ray

    start_shared_ray()
    yield
    stop_shared_ray()
