"""Serving on Ray Serve: one HTTP deployment in front of a model object.

Knows nothing of policies. A picklable ``factory()`` builds the model in each replica;
the model answers:

    parse(route, body) -> (item, rows)   checks a JSON body; raises BadRequest (-> 400)
    run(route, items) -> [result, ...]   one call for the items of many requests
    metadata() -> dict                   GET /metadata
    reload() -> dict                     POST /reload
    watch() -> None                      called about once a second with --watch

Routes: ``POST /act`` and ``POST /complete`` go through Serve's dynamic batching
(``@serve.batch``, counting rows, not requests, against the batch size), ``GET
/healthz``, ``GET /metadata``, ``POST /reload``. A token, when set, must come with every
request as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
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
            await asyncio.to_thread(self.model.reload)

    async def __call__(self, request: Request) -> JSONResponse:
        if self.auth is not None and not hmac.compare_digest(request.headers.get("authorization", ""), self.auth):
            return _error(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'")
        path = request.url.path.rstrip("/") or "/"
        route = f"{request.method} {path}"
        try:
            if self.options.watch and time.monotonic() >= self.next_watch:
                self.next_watch = time.monotonic() + 1.0
                await asyncio.to_thread(self.model.watch)
            if route != "POST /reload":
                await self._follow_reloads()
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
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRequest(f"body is not valid JSON: {e}") from None
        item = self.model.parse(path, data)
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
        self.runtime = RayRuntime(address=address, py_modules=py_modules)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        self.counter = ReloadCounter.options(name=options.reload_counter, namespace=SERVE_NAMESPACE).remote()
        self.own_serve = address is None
        serve.start(http_options={"host": options.host, "port": options.port},
                    logging_config={"log_level": "WARNING", "enable_access_log": False})
        app = ModelIngress.options(
            num_replicas=options.num_replicas, ray_actor_options={"num_cpus": options.num_cpus_per_replica},
            max_ongoing_requests=max(64, 2 * options.max_batch_rows),
        ).bind(factory, options)
        serve.run(app, name=options.app_name, route_prefix="/", blocking=False,
                  logging_config={"log_level": "WARNING", "enable_access_log": False})

    @property
    def url(self) -> str:
        host = self.options.host if self.options.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.options.port}"

    def stop(self) -> None:
        if ray.is_initialized():
            if self.own_serve:
                serve.shutdown()
            else:
                serve.delete(self.options.app_name)
            ray.kill(self.counter)
        self.runtime.shutdown()
