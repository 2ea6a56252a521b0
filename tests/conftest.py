"""Fixtures shared by the test modules."""

import os

import pytest

from tests.extras import REASON_MARK, SKIPS_ENV, require_extra


def pytest_configure(config):
    config.addinivalue_line("markers", "extra(name, *modules): skipped, naming the extra, without it (tests/extras.py)")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("extra"):
        require_extra(*mark.args)


def _note_extra_skip(report) -> None:
    """The id of a test or module skipped for want of an extra goes to $RLFLEET_EXTRA_SKIPS,
    which .ci/run runs again once it has installed the extras."""
    path = os.environ.get(SKIPS_ENV)
    if not (path and report.skipped):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)  # (file, line, reason)
    if REASON_MARK in reason:
        with open(path, "a", encoding="utf-8") as f:
            f.write(report.nodeid + "\n")


def pytest_collectreport(report):
    _note_extra_skip(report)


def pytest_runtest_logreport(report):
    _note_extra_skip(report)


@pytest.fixture
def shared_ray():
    """One Ray instance for the test (workers can import ``tests.fleet_envs``), shut down
    after it with a check that none of its processes is left. Modules that start Ray once
    for all their tests define a module-scoped fixture of the same name instead."""
    from tests.fleet_envs import start_shared_ray, stop_shared_ray

    start_shared_ray()
    yield
    stop_shared_ray()
