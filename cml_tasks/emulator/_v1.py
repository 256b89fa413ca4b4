"""API v1: ``POST /api/v1/projects/<USERNAME>/<PROJECT_NAME>/jobs/<JOB_ID>/start``.

Exactly as Cloudera's Jobs API page describes it: HTTP Basic auth with the API key as user name
and an empty password, ``Content-Type: application/json`` even for an empty body, and an
optional ``{"environment": {...}}`` body. The answer is ``{"engine_id": ...}``.
"""

from __future__ import annotations

import base64
import binascii
import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._config import UserConfig
from ._environment import parse_environment
from ._http import ApiError, v1_json
from ._state import EmulatorState

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Cloudera Machine Learning"'}


def routes(state: EmulatorState) -> list[Route]:
    async def start(request: Request) -> Response:
        user = _authenticate(state, request.headers.get("authorization"))
        _require_json(request.headers.get("content-type"))
        owner = request.path_params["username"]
        name = request.path_params["project_name"]
        job_id = request.path_params["job_id"]
        if not state.owner_exists(owner):
            raise ApiError(404, f"user {owner!r} not found")
        project = state.project_by_path(owner, name)
        if project is None:
            raise ApiError(404, f"project {owner}/{name} not found")
        if not state.can_access(user, project):
            raise ApiError(403, f"user {user.username!r} has no access to project {owner}/{name}")
        job = state.job(project, job_id)
        if job is None:
            raise ApiError(404, f"job {job_id!r} not found in project {owner}/{name}")
        environment = _environment(await request.body())
        run = state.create_run("v1", user, project, job, environment, job.arguments)
        return v1_json({"engine_id": run.id})

    return [
        Route(
            "/api/v1/projects/{username}/{project_name}/jobs/{job_id}/start",
            start,
            methods=["POST"],
            name="v1.start",
        )
    ]


def _authenticate(state: EmulatorState, header: str | None) -> UserConfig:
    """Basic ``<key>:`` - a password, a v2 key or any other scheme is a wrong credential."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        raise ApiError(401, "authentication required: HTTP Basic with the API key", _CHALLENGE)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(401, "malformed Basic credentials", _CHALLENGE) from None
    key, colon, password = decoded.partition(":")
    user = state.user_by_v1_key(key) if colon and not password else None
    if user is None:
        raise ApiError(401, "invalid API key", _CHALLENGE)
    return user


def _require_json(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "Content-Type must be application/json, even when the body is empty")


def _environment(body: bytes) -> dict[str, str]:
    """The optional body's ``environment``; anything malformed is a 400."""
    if not body.strip():
        return {}
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: nested too deeply for the parser (``[[[[...``) - still a bad request.
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ApiError(400, "request body must be a JSON object")
    if "environment" not in payload:
        return {}
    return parse_environment(payload["environment"])
