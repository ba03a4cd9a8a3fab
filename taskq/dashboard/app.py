"""The dashboard's Starlette application: the page, its JSON and event-stream API, the
write actions, ``/metrics`` and ``/healthz``; :func:`create_app` builds it, ``ui=False``
the exporter's subset (``/metrics`` and ``/healthz`` only).

Reads go through :mod:`taskq.broker.snapshot` (bounded, read-only); the two write actions
call :meth:`~taskq.broker.Broker.dead_retry` and :meth:`~taskq.broker.Broker.dead_purge`,
and only with ``allow_actions``, as a POST carrying the page's CSRF header.

Routes (under ``prefix``)::

    GET  /                                 the page (one HTML shell, app.js renders views)
    GET  /static/…                         app.js, app.css
    GET  /api/events                       server-sent events: the sampler's views
    GET  /api/snapshot                     the latest view, once
    GET  /api/queues/{queue}/dead          ?before=<dead id>&count=   newest first
    GET  /api/queues/{queue}/delayed       ?offset=&count=            soonest first
    GET  /api/tasks/{task_id}              where a task is
    GET  /api/batches/{batch_id}           a batch's progress
    POST /api/queues/{queue}/dead/retry    {"ids": [...]} | {"all": true, "confirm": queue}
    POST /api/queues/{queue}/dead/purge    {"confirm": queue}
    GET  /metrics  /healthz
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from taskq.broker import Broker, all_queues, snapshot
from taskq.config import validate_queue_name
from taskq.dashboard.auth import AuthMiddleware, action_refusal, expected_header
from taskq.dashboard.metrics import CONTENT_TYPE, Exposition
from taskq.dashboard.page import render_page
from taskq.dashboard.sampler import Sampler
from taskq.errors import ConfigError

STATIC = Path(__file__).parent / "static"
KEEPALIVE = 15.0
"""Seconds between comment lines on an idle event stream (proxies drop silent ones)."""


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status)


def _queue(request: Request) -> str:
    return validate_queue_name(request.path_params["queue"])


def _count(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


class Dashboard:
    """The endpoints, over one Redis client and one sampler."""

    def __init__(self, client: redis.Redis, sampler: Sampler, *, allow_actions: bool, prefix: str,
                 ui: bool) -> None:
        self.client = client
        self.sampler = sampler
        self.allow_actions = allow_actions
        self.prefix = prefix
        self.ui = ui
        self.exposition = Exposition()

    # -- page, stream, health ---------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return HTMLResponse(render_page(self.prefix, self.allow_actions),
                            headers={"cache-control": "no-store"})

    async def events(self, request: Request) -> Response:
        sampler = self.sampler
        q = sampler.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            try:
                if sampler.message:
                    yield b"data: " + sampler.message + b"\n\n"
                while True:
                    try:
                        message = await asyncio.wait_for(q.get(), KEEPALIVE)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if message is None:  # the dashboard is shutting down
                        return
                    yield b"data: " + message + b"\n\n"
            finally:
                sampler.unsubscribe(q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def snapshot(self, request: Request) -> Response:
        return Response(self.sampler.message or orjson.dumps(self.sampler.view()),
                        media_type="application/json", headers={"cache-control": "no-store"})

    async def metrics(self, request: Request) -> Response:
        snap = await self.sampler.fresh() if not self.ui else (
            self.sampler.latest if self.sampler.error is None else None)
        return Response(self.exposition.render(snap), media_type=CONTENT_TYPE)

    async def healthz(self, request: Request) -> Response:
        if not self.ui:
            await self.sampler.fresh()
        if self.sampler.healthy():
            return Response("ok\n", media_type="text/plain")
        return Response(f"unhealthy: {self.sampler.error or 'no recent sample'}\n", 503,
                        media_type="text/plain")

    # -- reads -------------------------------------------------------------------------

    def dead(self, request: Request) -> Response:
        rows, cursor = snapshot.dead_page(self.client, _queue(request),
                                          request.query_params.get("before") or None,
                                          _count(request, "count", 50))
        return _json({"rows": rows, "next": cursor})

    def delayed(self, request: Request) -> Response:
        rows, total = snapshot.delayed_page(self.client, _queue(request),
                                            _count(request, "offset", 0), _count(request, "count", 50))
        return _json({"rows": rows, "total": total})

    def task(self, request: Request) -> Response:
        queues = all_queues(self.client)[:snapshot.MAX_QUEUES]
        return _json(snapshot.lookup(self.client, queues, request.path_params["task_id"]))

    def batch(self, request: Request) -> Response:
        queues = all_queues(self.client)[:snapshot.MAX_QUEUES]
        found = snapshot.batch(self.client, queues, request.path_params["batch_id"])
        if found is None:
            return _error(404, "no such batch (unknown id, or expired)")
        return _json(found)

    # -- write actions -----------------------------------------------------------------

    async def _action_body(self, request: Request) -> dict[str, Any] | Response:
        refusal = action_refusal(request, self.allow_actions)
        if refusal is not None:
            return _error(*refusal)
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return _error(400, "the request body must be JSON")
        return body if isinstance(body, dict) else _error(400, "the request body must be an object")

    async def retry(self, request: Request) -> Response:
        body = await self._action_body(request)
        if isinstance(body, Response):
            return body
        queue, broker = _queue(request), Broker(self.client, _queue(request))
        if body.get("all"):
            if body.get("confirm") != queue:
                return _error(400, f"retry all: type the queue name ({queue}) to confirm")
            n = await run_in_threadpool(broker.dead_retry, None)
        else:
            ids = body.get("ids")
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
                return _error(400, 'give {"ids": [dead-letter ids]} or {"all": true, "confirm": queue}')
            n = await run_in_threadpool(broker.dead_retry, ids[:snapshot.PAGE_MAX])
        return _json({"requeued": n})

    async def purge(self, request: Request) -> Response:
        body = await self._action_body(request)
        if isinstance(body, Response):
            return body
        queue = _queue(request)
        if body.get("confirm") != queue:
            return _error(400, f"purge: type the queue name ({queue}) to confirm")
        n = await run_in_threadpool(Broker(self.client, queue).dead_purge)
        return _json({"purged": n})

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [Route("/metrics", self.metrics), Route("/healthz", self.healthz)]
        if not self.ui:
            return routes
        return [
            Route("/", self.page),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/api/events", self.events),
            Route("/api/snapshot", self.snapshot),
            Route("/api/queues/{queue}/dead", _friendly(self.dead)),
            Route("/api/queues/{queue}/delayed", _friendly(self.delayed)),
            Route("/api/tasks/{task_id}", _friendly(self.task)),
            Route("/api/batches/{batch_id}", _friendly(self.batch)),
            Route("/api/queues/{queue}/dead/retry", _friendly_async(self.retry), methods=["POST"]),
            Route("/api/queues/{queue}/dead/purge", _friendly_async(self.purge), methods=["POST"]),
            *routes,
        ]


def _friendly(fn: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """Bad input → 400 with one line; Redis trouble → 503: never a traceback page."""

    def endpoint(request: Request) -> Response:
        try:
            return fn(request)
        except ConfigError as exc:
            return _error(400, str(exc))
        except redis.RedisError as exc:
            return _error(503, f"Redis error: {exc}")

    return endpoint


def _friendly_async(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        try:
            response: Response = await fn(request)
            return response
        except ConfigError as exc:
            return _error(400, str(exc))
        except redis.RedisError as exc:
            return _error(503, f"Redis error: {exc}")

    return endpoint


def create_app(client: redis.Redis, *, auth: str | None = None, allow_actions: bool = False,
               prefix: str = "", ui: bool = True, interval: float = 1.0) -> Starlette:
    """The dashboard (``ui=False``: the exporter) on ``client``; ``prefix`` like ``/taskq``."""
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigError(f"--url-prefix must start with '/' and not end with one, got {prefix!r}")
    if auth is not None:
        expected_header(auth)  # a bad --auth fails now, not at the first request
    sampler = Sampler(client, interval)
    dash = Dashboard(client, sampler, allow_actions=allow_actions, prefix=prefix, ui=ui)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(sampler.run()) if ui else None
        try:
            yield
        finally:
            sampler.stop()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    routes = dash.routes()
    if prefix:
        routes = [Route(prefix, lambda r: RedirectResponse(prefix + "/")), Mount(prefix, routes=routes)]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(AuthMiddleware, auth=auth)])
    app.state.sampler = sampler
    return app
