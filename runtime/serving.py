"""Serving on Ray Serve: one HTTP deployment in front of a model object.

Knows nothing of policies. A picklable ``factory()`` builds the model in each replica;
the model answers:

    parse(route, body) -> (item, rows)   checks a JSON body; raises BadRequest (-> 400)
    run(route, items) -> [result, ...]   one call for the items of many requests
    metadata() -> dict                   GET /metadata
    reload() -> dict                     POST /reload
    watch() -> None                      called about once a second with --watch; keeps
                                         serving what it has when the file does not load

Routes: ``POST /act`` and ``POST /complete`` go through Serve's dynamic batching
(``@serve.batch``, counting rows, not requests, against the batch size), ``GET
/healthz``, ``GET /metadata``, ``POST /reload``. A token, when set, must come with every
request as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hmac
import ipaddress
import json
import logging
import socket
import time
from typing import Any, Callable

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from rlfleet.runtime.base import BadRequest

BATCHED_ROUTES = ("/act", "/complete")
ROUTES = ("GET /healthz", "GET /metadata", "POST /act", "POST /complete", "POST /reload")
SERVE_NAMESPACE = "serve"
MAX_JSON_DEPTH = 100
"""How deep a request body may nest: far more than any observation needs (numpy arrays
stop at 64 dimensions), far less than what exhausts Python's stack."""

logger = logging.getLogger(__name__)


class PortUnavailableError(RuntimeError):
    """The address to serve on cannot be bound: the port is taken, or the host is not one
    of this machine's addresses."""


def _bind(host: str, port: int) -> None:
    """Bind and release ``host:port`` the way Ray Serve's proxy binds it (a plain socket, no
    ``SO_REUSEADDR``), so what fails here would fail there."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name, such as localhost
        family = socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, port))


def check_bindable(host: str, port: int) -> None:
    """Refuse, in one line naming the port (and the nearest free one), an address this
    machine cannot serve on, before any Ray process starts."""
    if not 0 < port < 65536:
        raise PortUnavailableError(f"port {port} is outside 1..65535")
    try:
        _bind(host, port)
    except OSError as e:
        raise PortUnavailableError(_bind_failure(host, port, e)) from None


def _bind_failure(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use{_nearest_free(host, port)}"
    if error.errno == errno.EACCES:
        return f"port {port} on {host} needs privileges this process lacks (below 1024){_nearest_free(host, 1023)}"
    if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
        return f"cannot serve on {host}:{port}: {host!r} is not an address of this machine"
    return f"cannot serve on {host}:{port}: {error.strerror or error}"


def _nearest_free(host: str, port: int, tries: int = 100) -> str:
    for candidate in range(port + 1, min(port + tries, 65535) + 1):
        try:
            _bind(host, candidate)
        except OSError:
            continue
        return f"; the nearest free port is {candidate}"
    return ""


def decode_body(body: bytes) -> Any:
    """A request body as JSON, or :class:`BadRequest` (400) in one line: not JSON, a number
    of thousands of digits, nesting deeper than :data:`MAX_JSON_DEPTH` (``json.loads``
    recurses, and a 10,000-deep body would exhaust the stack)."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise BadRequest(f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    except ValueError as e:  # bytes that are not UTF-8; an integer of over 4,300 digits
        raise BadRequest(f"body is not valid JSON: {str(e).split(':')[0]}") from None
    stack = [(data, 1)]
    while stack:  # iterative: the check itself must not recurse
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return data


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    num_replicas: int = 1
    num_cpus_per_replica: float = 1.0
    token: str | None = None
    max_body_bytes: int = 1 << 20
    max_batch_rows: int = 256
    """Rows one batched forward pass takes (several requests' observations together)."""
    batch_wait_s: float = 0.0
    """How long a batch waits to fill; 0 batches what queued up while the last one ran."""
    batching: bool = True
    watch: bool = False
    app_name: str = "rlfleet"

    @property
    def reload_counter(self) -> str:
        return f"{self.app_name}-reloads"


@ray.remote(num_cpus=0)
class ReloadCounter:
    """How many ``POST /reload`` the app has taken. Serve routes a request to one replica;
    every replica compares this count with the one it last acted on (at most twice a
    second), so a reload that reached one replica reaches them all."""

    def __init__(self) -> None:
        self.count = 0

    def bump(self) -> int:
        self.count += 1
        return self.count

    def get(self) -> int:
        return self.count


def _rows(items: list[tuple[Any, int]]) -> int:
    return sum(rows for _, rows in items)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment
class ModelIngress:
    def __init__(self, factory: Callable[[], Any], options: ServeOptions) -> None:
        self.model = factory()
        self.options = options
        self.auth = f"Bearer {options.token}" if options.token else None
        self._batched_act.set_max_batch_size(options.max_batch_rows)
        self._batched_act.set_batch_wait_timeout_s(options.batch_wait_s)
        self._batched_complete.set_max_batch_size(options.max_batch_rows)
        self._batched_complete.set_batch_wait_timeout_s(options.batch_wait_s)
        self.next_watch = 0.0
        self.counter = ray.get_actor(options.reload_counter, namespace=SERVE_NAMESPACE)
        self.reloads_seen = ray.get(self.counter.get.remote())
        self.next_reload_check = 0.0

    async def _follow_reloads(self) -> None:
        """Reload when another replica took a ``POST /reload`` since we last looked."""
        if time.monotonic() < self.next_reload_check:
            return
        self.next_reload_check = time.monotonic() + 0.5
        try:
            count = await self.counter.get.remote()
        except ray.exceptions.RayError:  # the serving process went away; keep serving what is loaded
            return
        if count != self.reloads_seen:
            self.reloads_seen = count
            try:
                await asyncio.to_thread(self.model.reload)
            except BadRequest as e:  # the request that asked answered it; this one was not about reloading
                logger.warning("following a reload: %s", e)

    async def _watch(self) -> None:
        """``--watch``: at most once a second, load the checkpoint file if it changed. Never
        fails the request that happens to trigger it: a model's ``watch`` keeps serving what
        it has when the file cannot be loaded (yet)."""
        if not self.options.watch or time.monotonic() < self.next_watch:
            return
        self.next_watch = time.monotonic() + 1.0
        try:
            await asyncio.to_thread(self.model.watch)
        except Exception:  # noqa: BLE001 - a model's own bug: logged, and the request is still answered
            logger.exception("watching the checkpoint failed; serving what is loaded")

    async def __call__(self, request: Request) -> JSONResponse:
        if self.auth is not None and not hmac.compare_digest(request.headers.get("authorization", ""), self.auth):
            return _error(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'")
        path = request.url.path.rstrip("/") or "/"
        route = f"{request.method} {path}"
        await self._watch()
        if route != "POST /reload":
            await self._follow_reloads()
        try:
            if route == "GET /healthz":
                return JSONResponse({"status": "ok"})
            if route == "GET /metadata":
                return JSONResponse(self.model.metadata())
            if route == "POST /reload":
                self.reloads_seen = await self.counter.bump.remote()
                return JSONResponse(await asyncio.to_thread(self.model.reload))
            if request.method == "POST" and path in BATCHED_ROUTES:
                return JSONResponse(await self._batched_route(request, path))
        except BadRequest as e:
            return _error(400, str(e))
        if path in BATCHED_ROUTES + ("/healthz", "/metadata", "/reload"):
            return _error(405, f"{route}: wrong method; routes: {', '.join(ROUTES)}")
        return _error(404, f"no route {route}; routes: {', '.join(ROUTES)}")

    async def _batched_route(self, request: Request, path: str) -> Any:
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(f"body of {declared} bytes is over the limit of {limit}")
        body = await request.body()
        if len(body) > limit:
            raise BadRequest(f"body of {len(body)} bytes is over the limit of {limit}")
        item = self.model.parse(path, decode_body(body))
        if not self.options.batching:
            return (await asyncio.to_thread(self.model.run, path, [item]))[0]
        return await (self._batched_act(item) if path == "/act" else self._batched_complete(item))

    @serve.batch(batch_size_fn=_rows)
    async def _batched_act(self, items: list[tuple[Any, int]]) -> list[Any]:
        return await asyncio.to_thread(self.model.run, "/act", items)

    @serve.batch(batch_size_fn=_rows)
    async def _batched_complete(self, items: list[tuple[Any, int]]) -> list[Any]:
        return await asyncio.to_thread(self.model.run, "/complete", items)


class Server:
    """A running deployment; ``stop()`` removes it (and the Ray instance it started)."""

    def __init__(self, factory: Callable[[], Any], options: ServeOptions, *, address: str | None,
                 py_modules: tuple[str, ...] = ()) -> None:
        from rlfleet.runtime.ray_backend import RayRuntime

        self.options = options
        self.own_serve = address is None
        if self.own_serve:  # our proxy binds on this machine: a taken port is refused before Ray starts
            check_bindable(options.host, options.port)
        self.counter: Any = None
        self.runtime = RayRuntime(address=address, py_modules=py_modules)
        try:
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
            self.counter = ReloadCounter.options(name=options.reload_counter, namespace=SERVE_NAMESPACE).remote()
            serve.start(http_options={"host": options.host, "port": options.port},
                        logging_config={"log_level": "WARNING", "enable_access_log": False})
            app = ModelIngress.options(
                num_replicas=options.num_replicas, ray_actor_options={"num_cpus": options.num_cpus_per_replica},
                max_ongoing_requests=max(64, 2 * options.max_batch_rows),
            ).bind(factory, options)
            serve.run(app, name=options.app_name, route_prefix="/", blocking=False,
                      logging_config={"log_level": "WARNING", "enable_access_log": False})
        except Exception as e:
            self.stop()
            # the port taken between the check and the proxy's bind (or on a cluster's node):
            # Serve reports it as its proxy actor's failure, the cause deep in its text
            if "Failed to bind to address" in str(e):
                try:
                    _bind(options.host, options.port)
                    message = (f"cannot serve on {options.host}:{options.port}: Serve's proxy could not bind it (taken "
                               "while Serve started, or on another node of the cluster)")
                except OSError as bind_error:
                    message = _bind_failure(options.host, options.port, bind_error)
                raise PortUnavailableError(message) from None
            raise

    @property
    def url(self) -> str:
        host = self.options.host if self.options.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.options.port}"

    def stop(self) -> None:
        if ray.is_initialized():
            if self.own_serve:
                serve.shutdown()
            else:
                try:
                    serve.delete(self.options.app_name)
                except Exception as e:  # noqa: BLE001 - a start that failed before the app existed
                    logger.warning("removing the app %s: %s", self.options.app_name, e)
            if self.counter is not None:
                ray.kill(self.counter)
        self.runtime.shutdown()
