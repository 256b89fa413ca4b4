"""Each Prefect internal that `cml_tasks/prefect/_adapter.py` uses, pinned: these fail when a
Prefect upgrade moves or changes one, before a backfill in production does."""

from __future__ import annotations

import logging
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import VariableCreate

from cml_tasks.prefect import _adapter
from cml_tasks.record_layout import named_like, tagged


def test_cancel_intent_is_read_from_the_control_listener() -> None:
    from prefect._internal import control_listener

    assert _adapter.cancel_requested() is False
    control_listener._set_intent("cancel")
    try:
        assert _adapter.cancel_requested() is True
    finally:
        control_listener._clear_intent()
    assert _adapter.cancel_requested() is False


@pytest.mark.usefixtures("prefect_api")
def test_variables_are_filtered_by_tag_and_paged() -> None:
    tag = f"cml-test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        for i in range(5):
            client.create_variable(VariableCreate(name=f"{tag}-{i}", value={"i": i}, tags=[tag]))
        client.create_variable(VariableCreate(name=f"{tag}-other", value={"i": -1}))
        first = _adapter.filter_variables(client, tagged(tag), offset=0, limit=3)
        rest = _adapter.filter_variables(client, tagged(tag), offset=3, limit=3)
        named = _adapter.filter_variables(client, named_like(f"{tag}-o"), offset=0, limit=9)
    values = sorted(item["value"]["i"] for item in first + rest)
    assert (len(first), len(rest), values) == (3, 2, [0, 1, 2, 3, 4])
    assert [item["name"] for item in named] == [f"{tag}-other"]


@pytest.mark.usefixtures("prefect_api")
def test_queued_logs_and_events_are_flushed() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    assert callable(APILogWorker.drain_all) and callable(EventsWorker.drain_all)
    _adapter.flush_to_api(timeout=5)


def test_without_client_retries_sets_none_and_builds_its_settings_once() -> None:
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    default = PREFECT_CLIENT_MAX_RETRIES.value()
    assert default > 0
    with _adapter.without_client_retries() as first:
        assert PREFECT_CLIENT_MAX_RETRIES.value() == 0
    with _adapter.without_client_retries() as second:
        assert second.settings is first.settings
    assert PREFECT_CLIENT_MAX_RETRIES.value() == default
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 9}):  # other settings: a new copy
        with _adapter.without_client_retries() as third:
            assert PREFECT_CLIENT_MAX_RETRIES.value() == 0
        assert third.settings is not first.settings
        assert PREFECT_CLIENT_MAX_RETRIES.value() == 9


def test_an_unreachable_api_is_said_once_per_stretch_at_warning() -> None:
    """Prefect's client logs each resend to an API that does not answer at DEBUG; the first
    of a stretch comes out as one warning naming the error, and no other DEBUG line."""
    import httpx
    from conftest import free_port
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    _adapter.tell_when_api_unreachable()
    _adapter.tell_when_api_unreachable()  # once is enough, however often it is called
    logger = logging.getLogger("prefect.client")
    assert sum(isinstance(f, _adapter._TellUnreachable) for f in logger.filters) == 1
    said: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = said.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    url = f"http://127.0.0.1:{free_port()}/api"
    try:
        with (
            temporary_settings({PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 1}),
            get_client(sync_client=True) as client,
        ):
            client._client._has_connected = True  # as after a first answer: resends
            with pytest.raises(httpx.ConnectError):
                client.read_variable_by_name("anything")
    finally:
        logger.removeHandler(handler)
    assert [(r.levelname, r.getMessage()) for r in said] == [
        (
            "WARNING",
            "The Prefect API is unreachable (ConnectError): Prefect's client sends again for "
            "about a minute (PREFECT_CLIENT_MAX_RETRIES=1)",
        )
    ]
