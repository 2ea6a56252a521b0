"""What an actor process writes to stdout and stderr, handed back with its calls' replies.

A lean embedded Ray instance (``RayRuntime(lean=True)``) starts without Ray's log monitor,
the process that tails every worker's log files and publishes them to the driver (about
50 MiB). Its actors' output reaches the driver this way instead: file descriptors 1 and 2
stay on Ray's ``worker-*.out``/``.err`` files, so those keep everything, a crash's
traceback included, and nothing a writer does can block; each reply carries what the
files gained since the last one (read back through their own descriptors), and the driver
prints it line by line under the actor's name. Output written between calls (a thread, a
child process) comes with the next reply; a line still being written waits for its end.
"""

from __future__ import annotations

import codecs
import os
import stat
import sys
from dataclasses import dataclass
from typing import Any, TextIO

LIMIT_BYTES = 64 * 1024  # the newest bytes kept per stream between two replies; the log file has the rest
RAY_MARKERS = (":actor_name:", ":task_name:", ":job_id:")  # Ray's lines for its own log monitor


@dataclass
class Output:
    """What one actor wrote since its last reply."""

    stdout: str
    stderr: str
    dropped_bytes: int
    pid: int

    def cut_line(self) -> str:
        return f"[{self.dropped_bytes} earlier bytes of output are only in its Ray log file]" if self.dropped_bytes else ""

    def text(self) -> str:
        return (self.cut_line() + "\n" if self.dropped_bytes else "") + self.stdout + self.stderr


@dataclass
class WithOutput:
    """A call's return value and the output that came with it."""

    value: Any
    output: Output


class _Stream:
    """The file behind one file descriptor, read from where the last take stopped."""

    def __init__(self, fd: int) -> None:
        self.reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)  # the same file, opened for reading
        self.offset = os.fstat(self.reader).st_size
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.partial = ""  # the start of a line whose end has not been written yet

    def take(self, final: bool) -> tuple[str, int]:
        """Whole lines written since the last take (all of it when ``final``), and the
        number of bytes skipped to keep the newest ``LIMIT_BYTES``."""
        size = os.fstat(self.reader).st_size
        if size < self.offset:  # truncated or rotated: start again from its beginning
            self.offset, self.partial = 0, ""
            self.decoder.reset()
        dropped = max(0, size - self.offset - LIMIT_BYTES)
        if dropped:  # the newest output is the useful part; a cut line is not worth keeping
            self.offset += dropped
            self.decoder.reset()
            self.partial = ""
        data = os.pread(self.reader, size - self.offset, self.offset) if size > self.offset else b""
        self.offset += len(data)
        text = self.partial + self.decoder.decode(data, final=final)
        if dropped:
            text = text.partition("\n")[2]
        if final:
            self.partial = ""
            return text, dropped
        head, newline, self.partial = text.rpartition("\n")
        return head + newline, dropped


class OutputCapture:
    """Notes where this process's stdout and stderr files end at construction;
    :meth:`take` returns what they gained since. Where either is no regular file (a
    terminal, a pipe), there is nothing to read back and :meth:`create` returns None."""

    def __init__(self) -> None:
        self.streams = [_Stream(fd) for fd in (1, 2)]

    @staticmethod
    def create() -> OutputCapture | None:
        try:
            if all(stat.S_ISREG(os.fstat(fd).st_mode) for fd in (1, 2)):
                return OutputCapture()
        except OSError:  # a closed descriptor
            pass
        return None

    def take(self, final: bool = False) -> Output | None:
        """Output since the last take (Python's own buffers flushed first), or None."""
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):  # closed by user code: what it held is gone
                pass
        try:
            (stdout, cut_out), (stderr, cut_err) = (s.take(final) for s in self.streams)
        except OSError:
            return None
        stdout, stderr = _without_ray_markers(stdout), _without_ray_markers(stderr)
        dropped = cut_out + cut_err
        return Output(stdout, stderr, dropped, os.getpid()) if stdout or stderr or dropped else None


def _without_ray_markers(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(RAY_MARKERS))


def print_output(output: Output, prefix: str, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
    """Each line under ``prefix`` (``(EnvRunner 1 pid=4242)``), stdout's to stdout and
    stderr's to stderr, as Ray's log monitor would print them."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if output.dropped_bytes:
        err.write(f"{prefix} {output.cut_line()}\n")
    for text, stream in ((output.stdout, out), (output.stderr, err)):
        if text:
            stream.write("".join(f"{prefix} {line}\n" for line in text.splitlines()))
            stream.flush()
