"""The lean start of an embedded Ray instance for a training run: Ray's head without the
processes a single-node run does not use (runtime/ray_backend.py starts it through
:func:`lean_start`).

It patches private names of Ray for the duration of ``ray.init`` only. pyproject.toml pins
Ray below its next minor version, tests/runtime/test_private_deps.py fails by name when one
is gone, and at run time a missing one falls back to Ray's own start with one line.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import ray

# Ray's head starts, besides gcs_server and raylet, an API server (the dashboard process,
# minimal without the dashboard: the state API and job submission), the autoscaler
# monitor and the log monitor. A training run on an embedded single-node instance uses
# the first two not at all, and the third only to print its actors' output, which their
# replies carry instead (runtime/actor_output.py): together about 180 MiB PSS, and
# ray.init waits about 1 s for the API server to publish its address. ray.init has no
# switch for them; Node starts each through one method, skipped here. The cost: Ray's
# dashboard agent, which stays (the raylet needs it), looks for the API server's address
# once a second and logs a failure each time to its own log file (about 1 MB an hour).
# The agent also starts minimal (no HTTP server, no metrics export, which only the
# dashboard reads): Ray decides that by importing the dashboard's optional dependencies
# (aiohttp, opentelemetry, pydantic) in the driver, 0.3 s of the start thread's time while
# the main thread imports torch; the lean start answers that question without them.
_HEAD_SERVICES = ("start_api_server", "start_monitor", "start_log_monitor")
_lean_lock = threading.Lock()
lean_instance: list[str] = []  # the GCS address of the instance this process started lean
_fallback_noted: list[str] = []  # what the one line below named, once a process


def note_fallback(missing: Sequence[str]) -> None:
    """Where this Ray lacks a private name the lean start patches (tests/runtime/test_private_deps.py
    lists them), that part starts as Ray starts it: said in one line, once a process."""
    if missing and not _fallback_noted:
        _fallback_noted.extend(missing)
        print(f"rlfleet: Ray {ray.__version__} lacks {', '.join(missing)}; that part of the lean start falls back "
              "to Ray's normal start (pyproject.toml pins the Ray versions rlfleet is tested with)",
              file=sys.stderr, flush=True)


def node_lookup_without_second_polls(get_node: Callable[..., Any]) -> Callable[..., Any]:
    """Ray's start looks its new node up through a call that, until the raylet has
    registered, retries once a second: up to a second, often several under load, of every
    start. This one asks the GCS for its node list every 20 ms first, then makes Ray's
    call, which then finds the node at once. Any failure leaves the wait to Ray's call."""

    def lookup(gcs_address: str, node_id: str) -> Any:
        try:
            from ray._raylet import GcsClient

            client = GcsClient(address=gcs_address)
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                if any(node.hex() == node_id for node in client.get_all_node_info(timeout=1)):
                    break
                time.sleep(0.02)
        except (ImportError, AttributeError, TypeError):  # this Ray's client is another shape
            note_fallback(["ray._raylet.GcsClient.get_all_node_info"])
        except Exception:  # whatever else the GCS answers, Ray's own lookup decides
            pass
        return get_node(gcs_address, node_id)

    return lookup


@contextlib.contextmanager
def lean_start(lean: bool) -> Iterator[None]:
    """Within the block, a Ray head node starts without its API server, autoscaler monitor
    and log monitor, its dashboard agent minimal, and its start looks its node up without
    waiting whole seconds. A Ray that lacks one of the patched names starts that part as
    it would, and one line says so (:func:`note_fallback`)."""
    ray_node = None
    if lean:
        try:
            from ray._private import services as ray_services, utils as ray_utils, node as ray_node  # node once all import
        except ImportError as e:
            note_fallback([f"ray._private.node, services or utils ({e})"])
    if ray_node is None:
        yield
        return
    patches = [(ray_node.Node, "ray._private.node.Node", name, lambda self, *args, **kwargs: None)
               for name in _HEAD_SERVICES]
    patches.append((ray_utils, "ray._private.utils", "get_dashboard_dependency_error",
                    lambda: ImportError("the lean start runs Ray's dashboard agent minimal")))
    patches.append((ray_services, "ray._private.services", "get_node",
                    node_lookup_without_second_polls(getattr(ray_services, "get_node", None))))
    with _lean_lock:
        saved, missing = [], []
        for owner, where, name, stand_in in patches:
            if not callable(getattr(owner, name, None)):
                missing.append(f"{where}.{name}")
                continue
            saved.append((owner, name, owner.__dict__.get(name)))
            setattr(owner, name, stand_in)
        note_fallback(missing)
        try:
            yield
        finally:
            for owner, name, original in saved:
                if original is None:  # inherited: dropping the stand-in brings it back
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)
