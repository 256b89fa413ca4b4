"""Response and error shapes: API v1 answers like the Cloudera page, API v2 like grpc-gateway."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

V1_MEDIA_TYPE = "application/json; charset=utf-8"
V2_MEDIA_TYPE = "application/json"

# HTTP status -> google.rpc.Code, as grpc-gateway maps them.
GRPC_CODES = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    405: 12,  # UNIMPLEMENTED
    415: 3,  # INVALID_ARGUMENT
    429: 8,  # RESOURCE_EXHAUSTED
    500: 13,  # INTERNAL
    502: 14,  # UNAVAILABLE
    503: 14,  # UNAVAILABLE
    504: 4,  # DEADLINE_EXCEEDED
}


class ApiError(Exception):
    """Raised by handlers; rendered in the calling API's error shape."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def v1_json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Pretty-printed with a charset, as in the documented curl transcript."""
    return Response(
        json.dumps(payload, indent=2) + "\n",
        status_code=status,
        headers={"Access-Control-Allow-Origin": "*", **(headers or {})},
        media_type=V1_MEDIA_TYPE,
    )


def v2_json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")),
        status_code=status,
        headers=headers,
        media_type=V2_MEDIA_TYPE,
    )


def error_response(
    path: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """API v2 paths get a ``runtimeError``; everything else the v1 ``{"message": ...}``."""
    if path.startswith("/api/v2/"):
        body = {
            "error": message,
            "code": GRPC_CODES.get(status, 2),  # 2 = UNKNOWN
            "message": message,
            "details": [],
        }
        return v2_json(body, status, headers)
    return v1_json({"message": message}, status, headers)
