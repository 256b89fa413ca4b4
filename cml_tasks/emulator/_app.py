"""The ASGI application: the API routes behind one outermost layer that sees every request.

That layer names the endpoint, injects faults (including hanging up, which needs the raw
server ``send``), stamps ``x-request-id`` on every answer and records the request log.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Literal

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import _admin, _pages, _v1, _v2
from ._connection import drop_connection
from ._faults import ENDPOINTS, Fault
from ._http import V2_MEDIA_TYPE, ApiError, error_response
from ._state import EmulatorState, RequestRecord, rfc3339


def build_app(state: EmulatorState) -> ASGIApp:
    """The emulator as an ASGI app over ``state``. Needs uvicorn for the ``drop`` faults."""
    routes: list[BaseRoute] = [
        *_v1.routes(state),
        *_v2.routes(state),
        *_admin.routes(state),
        *_pages.routes(state),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.router.redirect_slashes = False
    return _Frontdoor(app, routes, state)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request.url.path, exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing failures (404 no such path, 405 wrong method) in the API's own error shape."""
    assert isinstance(exc, HTTPException)
    return error_response(request.url.path, exc.status_code, exc.detail, exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error_response(request.url.path, 500, f"internal error: {exc!r}")


class _Frontdoor:
    """Outermost ASGI layer; must receive the server's own ``send`` for ``drop`` to work."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute], state: EmulatorState) -> None:
        self.app = app
        self.routes = routes
        self.state = state

    def _endpoint(self, scope: Scope) -> str | None:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "name", None)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        arrived = rfc3339(datetime.now(UTC))
        endpoint = self._endpoint(scope)
        fault: Fault | None = None
        if endpoint is not None and endpoint in ENDPOINTS:
            fault = self.state.faults.draw(endpoint)
        logged = False

        def log(status: int | Literal["dropped"]) -> None:
            """Record the request before the client can see the outcome, so the log is never
            behind what a client has observed."""
            nonlocal logged
            if logged or scope["path"].startswith(_admin.ADMIN_PREFIX):
                return
            logged = True
            self.state.log_request(
                RequestRecord(
                    request_id=request_id,
                    timestamp=arrived,
                    endpoint=endpoint,
                    method=scope["method"],
                    path=scope["path"],
                    query=scope["query_string"].decode("latin-1"),
                    status=status,
                    fault=None if fault is None else fault.kind,
                )
            )

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                log(message["status"])
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        async def hang_up() -> None:
            log("dropped")
            await drop_connection(receive, send)

        async def swallow(message: Message) -> None:
            """The answer that gets lost: the work is done, the client never hears of it."""

        try:
            if fault is None:
                await self.app(scope, receive, send_with_id)
            elif fault.kind == "latency":
                # A slow server has the whole request before it dawdles: a client giving up
                # meanwhile does not undo the work, as with a real CML.
                received = await _buffered(receive)
                if received is None:
                    return  # the client hung up before its request was in: nothing to do
                await asyncio.sleep(fault.seconds)
                await self.app(scope, received, send_with_id)
            elif fault.kind == "drop":
                await hang_up()
            elif fault.kind == "lost_answer":
                await self.app(scope, receive, swallow)
                await hang_up()
            elif fault.kind == "answer":
                await _canned(fault)(scope, receive, send_with_id)
            elif fault.kind == "drip":
                await self.app(scope, receive, _dripping(send_with_id, fault.seconds))
            else:
                await _injected_error(scope, fault)(scope, receive, send_with_id)
        finally:
            log("dropped")  # no answer went out (the app or the hang-up failed)


async def _buffered(receive: Receive) -> Receive | None:
    """Read the request body now, to replay it to the app later; None if the client left
    before the whole request was read (the server never saw it whole, so it does nothing)."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _canned(fault: Fault) -> Response:
    """The answer an ``answer`` fault describes, whatever the request was; nothing is done."""
    return Response(
        (fault.body * fault.body_repeat).encode(),
        status_code=fault.status,
        headers=fault.headers,
        media_type=None if "content-type" in {k.lower() for k in fault.headers} else V2_MEDIA_TYPE,
    )


def _dripping(send: Send, seconds: float) -> Send:
    """The real answer, its body sent one byte every ``seconds``."""

    async def drip(message: Message) -> None:
        if message["type"] != "http.response.body":
            await send(message)
            return
        body: bytes = message.get("body", b"")
        for index in range(len(body)):
            await send(
                {"type": "http.response.body", "body": body[index : index + 1], "more_body": True}
            )
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                return  # the emulator is shutting down mid-drip: the answer ends here
        await send(
            {
                "type": "http.response.body",
                "body": b"",
                "more_body": message.get("more_body", False),
            }
        )

    return drip


def _injected_error(scope: Scope, fault: Fault) -> Response:
    status = int(fault.kind)
    headers = {"Retry-After": str(fault.retry_after)} if status == 429 else None
    message = "too many requests" if status == 429 else f"injected fault: HTTP {status}"
    return error_response(scope["path"], status, message, headers)
