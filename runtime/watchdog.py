"""Ends an embedded Ray instance's processes when its driver dies without shutting it
down (SIGKILL, OOM killer): Ray's own agents were seen surviving a killed driver for
up to 100 s.

    python -m rlfleet.runtime.watchdog DRIVER_PID

Started by :class:`RayRuntime` beside the instance it starts, in its own session; it
notes the driver's Ray descendants while the driver lives (they are re-parented away
once it dies) and SIGKILLs the ones still alive, the same processes by start time, when
the driver is gone. ``RayRuntime.shutdown`` ends it first. Linux only (reads /proc);
elsewhere it exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
import time

RAY_MARKERS = (b"ray::", b"raylet", b"gcs_server", b"/ray/", b"ray/dashboard", b"ray/_private")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()  # field 22: start time in ticks
    except (OSError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _is_ray(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return any(marker in cmdline for marker in RAY_MARKERS)


def ray_descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of the Ray processes below ``pid``."""
    found: dict[int, str] = {}
    todo = _children(pid)
    while todo:
        child = todo.pop()
        todo += _children(child)
        start = _start_time(child)
        if start is not None and child != os.getpid() and _is_ray(child):
            found[child] = start
    return found


def watch(driver: int, interval_s: float = 0.5) -> int:
    """Note the driver's Ray processes while it lives; kill them when it is gone."""
    driver_start = _start_time(driver)
    known: dict[int, str] = {}
    while _start_time(driver) == driver_start and driver_start is not None:
        known.update(ray_descendants(driver))
        time.sleep(interval_s)
    killed = 0
    for pid, start in known.items():
        if _start_time(pid) == start:  # the same process, not a new one with a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


if __name__ == "__main__":
    if not os.path.isdir("/proc/self/task"):
        sys.exit(0)
    watch(int(sys.argv[1]))
