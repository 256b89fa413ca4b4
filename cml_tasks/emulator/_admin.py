"""Read-only views for tests and demos: every run started and every request seen.

No auth: the emulator binds to loopback. GET only, so nothing here can change what it serves.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._http import v2_json
from ._state import EmulatorState

ADMIN_PREFIX = "/_emulator/"


def routes(state: EmulatorState) -> list[Route]:
    async def runs(request: Request) -> Response:
        return v2_json({"runs": state.run_records()})

    async def requests(request: Request) -> Response:
        return v2_json({"requests": state.request_records()})

    return [
        Route(ADMIN_PREFIX + "runs", runs, methods=["GET"], name="admin.runs"),
        Route(ADMIN_PREFIX + "requests", requests, methods=["GET"], name="admin.requests"),
    ]
