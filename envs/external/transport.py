"""Connection mechanics of the listening side: one thread serves every peer over
non-blocking sockets, and one hostile peer cannot stall or kill it for the others.

``PeerServer`` owns the listener, the selector and the serve loop; it reads length-prefixed
frames (protocol.py) and writes replies, and knows nothing of what a message means. A
subclass (server.py's ``ExternalServer``) handles each message (``_handle``), answers the
requests a pass of the loop collected in one batch (``_answer``), and drops what it kept
for a peer that goes away (``_discard``).

Why the loop cannot be stalled or killed by one peer: whatever a peer's messages raise
closes that connection only (with an ``error`` reply where it can still be sent); sockets
are non-blocking and replies wait in a bounded per-connection outbox that the selector
flushes; each peer gets a bounded turn of messages per pass of the loop; a refused peer
lingers briefly so its error reply gets out; and fault lines in the log are throttled.
"""

from __future__ import annotations

import selectors
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable

from rlfleet.envs.external.protocol import MAX_FRAME, ProtocolError, pack, unpack

OUTBOX_LIMIT = 4 << 20
"""Unsent reply bytes one connection may hold (4 MiB) before it is dropped. A reply is tens
of bytes, except a policy for client-side inference (one ONNX model, queued whole while the
outbox is under the limit); a peer that lets this much pile up is not reading, and keeping
its replies would grow memory without bound."""
READ_CHUNK = 256 << 10
"""Bytes read from one peer per turn: a fast sender cannot flood this side's memory (TCP
makes it wait), and a 16 MiB frame still arrives in a few dozen turns."""
MESSAGES_PER_TURN = 8
"""Messages handled from one peer per pass of the loop. A simulator sends one or two
between replies; a peer that pipelines thousands waits its turn instead of making the
others wait for all of them."""
LINGER_S = 1.0
"""How long a refused connection stays open for its error reply to get out. Closing a
socket that still holds unread requests resets it, and the reset can destroy the reply."""
LOG_EVERY_S = 1.0
"""At most one fault line per this many seconds: a hostile peer can fault thousands of
times a second, and the run's log must stay readable (the counters keep every fault)."""


class Peer:
    """One connection's state as the transport sees it; a subclass adds what its messages build."""

    def __init__(self, sock: socket.socket, address: Any) -> None:
        self.sock, self.address = sock, address
        self.buffer = bytearray()  # received bytes not yet handled
        self.outbox = bytearray()  # reply bytes the socket has not taken yet
        self.events = selectors.EVENT_READ  # what the selector watches for this socket
        self.closing_at: float | None = None  # refused: the socket closes by then
        self.welcomed = False  # said a valid hello; refused if not within hello_timeout_s
        self.opened = time.monotonic()


class PeerServer:
    """Serves peers on ``host:port`` from a background thread (see the module doc). The
    subclass sets its own state after this constructor, then calls ``_start``."""

    peer_type: type[Peer] = Peer  # what ``_accept`` builds for each connection

    def __init__(self, *, host: str, port: int, label: str, hello_timeout_s: float) -> None:
        self.label, self.hello_timeout_s = label, hello_timeout_s
        self.lock = threading.Condition()  # guards ``peers`` and whatever the subclass shares with other threads
        self.listener = socket.create_server((host, port), reuse_port=False, backlog=256)
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()[:2]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.peers: dict[socket.socket, Peer] = {}  # the live connections
        self.lingering: dict[socket.socket, Peer] = {}  # refused ones, flushing their error reply
        self.backlog: set[Peer] = set()  # peers with whole frames left over from their last turn
        self.unflushed: set[Peer] = set()  # peers with replies queued in this pass
        self.refused_connections = 0  # closed for a message they sent (with an error reply)
        self.dropped_slow_readers = 0  # closed for leaving over OUTBOX_LIMIT bytes of replies unread
        self.logged_at, self.unlogged = -LOG_EVERY_S, 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, name=label, daemon=True)

    def _start(self) -> None:
        self.thread.start()
        print(f"{self.label} listening on {self.address[0]}:{self.address[1]}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        for peer in [*self.peers.values(), *self.lingering.values()]:
            peer.sock.close()
        self.listener.close()
        self.selector.close()

    # -- the subclass's hooks ---------------------------------------------------------------
    def _handle(self, peer: Peer, message: dict[str, Any], pending: list[tuple[Peer, Any]]) -> None:
        """Acts on one message: replies with ``_send``, or appends a request to ``pending``
        for this pass's ``_answer``. Raises ProtocolError to refuse the peer."""
        raise NotImplementedError

    def _answer(self, pending: list[tuple[Peer, Any]]) -> None:
        """Answers the requests this pass of the loop collected, in one batch."""
        raise NotImplementedError

    def _discard(self, peer: Peer) -> None:
        """The peer is gone: drop what was kept for it (caller holds the lock)."""
        raise NotImplementedError

    # -- the serving thread ------------------------------------------------------------------
    def _serve(self) -> None:
        while self.running:
            pending: list[tuple[Peer, Any]] = []
            turns = dict.fromkeys(self.backlog)  # an ordered set: peers with frames left wait for no event
            self.backlog = set()
            for key, events in self.selector.select(timeout=0 if turns else 0.05):
                peer = key.data
                if peer is None:
                    self._accept()
                    continue
                if events & selectors.EVENT_WRITE:
                    self._guarded(peer, self._flush, peer)
                if events & selectors.EVENT_READ:
                    self._guarded(peer, self._receive, peer)
                    turns[peer] = None
            for peer in turns:
                self._guarded(peer, self._take_turn, peer, pending)
            if pending:
                self._answer(pending)
            for peer in self.unflushed:  # once a pass: a turn's replies leave in one send
                self._guarded(peer, self._flush, peer)
            self.unflushed = set()
            self._expire()

    def _guarded(self, peer: Peer, step: Callable[..., None], *args: Any) -> None:
        """Runs one peer's step; whatever it raises refuses that peer only. A ProtocolError
        names the peer's fault; anything else is this side failing on it, and the peer hears
        the exception's one line."""
        try:
            step(*args)
        except ProtocolError as e:
            self._refuse(peer, str(e))
        except Exception as e:  # noqa: BLE001 - the serving thread must outlive any one peer's input
            self._refuse(peer, f"this runner failed serving this connection: {type(e).__name__}: {e}")

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:  # a peer that left before accept, or no file descriptors left
                self._log(f"accept failed: {e}")
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = self.peer_type(sock, address)
            self.peers[sock] = peer
            self.selector.register(sock, selectors.EVENT_READ, peer)

    def _receive(self, peer: Peer) -> None:
        """Reads what the socket holds, unless a whole frame already waits (the peer is
        pushed back on by TCP until its turns use up what it sent)."""
        if _has_whole_frame(peer.buffer):
            return
        try:
            data = peer.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(peer)
        elif peer.closing_at is None:  # a refused peer's later requests are read only to be ignored
            peer.buffer += data

    def _take_turn(self, peer: Peer, pending: list[tuple[Peer, Any]]) -> None:
        """Up to MESSAGES_PER_TURN of the peer's whole frames, in order, stopping at a
        request for ``_answer`` (a ``get_action``): it is answered before the next message
        is handled (a ``log_reward`` after it belongs to it)."""
        for _ in range(MESSAGES_PER_TURN):
            length = _frame_length(peer.buffer)
            if peer.sock not in self.peers or length is None:
                return
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes is over the limit of {MAX_FRAME}")
            if len(peer.buffer) < 4 + length:
                return
            body = bytes(peer.buffer[4:4 + length])
            del peer.buffer[:4 + length]
            message = unpack(body)
            try:
                self._handle(peer, message, pending)
            except ProtocolError:
                raise
            except Exception as e:  # noqa: BLE001 - input this side chokes on: refused as the peer's error, by name
                raise ProtocolError(f"this runner could not handle {message['type']!r}: {type(e).__name__}: {e}") from e
            if pending and pending[-1][0] is peer:
                break
        if peer.sock in self.peers and _has_whole_frame(peer.buffer):
            self.backlog.add(peer)

    def _send(self, peer: Peer, message: dict[str, Any]) -> None:
        """Queues a reply: the pass's end writes what the socket takes, the selector the
        rest when the socket drains. Never blocks: a peer over OUTBOX_LIMIT is dropped."""
        if peer.sock not in self.peers:
            return
        data = pack(message)
        if len(peer.outbox) >= OUTBOX_LIMIT:
            self.dropped_slow_readers += 1
            self._log(f"dropped {_name(peer)}: it left {len(peer.outbox)} bytes of replies unread")
            self._drop(peer)
            return
        peer.outbox += data
        self.unflushed.add(peer)

    def _flush(self, peer: Peer) -> None:
        if peer.sock.fileno() < 0:  # closed since its reply was queued
            return
        try:
            sent = peer.sock.send(peer.outbox) if peer.outbox else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the peer went away
            self._drop(peer)
            return
        del peer.outbox[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.outbox else 0)
        if events != peer.events:
            self.selector.modify(peer.sock, events, peer)
            peer.events = events
        if peer.closing_at is not None and not peer.outbox:
            try:  # the error reply is out: the peer sees the end after it, and we wait for its close
                peer.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(peer)

    def _refuse(self, peer: Peer, reason: str) -> None:
        """An error reply, then the connection is closed; the trainer goes on. The socket
        lingers (LINGER_S at most) until the reply is out and the peer closes its side."""
        if peer.sock not in self.peers:
            return
        reason = reason.replace("\n", " ")  # one line, and a short one, whatever the peer sent
        reason = reason if len(reason) <= 300 else reason[:300] + "..."
        self.refused_connections += 1
        self._log(f"refused {_name(peer)}: {reason}")
        self._forget(peer)
        if len(peer.outbox) >= OUTBOX_LIMIT:  # it does not read: no reply would arrive
            self._close(peer)
            return
        peer.outbox += pack({"type": "error", "message": reason})
        peer.buffer = bytearray()
        peer.closing_at = time.monotonic() + LINGER_S
        self.lingering[peer.sock] = peer
        self.unflushed.add(peer)

    def _drop(self, peer: Peer) -> None:
        """A connection ends now (the peer left, said bye, or stopped reading)."""
        self._forget(peer)
        self._close(peer)

    def _forget(self, peer: Peer) -> None:
        """The peer stops being served: the subclass discards what it kept for it."""
        with self.lock:
            if peer.sock not in self.peers:
                return
            del self.peers[peer.sock]
            self._discard(peer)
        self.backlog.discard(peer)

    def _close(self, peer: Peer) -> None:
        if peer.outbox and peer.sock.fileno() >= 0:
            try:  # what the socket takes of the replies queued before a bye
                peer.sock.send(peer.outbox)
            except OSError:
                pass
        self.lingering.pop(peer.sock, None)
        try:
            self.selector.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()

    def _expire(self) -> None:
        now = time.monotonic()
        for peer in list(self.peers.values()):
            if not peer.welcomed and now - peer.opened > self.hello_timeout_s:
                self._refuse(peer, f"no hello within {self.hello_timeout_s:g} s")
        for peer in list(self.lingering.values()):
            if now > peer.closing_at:
                self._close(peer)

    def _log(self, line: str) -> None:
        now = time.monotonic()
        if now - self.logged_at < LOG_EVERY_S:
            self.unlogged += 1
            return
        more = f" (and {self.unlogged} more since the last line)" if self.unlogged else ""
        print(f"{self.label} on port {self.address[1]}: {line}{more}", file=sys.stderr, flush=True)
        self.logged_at, self.unlogged = now, 0


def _frame_length(buffer: bytearray) -> int | None:
    """The length a frame's header announces, or None before the 4 bytes are in."""
    return struct.unpack_from(">I", buffer)[0] if len(buffer) >= 4 else None


def _has_whole_frame(buffer: bytearray) -> bool:
    length = _frame_length(buffer)
    return length is not None and len(buffer) >= 4 + length


def _name(peer: Peer) -> str:
    host, port = peer.address[:2] if isinstance(peer.address, tuple) else (peer.address, "")
    return f"{host}:{port}"
