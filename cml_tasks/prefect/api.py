"""One Prefect API client per process and API URL, shared by every task run and thread.

`get_client()` builds a new HTTP client (and loads the CA store) each time; a backfill asks
the API several times per window, so it reuses this one instead.
"""

from __future__ import annotations

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import get_current_settings

from cml_tasks._shared import shared


def prefect_api() -> SyncPrefectClient:
    """The process's client for the current Prefect API (an ephemeral one without a URL)."""
    url = get_current_settings().api.url
    return _client(str(url) if url else None)


def api_is_shared() -> bool:
    """False on an ephemeral API (no `PREFECT_API_URL`): only this machine can see it."""
    return get_current_settings().api.url is not None


@shared
def _client(api_url: str | None) -> SyncPrefectClient:
    client = get_client(sync_client=True)
    client.__enter__()  # one connection pool for the process's lifetime
    return client


def tag_current_flow_run(tags: list[str]) -> None:
    """Add `tags` to the running flow run (its job's tags are known only once it runs)."""
    from prefect.runtime import flow_run

    if flow_run.id is None:
        return
    client = prefect_api()
    current = client.read_flow_run(flow_run.id)
    client.update_flow_run(flow_run.id, tags=sorted({*current.tags, *tags}))
