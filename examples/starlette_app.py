"""A Starlette (or FastAPI: the same lifespan and handlers) app that hands CPU work to
taskq workers without blocking its event loop, through ``taskq.AsyncClient``.

Run a worker and the app (the Redis URL comes from TASKQ_URL)::

    taskq worker --procs 4 --import taskq.tasks
    uvicorn examples.starlette_app:app

    curl 'http://127.0.0.1:8000/primes?start=0&end=1000000'
    curl 'http://127.0.0.1:8000/sleep/1.5'
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import taskq

PIECES = 16  # the range is counted in this many tasks, spread over the workers


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # One client for the app's life: one connection for writes, one reply listener.
    async with taskq.AsyncClient() as client:
        app.state.taskq = client
        yield


async def primes(request: Request) -> JSONResponse:
    try:
        start, end = int(request.query_params["start"]), int(request.query_params["end"])
    except (KeyError, ValueError):
        return JSONResponse({"error": "start and end must be integers"}, status_code=400)
    client: taskq.AsyncClient = request.app.state.taskq
    step = max(1, -(-(end - start) // PIECES))
    starts = range(start, end, step)
    ends = [min(s + step, end) for s in starts]
    # The built-in task primes(start, end), one call per piece; the values arrive in order.
    total = 0
    async for count in client.map("primes", starts, ends):
        total += count
    return JSONResponse({"start": start, "end": end, "primes": total})


async def sleep(request: Request) -> JSONResponse:
    """A slow task: this request waits for it, the event loop serves others meanwhile."""
    client: taskq.AsyncClient = request.app.state.taskq
    fut = await client.submit("sleep", min(float(request.path_params["seconds"]), 10.0))
    return JSONResponse({"slept": await fut})


app = Starlette(routes=[Route("/primes", primes), Route("/sleep/{seconds:float}", sleep)],
                lifespan=lifespan)
