"""httpx clients for the CML Jobs API, sync (`CMLClient`) and async (`AsyncCMLClient`).

Each client owns one connection pool; reuse it across many starts. Input is validated and
credentials are checked before anything is sent; failures come back as typed errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import httpx

from cml_tasks import __version__
from cml_tasks._http import error_for_response, error_for_transport
from cml_tasks._retry import RetryPolicy
from cml_tasks.environment import validate_environment
from cml_tasks.errors import CMLConfigError, CMLError, CMLOutcomeUnknown
from cml_tasks.job import JobRef, is_loopback
from cml_tasks.models import StartedRun
from cml_tasks.settings import CMLSettings


class _Request:
    """Everything needed to send (and re-send) one call and to explain its failure."""

    def __init__(
        self,
        method: str,
        url: str,
        *,
        action: str,
        idempotent: bool,
        job_url: str | None,
        auth: httpx.Auth,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.action = action
        self.idempotent = idempotent
        self.job_url = job_url
        self.auth = auth
        self.content = b"" if body is None else json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}


class _BaseClient:
    def __init__(self, settings: CMLSettings | None, retry: RetryPolicy | None) -> None:
        self.settings = settings if settings is not None else CMLSettings.load()
        self.retry = retry if retry is not None else RetryPolicy()

    def _client_options(self) -> dict[str, Any]:
        return {
            "timeout": httpx.Timeout(self.settings.timeout, connect=self.settings.connect_timeout),
            "verify": self.settings.verify(),
            "headers": {"User-Agent": f"cml-prefect/{__version__}"},
            "follow_redirects": False,
        }

    def _secrets(self) -> list[str]:
        keys = (self.settings.api_key, self.settings.api_v2_key)
        return [key.get_secret_value() for key in keys if key is not None]

    def _resolve(self, job: str | JobRef) -> JobRef:
        return JobRef.parse(job).with_host(self.settings.host)

    def _basic_auth(self, job: JobRef) -> httpx.BasicAuth:
        """v1 auth: the key as user name and an empty password, never over plain remote http."""
        self.settings.require("api_key")
        assert job.host is not None and self.settings.api_key is not None
        if job.host.startswith("http://") and not (
            is_loopback(job.host) or self.settings.allow_insecure_http
        ):
            raise CMLConfigError(
                f"Refusing to send the API key to {job.host} over plain http://: Basic auth "
                "would carry it in clear text across the network. Use https://, or set "
                "CML_ALLOW_INSECURE_HTTP=true if you accept that risk."
            )
        return httpx.BasicAuth(self.settings.api_key.get_secret_value(), "")

    def _start_request(
        self, job: str | JobRef, environment: Mapping[str, object] | None
    ) -> tuple[JobRef, dict[str, str], _Request]:
        ref = self._resolve(job)
        env = validate_environment(environment)
        request = _Request(
            "POST",
            ref.start_url,
            action=f"Starting {ref.slug}",
            idempotent=False,
            job_url=ref.page_url,
            auth=self._basic_auth(ref),
            body={"environment": env} if env else None,
        )
        return ref, env, request

    def _error(self, request: _Request, outcome: httpx.Response | httpx.TransportError) -> CMLError:
        if isinstance(outcome, httpx.Response):
            return error_for_response(
                outcome,
                action=request.action,
                idempotent=request.idempotent,
                job_url=request.job_url,
                secrets=self._secrets(),
            )
        return error_for_transport(
            outcome, action=request.action, idempotent=request.idempotent, job_url=request.job_url
        )

    @staticmethod
    def _started(
        response: httpx.Response, job: JobRef, environment: dict[str, str], requested_at: datetime
    ) -> StartedRun:
        try:
            engine_id = response.json()["engine_id"]
        except (ValueError, KeyError, TypeError):
            engine_id = None
        if not isinstance(engine_id, str) or not engine_id:
            raise CMLOutcomeUnknown(
                f"Starting {job.slug}: CML answered {response.status_code} without an engine id; "
                "the run may have started",
                job_url=job.page_url,
            )
        return StartedRun(
            engine_id=engine_id, job=job, environment=environment, requested_at=requested_at
        )


class CMLClient(_BaseClient):
    """Synchronous client. `with CMLClient() as cml: cml.start(url, {"START_DATE": ...})`."""

    def __init__(
        self,
        settings: CMLSettings | None = None,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(settings, retry)
        self._http = httpx.Client(transport=transport, **self._client_options())

    def start(
        self, job: str | JobRef, environment: Mapping[str, object] | None = None
    ) -> StartedRun:
        """Start one run of `job` through the v1 call; the environment overrides job defaults."""
        ref, env, request = self._start_request(job, environment)
        requested_at = datetime.now(UTC)
        return self._started(self._send(request), ref, env, requested_at)

    def _send(self, request: _Request) -> httpx.Response:
        state = self.retry.start()
        while True:
            try:
                response = self._http.request(
                    request.method,
                    request.url,
                    content=request.content,
                    headers=request.headers,
                    auth=request.auth,
                )
            except httpx.TransportError as exc:
                error = self._error(request, exc)
            else:
                if response.is_success:
                    return response
                error = self._error(request, response)
            time.sleep(state.delay_before_retry(error))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncCMLClient(_BaseClient):
    """Asynchronous client with the same methods as `CMLClient`, awaited."""

    def __init__(
        self,
        settings: CMLSettings | None = None,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(settings, retry)
        self._http = httpx.AsyncClient(transport=transport, **self._client_options())

    async def start(
        self, job: str | JobRef, environment: Mapping[str, object] | None = None
    ) -> StartedRun:
        """Start one run of `job` through the v1 call; the environment overrides job defaults."""
        ref, env, request = self._start_request(job, environment)
        requested_at = datetime.now(UTC)
        return self._started(await self._send(request), ref, env, requested_at)

    async def _send(self, request: _Request) -> httpx.Response:
        state = self.retry.start()
        while True:
            try:
                response = await self._http.request(
                    request.method,
                    request.url,
                    content=request.content,
                    headers=request.headers,
                    auth=request.auth,
                )
            except httpx.TransportError as exc:
                error = self._error(request, exc)
            else:
                if response.is_success:
                    return response
                error = self._error(request, response)
            await asyncio.sleep(state.delay_before_retry(error))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
