"""httpx clients for the CML Jobs API, sync (`CMLClient`) and async (`AsyncCMLClient`).

Each client owns one connection pool; reuse it across many starts. Input is validated and
credentials are checked before anything is sent; failures come back as typed errors.

The API v2 calls are written once, in `_BaseClient`, as generators that yield the requests
they need and receive the answers ("sans-IO"); each client only drives them with its own
`_send`, so the sync and async twins cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from cml_tasks._http import (
    ACCEPT_ENCODING,
    LIST_PAGE,
    ONE_OBJECT,
    AnswerReader,
    enforce_deadlines,
    error_for_response,
    error_for_transport,
    json_body,
    redact,
    request_deadline,
    unreadable,
)
from cml_tasks._retry import RetryPolicy
from cml_tasks._text import has_unsafe, printable
from cml_tasks._version import __version__
from cml_tasks.environment import validate_environment
from cml_tasks.errors import (
    CMLConfigError,
    CMLError,
    CMLInputError,
    CMLNotFoundError,
    CMLOutcomeUnknown,
    CMLProtocolError,
)
from cml_tasks.job import JobRef, is_loopback
from cml_tasks.models import SERVER_ID, JobRun, RunPage, StartedRun
from cml_tasks.settings import CMLSettings

T = TypeVar("T")
_LOOKUP_PAGE_SIZE = 100
_MAX_PAGE_TOKEN = 4096
MAX_PAGES = 1000
"""Most pages one listing follows (a project or job lookup, `list_runs`): 100,000 items at
100 a page. A server still handing out page tokens after that, or handing out a token it
already gave, is answering wrongly (`CMLProtocolError`), not listing: without the bound a
repeated `next_page_token` made 1,500 requests in 75 s and never ended."""
_Flow = Generator["_Request", httpx.Response, T]
"""A v2 call as a generator: yields each request, receives its (successful) answer."""


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
        params: dict[str, str] | None = None,
        key_setting: str = "CML_API_KEY",
        max_bytes: int = ONE_OBJECT,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.action = action
        self.idempotent = idempotent
        self.job_url = job_url
        self.auth = auth
        self.params = params or {}
        self.key_setting = key_setting
        self.max_bytes = max_bytes
        self.retry = retry
        """Overrides the client's policy for this call (a waiter bounded by its deadline)."""
        self.content = b"" if body is None else json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if method == "GET":
            # A status poll must reach CML: no proxy or cache may answer it.
            self.headers["Cache-Control"] = "no-cache"


class _BearerAuth(httpx.Auth):
    """API v2 auth: `Authorization: Bearer <key>`."""

    def __init__(self, key: str) -> None:
        self._header = f"Bearer {key}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class _BaseClient:
    def __init__(self, settings: CMLSettings | None, retry: RetryPolicy | None) -> None:
        self.settings = settings if settings is not None else CMLSettings.load()
        self.retry = retry if retry is not None else RetryPolicy()
        self._v2_ids: dict[JobRef, tuple[str, str]] = {}

    def _client_options(self) -> dict[str, Any]:
        return {
            "timeout": httpx.Timeout(self.settings.timeout, connect=self.settings.connect_timeout),
            "verify": self._verify(),
            # Only the codings `AnswerReader` decodes under its cap (httpx would add br, zstd).
            "headers": {
                "User-Agent": f"cml-prefect/{__version__}",
                "Accept-Encoding": ACCEPT_ENCODING,
            },
            "follow_redirects": False,
        }

    def _verify(self) -> ssl.SSLContext | bool:
        """TLS verification: the CA bundle loaded now, so a bad file is a settings error."""
        verify = self.settings.verify()
        if not isinstance(verify, str):
            return verify
        try:
            return ssl.create_default_context(cafile=verify)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise CMLConfigError(
                f"CML_CA_BUNDLE: {verify} is not a readable PEM CA bundle "
                f"({type(exc).__name__}: {exc})"
            ) from None

    def _secrets(self) -> list[str]:
        keys = (self.settings.api_key, self.settings.api_v2_key)
        return [key.get_secret_value() for key in keys if key is not None]

    def _resolve(self, job: str | JobRef) -> JobRef:
        return JobRef.parse(job).with_host(self.settings.host)

    def _basic_auth(self, job: JobRef) -> httpx.BasicAuth:
        """v1 auth: the key as user name and an empty password, never over plain remote http."""
        self.settings.require("api_key")
        assert self.settings.api_key is not None
        self._refuse_plain_http(job, "Basic auth")
        return httpx.BasicAuth(self.settings.api_key.get_secret_value(), "")

    def _bearer_auth(self, job: JobRef) -> _BearerAuth:
        """v2 auth: the v2 key as a Bearer token, under the same plain-http rule as v1."""
        self.settings.require("api_v2_key")
        assert self.settings.api_v2_key is not None
        self._refuse_plain_http(job, "Bearer auth")
        return _BearerAuth(self.settings.api_v2_key.get_secret_value())

    def _refuse_plain_http(self, job: JobRef, scheme: str) -> None:
        assert job.host is not None
        if job.host.startswith("http://") and not (
            is_loopback(job.host) or self.settings.allow_insecure_http
        ):
            raise CMLConfigError(
                f"Refusing to send the API key to {job.host} over plain http://: {scheme} "
                "would carry it in clear text across the network. Use https://, or set "
                "CML_ALLOW_INSECURE_HTTP=true if you accept that risk."
            )

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
                key_setting=request.key_setting,
            )
        return error_for_transport(
            outcome,
            action=request.action,
            idempotent=request.idempotent,
            job_url=request.job_url,
            secrets=self._secrets(),
        )

    def _answer(self, request: _Request, reader: AnswerReader) -> httpx.Response:
        """The answer as read; a 2xx cut at the size cap is unusable (see `unreadable`)."""
        response = reader.response()
        if response.is_success and reader.refused is not None:
            raise self._unreadable(
                request,
                f"CML answered {response.status_code} with {reader.refused}; refused unread",
            )
        if response.is_success and not reader.complete:
            raise self._unreadable(
                request,
                f"CML answered {response.status_code} with more than {reader.limit} bytes",
            )
        return response

    def _unreadable(self, request: _Request, detail: str) -> CMLError:
        return unreadable(
            detail, action=request.action, idempotent=request.idempotent, job_url=request.job_url
        )

    # --- API v2, as generators driven by `_drive` (see the module docstring) -----------------

    def _v2_request(
        self,
        method: str,
        job: JobRef,
        path: str,
        *,
        action: str,
        idempotent: bool,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        max_bytes: int = ONE_OBJECT,
        retry: RetryPolicy | None = None,
    ) -> _Request:
        assert job.host is not None
        return _Request(
            method,
            f"{job.host}/api/v2/{path}",
            action=action,
            idempotent=idempotent,
            job_url=job.page_url,
            auth=self._bearer_auth(job),
            body=body,
            params=params,
            key_setting="CML_API_V2_KEY",
            max_bytes=max_bytes,
            retry=retry,
        )

    def _ids(self, job: JobRef) -> _Flow[tuple[str, str]]:
        """API v2's opaque (project id, job id) for a job named by user/project/job; cached."""
        cached = self._v2_ids.get(job)
        if cached is not None:
            return cached
        self._bearer_auth(job)  # fail on a missing key before the first lookup
        project_id = yield from self._find_project(job)
        job_id = yield from self._find_job(job, project_id)
        self._v2_ids[job] = (project_id, job_id)
        return project_id, job_id

    def _find_project(self, job: JobRef) -> _Flow[str]:
        """The v2 id of the project named in the job's URL, looked for on every page.

        Two projects with the job's owner and name are refused (`CMLProtocolError`, naming
        both ids): owner and name make a project's URL, which CML keeps unique, so two is a
        wrong answer, and the job URL cannot tell them apart; guessing could start a job
        of the wrong project.
        """
        wanted = {"name": job.project, "owner.username": job.username}
        params = {"search_filter": json.dumps(wanted), "page_size": str(_LOOKUP_PAGE_SIZE)}
        action = f"Looking up project {job.username}/{job.project}"
        paging = _Paging(action, job)
        found: list[str] = []
        while True:
            request = self._v2_request(
                "GET",
                job,
                "projects",
                action=action,
                idempotent=True,
                params=params,
                max_bytes=LIST_PAGE,
            )
            body = _object((yield request), action, job)
            # The filter matches substrings: compare exactly here.
            for project in _items(body, "projects", action, job):
                owner = project.get("owner")
                username = owner.get("username") if isinstance(owner, dict) else None
                if project.get("name") == job.project and username == job.username:
                    project_id = _server_id(project.get("id"), "project id", action, job)
                    if project_id not in found:
                        found.append(project_id)
            token = paging.follow(_page_token(body, action, job))
            if not token:
                break
            params = {**params, "page_token": token}
        if len(found) > 1:
            ids = redact(", ".join(found), self._secrets())  # ids are server text, too
            raise CMLProtocolError(
                f"{action}: CML lists {len(found)} projects with that owner and name "
                f"({ids}); refusing to guess which one holds the job",
                job_url=job.page_url,
            )
        if not found:
            raise _lookup_failed(f"{action}: no such project visible to this API v2 key", job)
        return found[0]

    def _find_job(self, job: JobRef, project_id: str) -> _Flow[str]:
        """The job whose v2 id is the URL's job id, else the one job so named; every page."""
        action = f"Looking up job {job.job_id} in {job.username}/{job.project}"
        params = {"page_size": str(_LOOKUP_PAGE_SIZE)}
        paging = _Paging(action, job)
        named: list[str] = []
        while True:
            path = f"projects/{_seg(project_id)}/jobs"
            request = self._v2_request(
                "GET", job, path, action=action, idempotent=True, params=params, max_bytes=LIST_PAGE
            )
            body = _object((yield request), action, job)
            for item in _items(body, "jobs", action, job):
                if item.get("id") == job.job_id:
                    return job.job_id
                if item.get("name") == job.job_id:
                    named.append(_server_id(item.get("id"), "job id", action, job))
            token = paging.follow(_page_token(body, action, job))
            if not token:
                break
            params = {**params, "page_token": token}
        if len(named) == 1:
            return named[0]
        if named:
            raise CMLInputError(f"{action}: {len(named)} jobs have that name; use the job's id")
        raise _lookup_failed(f"{action}: no such job in the project", job)

    def _runs_path(self, job: JobRef) -> _Flow[str]:
        project_id, job_id = yield from self._ids(job)
        return _runs_path(project_id, job_id)

    def _create_run(
        self, job: str | JobRef, environment: Mapping[str, object] | None, arguments: str | None
    ) -> _Flow[JobRun]:
        ref = self._resolve(job)
        env = validate_environment(environment)
        if arguments is not None and not isinstance(arguments, str):
            raise CMLInputError(f"arguments must be a string, not {type(arguments).__name__}")
        self._bearer_auth(ref)
        project_id, job_id = yield from self._ids(ref)
        path = _runs_path(project_id, job_id)
        body: dict[str, Any] = {"project_id": project_id, "job_id": job_id, "environment": env}
        if arguments is not None:
            body["arguments"] = arguments
        action = f"Starting {ref.slug} (API v2)"
        response = yield self._v2_request(
            "POST", ref, path, action=action, idempotent=False, body=body
        )
        try:
            return _decode_run(_object(response, action, ref), ref)
        except CMLProtocolError as error:
            raise CMLOutcomeUnknown(
                f"{action}: CML answered {response.status_code} with no readable run ({error}); "
                "the run may have started",
                job_url=ref.page_url,
            ) from None

    def _get_run(self, job: str | JobRef, run_id: str, retry: RetryPolicy | None) -> _Flow[JobRun]:
        ref, run_id = self._resolve(job), _check_run_id(run_id)
        self._bearer_auth(ref)
        path = yield from self._runs_path(ref)
        action = f"Reading run {run_id} of {ref.slug}"
        response = yield self._v2_request(
            "GET", ref, f"{path}/{run_id}", action=action, idempotent=True, retry=retry
        )
        return _decode_run(_object(response, action, ref), ref)

    def _stop_run(self, job: str | JobRef, run_id: str, retry: RetryPolicy | None) -> _Flow[JobRun]:
        ref, run_id = self._resolve(job), _check_run_id(run_id)
        self._bearer_auth(ref)
        path = yield from self._runs_path(ref)
        action = f"Stopping run {run_id} of {ref.slug}"
        # Stopping twice stops once: safe to retry.
        response = yield self._v2_request(
            "POST",
            ref,
            f"{path}/{run_id}:stop",
            action=action,
            idempotent=True,
            body={},
            retry=retry,
        )
        return _decode_run(_object(response, action, ref), ref)

    def _list_runs_page(
        self,
        job: str | JobRef,
        *,
        page_size: int | None,
        sort: str | None,
        search_filter: Mapping[str, object] | str | None,
        page_token: str | None,
        retry: RetryPolicy | None,
    ) -> _Flow[RunPage]:
        ref = self._resolve(job)
        params: dict[str, str] = {}
        if page_size is not None:
            if page_size < 1:
                raise CMLInputError(f"page_size must be at least 1, not {page_size}")
            params["page_size"] = str(page_size)
        if sort:
            params["sort"] = sort
        if search_filter:
            params["search_filter"] = (
                search_filter if isinstance(search_filter, str) else json.dumps(search_filter)
            )
        if page_token:
            params["page_token"] = page_token
        self._bearer_auth(ref)
        path = yield from self._runs_path(ref)
        action = f"Listing runs of {ref.slug}"
        request = self._v2_request(
            "GET",
            ref,
            path,
            action=action,
            idempotent=True,
            params=params,
            max_bytes=LIST_PAGE,
            retry=retry,
        )
        body = _object((yield request), action, ref)
        runs = [_decode_run(item, ref) for item in _items(body, "job_runs", action, ref)]
        return RunPage(runs=runs, next_page_token=_page_token(body, action, ref))

    @staticmethod
    def _started(
        response: httpx.Response, job: JobRef, environment: dict[str, str], requested_at: datetime
    ) -> StartedRun:
        body = json_body(response)
        engine_id = body.get("engine_id") if isinstance(body, dict) else None
        if not isinstance(engine_id, str) or not SERVER_ID.fullmatch(engine_id):
            what = "with an invalid" if isinstance(engine_id, str) else "without an"
            raise CMLOutcomeUnknown(
                f"Starting {job.slug}: CML answered {response.status_code} {what} engine id; "
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
        enforce_deadlines(self._http)

    def start(
        self, job: str | JobRef, environment: Mapping[str, object] | None = None
    ) -> StartedRun:
        """Start one run of `job` through the v1 call; the environment overrides job defaults."""
        ref, env, request = self._start_request(job, environment)
        requested_at = datetime.now(UTC)
        return self._started(self._send(request), ref, env, requested_at)

    def create_run(
        self,
        job: str | JobRef,
        environment: Mapping[str, object] | None = None,
        arguments: str | None = None,
    ) -> JobRun:
        """Create and start a run (API v2). Never retried once sent: see `CMLOutcomeUnknown`."""
        return self._drive(self._create_run(job, environment, arguments))

    def get_run(
        self, job: str | JobRef, run_id: str, *, retry: RetryPolicy | None = None
    ) -> JobRun:
        """Read one run, fresh from CML; retried on transient failures (`retry`: this call's
        own policy instead of the client's)."""
        return self._drive(self._get_run(job, run_id, retry))

    def stop_run(
        self, job: str | JobRef, run_id: str, *, retry: RetryPolicy | None = None
    ) -> JobRun:
        """Ask CML to stop a run (`:stop`); a finished run is left as it is, and the answer
        says how it ended."""
        return self._drive(self._stop_run(job, run_id, retry))

    def list_runs_page(
        self,
        job: str | JobRef,
        *,
        page_size: int | None = None,
        sort: str | None = "-created_at",
        search_filter: Mapping[str, object] | str | None = None,
        page_token: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> RunPage:
        """One page of a job's runs, newest first unless `sort` says otherwise."""
        return self._drive(
            self._list_runs_page(
                job,
                page_size=page_size,
                sort=sort,
                search_filter=search_filter,
                page_token=page_token,
                retry=retry,
            )
        )

    def list_runs(
        self,
        job: str | JobRef,
        *,
        page_size: int | None = None,
        sort: str | None = "-created_at",
        search_filter: Mapping[str, object] | str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Iterator[JobRun]:
        """Every run of a job, fetching pages lazily as the iteration reaches them; at most
        `MAX_PAGES` pages, and a page token CML repeats is a `CMLProtocolError`."""
        ref = self._resolve(job)
        paging = _Paging(f"Listing runs of {ref.slug}", ref)
        token: str | None = None
        while True:
            page = self.list_runs_page(
                job,
                page_size=page_size,
                sort=sort,
                search_filter=search_filter,
                page_token=token,
                retry=retry,
            )
            yield from page.runs
            token = paging.follow(page.next_page_token)
            if not token:
                return

    def _drive(self, flow: _Flow[T]) -> T:
        try:
            request = next(flow)
            while True:
                request = flow.send(self._send(request))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _send(self, request: _Request) -> httpx.Response:
        state = (request.retry or self.retry).start()
        while True:
            try:
                response = self._exchange(request)
            except httpx.TransportError as exc:
                error = self._error(request, exc)
            else:
                if response.is_success:
                    return response
                error = self._error(request, response)
            time.sleep(state.delay_before_retry(error))

    def _exchange(self, request: _Request) -> httpx.Response:
        """One request, connect to last byte within `CML_TIMEOUT` in total; the answer
        decoded as it arrives, within the request's size cap."""
        with (
            request_deadline(self.settings.timeout) as deadline,
            self._http.stream(
                request.method,
                request.url,
                content=request.content,
                headers=request.headers,
                params=request.params,
                auth=request.auth,
            ) as response,
        ):
            deadline.answered = True
            reader = AnswerReader(response, limit=request.max_bytes, deadline=deadline)
            try:
                if reader.wants_more():
                    for chunk in response.iter_raw():
                        if not reader.add(chunk):
                            break
            except httpx.DecodingError as exc:
                raise self._unreadable(
                    request, f"CML's answer could not be decoded ({exc})"
                ) from None
        return self._answer(request, reader)

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
        enforce_deadlines(self._http)

    async def start(
        self, job: str | JobRef, environment: Mapping[str, object] | None = None
    ) -> StartedRun:
        """Start one run of `job` through the v1 call; the environment overrides job defaults."""
        ref, env, request = self._start_request(job, environment)
        requested_at = datetime.now(UTC)
        return self._started(await self._send(request), ref, env, requested_at)

    async def create_run(
        self,
        job: str | JobRef,
        environment: Mapping[str, object] | None = None,
        arguments: str | None = None,
    ) -> JobRun:
        """Create and start a run (API v2). Never retried once sent: see `CMLOutcomeUnknown`."""
        return await self._drive(self._create_run(job, environment, arguments))

    async def get_run(
        self, job: str | JobRef, run_id: str, *, retry: RetryPolicy | None = None
    ) -> JobRun:
        """Read one run, fresh from CML; retried on transient failures (`retry`: this call's
        own policy instead of the client's)."""
        return await self._drive(self._get_run(job, run_id, retry))

    async def stop_run(
        self, job: str | JobRef, run_id: str, *, retry: RetryPolicy | None = None
    ) -> JobRun:
        """Ask CML to stop a run (`:stop`); a finished run is left as it is, and the answer
        says how it ended."""
        return await self._drive(self._stop_run(job, run_id, retry))

    async def list_runs_page(
        self,
        job: str | JobRef,
        *,
        page_size: int | None = None,
        sort: str | None = "-created_at",
        search_filter: Mapping[str, object] | str | None = None,
        page_token: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> RunPage:
        """One page of a job's runs, newest first unless `sort` says otherwise."""
        return await self._drive(
            self._list_runs_page(
                job,
                page_size=page_size,
                sort=sort,
                search_filter=search_filter,
                page_token=page_token,
                retry=retry,
            )
        )

    async def list_runs(
        self,
        job: str | JobRef,
        *,
        page_size: int | None = None,
        sort: str | None = "-created_at",
        search_filter: Mapping[str, object] | str | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncIterator[JobRun]:
        """Every run of a job, fetching pages lazily as the iteration reaches them; at most
        `MAX_PAGES` pages, and a page token CML repeats is a `CMLProtocolError`."""
        ref = self._resolve(job)
        paging = _Paging(f"Listing runs of {ref.slug}", ref)
        token: str | None = None
        while True:
            page = await self.list_runs_page(
                job,
                page_size=page_size,
                sort=sort,
                search_filter=search_filter,
                page_token=token,
                retry=retry,
            )
            for run in page.runs:
                yield run
            token = paging.follow(page.next_page_token)
            if not token:
                return

    async def _drive(self, flow: _Flow[T]) -> T:
        try:
            request = next(flow)
            while True:
                request = flow.send(await self._send(request))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _send(self, request: _Request) -> httpx.Response:
        state = (request.retry or self.retry).start()
        while True:
            try:
                response = await self._exchange(request)
            except httpx.TransportError as exc:
                error = self._error(request, exc)
            else:
                if response.is_success:
                    return response
                error = self._error(request, response)
            await asyncio.sleep(state.delay_before_retry(error))

    async def _exchange(self, request: _Request) -> httpx.Response:
        """One request, connect to last byte within `CML_TIMEOUT` in total; the answer
        decoded as it arrives, within the request's size cap."""
        with request_deadline(self.settings.timeout) as deadline:
            async with self._http.stream(
                request.method,
                request.url,
                content=request.content,
                headers=request.headers,
                params=request.params,
                auth=request.auth,
            ) as response:
                deadline.answered = True
                reader = AnswerReader(response, limit=request.max_bytes, deadline=deadline)
                try:
                    if reader.wants_more():
                        async for chunk in response.aiter_raw():
                            if not reader.add(chunk):
                                break
                except httpx.DecodingError as exc:
                    raise self._unreadable(
                        request, f"CML's answer could not be decoded ({exc})"
                    ) from None
        return self._answer(request, reader)

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


def _seg(value: str) -> str:
    """One URL path segment (ids are opaque: never let one add a path level)."""
    return quote(value, safe="")


def _runs_path(project_id: str, job_id: str) -> str:
    return f"projects/{_seg(project_id)}/jobs/{_seg(job_id)}/runs"


def _check_run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not SERVER_ID.fullmatch(run_id):
        raise CMLInputError(
            f"Invalid run id {printable(repr(run_id)[:120])}: expected letters, digits, "
            "'-', '_' or '.'"
        )
    return run_id


def _object(response: httpx.Response, action: str, job: JobRef) -> dict[str, Any]:
    body = json_body(response)
    if not isinstance(body, dict):
        raise CMLProtocolError(
            f"{action}: CML answered {response.status_code} without a JSON object",
            job_url=job.page_url,
        )
    return body


def _items(body: dict[str, Any], key: str, action: str, job: JobRef) -> list[dict[str, Any]]:
    """The list under `key` (absent: empty, as proto3 JSON leaves it out); anything else is
    a protocol error."""
    items = body.get(key)
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise CMLProtocolError(
            f"{action}: CML's `{key}` is not a list of objects", job_url=job.page_url
        )
    return items


def _server_id(value: object, what: str, action: str, job: JobRef) -> str:
    if not isinstance(value, str) or not SERVER_ID.fullmatch(value):
        raise CMLProtocolError(f"{action}: CML answered an invalid {what}", job_url=job.page_url)
    return value


def _page_token(body: dict[str, Any], action: str, job: JobRef) -> str:
    token = body.get("next_page_token")
    if token is None or token == "":
        return ""
    if (
        not isinstance(token, str)
        or len(token) > _MAX_PAGE_TOKEN
        or has_unsafe(token)
        or any(char.isspace() for char in token)
    ):
        raise CMLProtocolError(
            f"{action}: CML answered an invalid next_page_token", job_url=job.page_url
        )
    return token


class _Paging:
    """The page tokens of one listing, so that a server cannot make it endless."""

    def __init__(self, action: str, job: JobRef) -> None:
        self._action = action
        self._job = job
        self._seen: set[str] = set()
        self._pages = 0

    def follow(self, token: str) -> str:
        """Count the page just read and return its `token` ("" after the last page).

        A token already handed out would only lead round the same pages again, and a
        listing past `MAX_PAGES` pages is not one CML would give: both are a
        `CMLProtocolError`, raised instead of asking for another page.
        """
        self._pages += 1
        if not token:
            return token
        if token in self._seen:
            raise CMLProtocolError(
                f"{self._action}: CML answered a next_page_token it had already given "
                f"(page {self._pages}); stopping, as following it would never end",
                job_url=self._job.page_url,
            )
        if self._pages >= MAX_PAGES:
            raise CMLProtocolError(
                f"{self._action}: CML still answered a next_page_token after {MAX_PAGES} "
                "pages (MAX_PAGES); stopping",
                job_url=self._job.page_url,
            )
        self._seen.add(token)
        return token


def _decode_run(item: dict[str, Any], job: JobRef) -> JobRun:
    try:
        return JobRun.model_validate({**item, "job": job})
    except ValidationError as exc:
        raise CMLProtocolError(
            f"Reading a run of {job.slug}: unexpected answer from CML "
            f"({exc.error_count()} invalid fields, e.g. {exc.errors()[0]['loc']})",
            job_url=job.page_url,
        ) from None


def _lookup_failed(message: str, job: JobRef) -> CMLNotFoundError:
    return CMLNotFoundError(message, status_code=404, job_url=job.page_url)
