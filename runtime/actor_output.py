"""What an actor process writes to stdout and stderr, handed back with its calls' replies.

A lean embedded Ray instance (``RayRuntime(lean=True)``) starts without Ray's log monitor,
the process that tails every worker's log files and publishes them to the driver (about
50 MiB). Its actors' output reaches the driver this way instead: the actor's file
descriptors 1 and 2 become pipes, a thread copies what arrives to the log files they
pointed at (Ray's ``worker-*.out``/``.err`` keep everything) and keeps a bounded copy,
which the next reply carries back, and the driver prints each line under the actor's
name. Output written between calls comes with the next one; an actor that dies takes its
last unsent output with it, which its log file still holds.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from dataclasses import dataclass
from typing import Any, TextIO

LIMIT_BYTES = 64 * 1024  # kept per stream between two replies; the log file has the rest
RAY_MARKERS = (":actor_name:", ":task_name:", ":job_id:")  # Ray's lines for its own log monitor


@dataclass
class Output:
    """What one actor wrote since its last reply."""

    stdout: str
    stderr: str
    dropped_bytes: int
    pid: int


@dataclass
class WithOutput:
    """A call's return value and the output that came with it."""

    value: Any
    output: Output


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError:  # the log file is gone: the kept copy still reaches the driver
            return


class OutputCapture:
    """Redirects this process's stdout and stderr (file descriptors 1 and 2) through pipes
    from construction on; :meth:`take` returns what arrived since the last take."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pipes: dict[int, tuple[int, int]] = {}  # fd -> (read end, the fd's former target)
        self.kept = {1: bytearray(), 2: bytearray()}
        self.dropped = 0
        for fd in (1, 2):
            (sys.stdout if fd == 1 else sys.stderr).flush()
            former = os.dup(fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            os.set_blocking(read_end, False)
            self.pipes[fd] = (read_end, former)
        threading.Thread(target=self._pump, name="rlfleet-actor-output", daemon=True).start()

    def _drain(self, fd: int) -> None:
        """Everything the pipe of ``fd`` holds now, to its log file and the kept copy (the
        caller holds the lock, so chunks are kept in the order they were written)."""
        read_end, former = self.pipes[fd]
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            _write_all(former, chunk)
            kept = self.kept[fd]
            room = max(0, LIMIT_BYTES - len(kept))
            kept += chunk[:room]
            self.dropped += len(chunk) - min(room, len(chunk))

    def _pump(self) -> None:
        # Keeps the pipes flowing between calls: a writer never blocks on a full pipe.
        fds = {read_end: fd for fd, (read_end, _) in self.pipes.items()}
        while True:
            ready, _, _ = select.select(list(fds), [], [])
            with self.lock:
                for read_end in ready:
                    self._drain(fds[read_end])

    def take(self) -> Output | None:
        """Output since the last take (Python's own buffers flushed first), or None."""
        sys.stdout.flush()
        sys.stderr.flush()
        with self.lock:
            for fd in self.pipes:
                self._drain(fd)
            texts = [bytes(self.kept[fd]).decode("utf-8", errors="replace") for fd in (1, 2)]
            dropped, self.dropped = self.dropped, 0
            for kept in self.kept.values():
                kept.clear()
        stdout, stderr = (_without_ray_markers(t) for t in texts)
        return Output(stdout, stderr, dropped, os.getpid()) if stdout or stderr or dropped else None


def _without_ray_markers(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(RAY_MARKERS))


def print_output(output: Output, prefix: str, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
    """Each line under ``prefix`` (``(EnvRunner 1 pid=4242)``), stdout's to stdout and
    stderr's to stderr, as Ray's log monitor would print them."""
    for text, stream in ((output.stdout, stdout or sys.stdout), (output.stderr, stderr or sys.stderr)):
        if text:
            stream.write("".join(f"{prefix} {line}\n" for line in text.splitlines()))
            stream.flush()
    if output.dropped_bytes:
        (stderr or sys.stderr).write(f"{prefix} ... {output.dropped_bytes} more bytes of output are only in its "
                                     "Ray log file\n")
