"""What a scheduled window run will do, decided before any request: pure, no Prefect."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict

from cml_tasks.backfill import PlannedWindow, window_key
from cml_tasks.errors import CMLInputError
from cml_tasks.job import JobRef
from cml_tasks.window_options import WindowOptions
from cml_tasks.windows import Cadence, Window, explicit_window, window_for


class WindowPlan(BaseModel):
    """One window run: the job, the window and the environment it sends."""

    model_config = ConfigDict(frozen=True)

    job: JobRef
    cadence: Cadence
    window: Window
    environment: dict[str, str]
    scheduled_for: datetime | None
    """The scheduled start time the window came from; None for an explicit window."""

    @property
    def scheduled_local(self) -> str:
        """The scheduled time in the cadence's zone, as the window was read; empty if explicit."""
        if self.scheduled_for is None:
            return ""
        local = self.scheduled_for.astimezone(self.cadence.zone)
        return f"{local.isoformat()} ({self.cadence.timezone})"

    @property
    def run_name(self) -> str:
        """`risk-analysis/208 2017-01`: the UI's run list reads like a calendar."""
        return f"{self.job.slug} {self.window.label}"

    def planned(self, job: JobRef) -> PlannedWindow:
        """The window as a backfill plans it, for `job` (the plan's job with its host)."""
        return PlannedWindow(
            window=self.window, key=window_key(job, self.window), environment=self.environment
        )


def plan_window_run(
    job: str,
    options: WindowOptions | None = None,
    *,
    lag: int = 1,
    window_start: date | None = None,
    window_end: date | None = None,
    scheduled_for: datetime | None = None,
) -> WindowPlan:
    """Validate every input and pick the window: explicit if given, else from `scheduled_for`.

    Raises `CMLInputError` for any bad input.
    """
    ref = JobRef.parse(job)
    options = options if options is not None else WindowOptions()
    cadence = options.cadence
    if window_start is not None:
        window = explicit_window(cadence, window_start, window_end)
        scheduled_for = None
    elif window_end is not None:
        raise CMLInputError(
            f"window_end {window_end.isoformat()} given without window_start: give both "
            "(or only window_start), or neither to use the scheduled start time"
        )
    elif scheduled_for is None:
        raise CMLInputError(
            "no window: give window_start (and optionally window_end), or run as a flow run "
            "whose scheduled start time picks the window"
        )
    else:
        window = window_for(scheduled_for, cadence, lag=lag)
    return WindowPlan(
        job=ref,
        cadence=cadence,
        window=window,
        environment=options.rendering.environment(window),
        scheduled_for=scheduled_for,
    )
