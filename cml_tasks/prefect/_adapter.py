"""Every use of a Prefect internal, in one place.

Prefect's public API does not offer these; each is pinned by a test in
`tests/test_prefect_adapter.py` that fails when a Prefect upgrade changes it, so an upgrade
breaks one module and one test file, not the behaviour of a backfill in production.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any

from prefect.blocks.core import Block
from prefect.client.orchestration import SyncPrefectClient
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, Settings

from cml_tasks._stretch import Stretch


def cancel_requested() -> bool:
    """True once Prefect's runner has told this process it is cancelling the flow run.

    The runner (`serve`, a process worker) sends the intent over its control channel just
    before SIGTERM; the SIGTERM reaches only the main thread, so task runs in worker threads
    read the intent instead. Internal: `prefect._internal.control_listener.get_intent`.
    """
    from prefect._internal.control_listener import get_intent

    return get_intent() == "cancel"


def temporary_server_failed(error: BaseException) -> int | None:
    """The startup timeout (seconds) when `error` is Prefect's failure to start its temporary
    server (a `RuntimeError` it words this way), else None. Internal: the message of
    `prefect.server.api.server.SubprocessASGIServer.start`."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if not str(error).startswith("Timed out while attempting to connect to ephemeral Prefect"):
        return None
    seconds: int = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    return seconds


_retryless: tuple[Settings, Settings] | None = None
"""The last settings given to `without_client_retries`, and their copy without retries."""


def without_client_retries() -> AbstractContextManager[Any]:
    """Prefect's client, inside this, sends a request once: it reads
    `PREFECT_CLIENT_MAX_RETRIES` at each call. `temporary_settings` would do, but it builds
    the settings anew each time, reading Prefect's settings files (15% of a backfill's CPU
    when every window did); the copy here is built once per settings. Internal: entering a
    `SettingsContext` with settings of our own."""
    global _retryless
    context = get_settings_context()
    if _retryless is None or _retryless[0] is not context.settings:
        copy = context.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
        _retryless = (context.settings, copy)
    return SettingsContext(profile=context.profile, settings=_retryless[1])


def filter_variables(
    client: SyncPrefectClient, body: dict[str, Any], *, offset: int, limit: int
) -> list[dict[str, Any]]:
    """One page of the variables `body` filters (`record_layout.tagged`, `named_like`), as
    the API returns them (the client's own `read_variables` takes no filter; its `request`
    helper and the route are not documented)."""
    response = client.request(
        "POST", "/variables/filter", json=body | {"offset": offset, "limit": limit}
    )
    page: list[dict[str, Any]] = response.json()
    return page


def block_reference(block: Block) -> dict[str, Any]:
    """A saved block as a flow-run parameter (`{"$ref": {"block_document_id": ...}}`, the form
    deployments use): the worker loads it, no secret travels in the parameters. Internal:
    the block's `_block_document_id`."""
    document_id = block._block_document_id
    if document_id is None:
        raise ValueError("save the credentials block before passing it to scale-out runs")
    return {"$ref": {"block_document_id": str(document_id)}}


def flush_to_api(timeout: float = 10.0) -> None:
    """Send the logs and events still queued in this process, before its Prefect server
    goes away (else their workers retry against a closed port for a minute at exit).
    Internal: the workers' `drain_all` (Prefect's `QueueService`)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


class _NoEmptyTraceback(logging.Filter):
    """Drops `exc_info` from a record logged outside any exception (it prints as the line
    `NoneType: None`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None and record.exc_info[0] is None:
            record.exc_info = None
        return True


def drop_empty_tracebacks() -> None:
    """Prefect's task engine logs a task run that returned a Failed state with
    `exc_info=True` but no exception (`prefect.task_engine`, "Task run failed with state"),
    which prints a stray `NoneType: None`: filter that out of the task-run logger."""
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _NoEmptyTraceback) for f in logger.filters):
        logger.addFilter(_NoEmptyTraceback())


UNREACHABLE_STRETCH_SECONDS = 60.0
"""Resends less than this apart are one stretch of an unreachable API, said once."""


class _TellUnreachable(logging.Filter):
    """Raises the first of a stretch of Prefect's "Encountered retryable exception" resends
    to a warning naming the error; lets through nothing else below `level`."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self._stretch = Stretch(UNREACHABLE_STRETCH_SECONDS)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        if not str(record.msg).startswith("Encountered retryable exception"):
            return False
        if not self._stretch.begins():
            return False
        error = record.exc_info[1] if record.exc_info else None
        record.msg = (
            "The Prefect API is unreachable (%s): Prefect's client sends again for about a "
            "minute (PREFECT_CLIENT_MAX_RETRIES=%d)"
        )
        record.args = (type(error).__name__, PREFECT_CLIENT_MAX_RETRIES.value())
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


def tell_when_api_unreachable() -> None:
    """Prefect's client resends a request the API did not answer (a server restarting) for
    about a minute, saying so only at DEBUG: say it at WARNING, once per stretch. Internal:
    the message of `prefect.client.base.PrefectHttpxAsyncClient._send_with_retry`."""
    logger = logging.getLogger("prefect.client")
    if any(isinstance(f, _TellUnreachable) for f in logger.filters):
        return
    logger.addFilter(_TellUnreachable(logger.getEffectiveLevel()))
    logger.setLevel(min(logger.getEffectiveLevel(), logging.DEBUG))
