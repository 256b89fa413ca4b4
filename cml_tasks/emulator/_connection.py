"""Hanging up on a client from inside an ASGI app, which ASGI itself cannot express.

Isolated here because it reaches into the server: uvicorn's ``send`` is a bound method of its
per-request cycle object (h11 and httptools alike), which holds the connection's transport.
"""

from __future__ import annotations

from starlette.types import Receive, Send


class ConnectionDropError(RuntimeError):
    """The ASGI server is not one whose connection can be reached (only uvicorn is supported)."""


async def drop_connection(receive: Receive, send: Send) -> None:
    """Abort the TCP connection (the client sees it closed without a response), then wait
    until the server has noticed, so it neither writes a 500 nor logs an error."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    if not callable(abort):
        raise ConnectionDropError(
            "cannot drop the connection: the ASGI `send` callable is not bound to an object "
            "with a `.transport` (run the emulator under uvicorn, without wrapping middleware)"
        )
    abort()
    while (await receive())["type"] != "http.disconnect":
        pass
