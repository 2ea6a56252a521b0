"""Tests of what an extra installs (``pip install 'rlfleet[tune]'``) skip, naming the
extra, where it is not installed: the README's two commands install none of them.

``pytest.importorskip`` is not enough: it turns only ModuleNotFoundError into a skip, and a
package present without its own optional dependencies raises a plain ImportError (plain
``ray`` has ``ray.tune``, whose import fails for want of pandas). Here any ImportError
means "extra not installed".

CI (.ci/run) runs the suite as the README's commands install it, with
``RLFLEET_EXTRA_SKIPS=FILE``: the id of every test or module skipped here goes to FILE. It
then installs the extras and runs those ids again with the extras named in
``RLFLEET_REQUIRE_EXTRAS`` (comma-separated): a test of a named extra that would skip fails
instead, so a broken extra cannot pass as a skip.
"""

from __future__ import annotations

import functools
import importlib
import os
import pathlib
import sys
from types import ModuleType

import pytest

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
REQUIRED_ENV = "RLFLEET_REQUIRE_EXTRAS"
REASON_MARK = "extra: pip install 'rlfleet["  # in every skip reason given here: tests/conftest.py looks for it
SKIPS_ENV = "RLFLEET_EXTRA_SKIPS"  # a file: tests/conftest.py appends the id of every test skipped here


@functools.lru_cache(maxsize=None)
def _declared_extras() -> frozenset[str] | None:
    if sys.version_info < (3, 11) or not PYPROJECT.exists():  # tomllib; an installed copy of the tests
        return None
    import tomllib

    with PYPROJECT.open("rb") as f:
        return frozenset(tomllib.load(f)["project"]["optional-dependencies"])


def _skip_reason(extra: str, *modules: str) -> str | None:
    """The skip reason when one of ``modules`` does not import (any ImportError), else None."""
    declared = _declared_extras()
    if declared is not None and extra not in declared:
        raise ValueError(f"'{extra}' is not an extra of pyproject.toml: {sorted(declared)}")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            return f"needs the '{extra}' {REASON_MARK}{extra}]' (import {module}: {e})"
    return None


def _required(extra: str) -> bool:
    return extra in {e.strip() for e in os.environ.get(REQUIRED_ENV, "").split(",")}


def require_extra(extra: str, *modules: str) -> ModuleType:
    """Import ``modules`` and return the first one; skip the calling test (or module, at
    module level) naming ``extra`` when one of them does not import."""
    __tracebackhide__ = True  # the skip is reported at the caller's line
    reason = _skip_reason(extra, *modules)
    if reason is not None:
        if _required(extra):
            pytest.fail(f"{REQUIRED_ENV} names '{extra}', but the test {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return importlib.import_module(modules[0])


def needs_extra(extra: str, *modules: str) -> pytest.MarkDecorator:
    """The same as a mark, for a test or one ``pytest.param`` case: tests/conftest.py calls
    :func:`require_extra` before the test runs."""
    return pytest.mark.extra(extra, *modules)
