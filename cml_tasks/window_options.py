"""`WindowOptions`: how a job's calendar is cut into windows and how a window becomes its
environment. One frozen model for the CLI, the flows, planning and scale-out, so the eight
options are typed, described and checked in one place.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cml_tasks.errors import CMLInputError
from cml_tasks.windows import Cadence, Rendering, Unit, make_rendering, parse_every

CADENCE_UNITS = tuple(unit.value for unit in Unit)
"""The cadences the forms list (`day` .. `year`); any other is typed in."""


def _cadence_choice(schema: dict[str, Any]) -> None:
    """The cadence in forms: a choice of the calendar units, or any other cadence as text
    ("3 months"); either is a string, so validation is unchanged."""
    schema.pop("type", None)
    schema["anyOf"] = [
        {"type": "string", "enum": list(CADENCE_UNITS), "title": "Calendar unit"},
        {"type": "string", "title": 'Other (e.g. "3 months")'},
    ]


class WindowOptions(BaseModel):
    """Cadence and rendering of a job's date windows (the defaults: calendar months, UTC,
    `START_DATE`/`END_DATE` as `%Y-%m-%d`, the end being the window's last day)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Window options")

    every: str = Field(
        title="Cadence",
        default="month",
        description='Cadence: "day", "week", "month", "quarter", "year", or e.g. "3 months".',
        json_schema_extra=_cadence_choice,
    )
    timezone: str = Field(
        title="Time zone",
        default="UTC",
        description='IANA zone the scheduled time is read in, e.g. "Europe/Berlin".',
    )
    week_start: str = Field(
        title="Week starts on",
        default="monday",
        description='First day of weekly windows ("monday".."sunday").',
    )
    start_var: str = Field(
        title="Start variable",
        default="START_DATE",
        description="Variable that receives the window's first day.",
    )
    end_var: str = Field(
        title="End variable",
        default="END_DATE",
        description="Variable that receives the window's end.",
    )
    date_format: str = Field(
        title="Date format", default="%Y-%m-%d", description="strftime format of both dates."
    )
    inclusive_end: bool = Field(
        title="End is the last day",
        default=True,
        description="True: the end is the window's last day (2017-01-31); False: the day after.",
    )
    extra_environment: dict[str, str] = Field(
        title="Extra variables",
        default_factory=dict,
        description="Fixed variables sent with every window.",
    )

    @classmethod
    def checked(cls, **fields: Any) -> WindowOptions:
        """Build from loose input (CLI flags) and check it all now; any problem is a
        CMLInputError."""
        try:
            options = cls(**fields)
        except ValidationError as exc:
            problems = [str(error["msg"]).removeprefix("Value error, ") for error in exc.errors()]
            raise CMLInputError("; ".join(problems)) from None
        options.check()
        return options

    def check(self) -> None:
        """Raise the CMLInputError of the first bad option, if any."""
        _ = self.cadence, self.rendering

    @cached_property
    def cadence(self) -> Cadence:
        """The parsed cadence (checked on first use: a flow fails with a CMLInputError in its
        own run, after Prefect accepted the parameter's shape)."""
        return parse_every(self.every, week_start=self.week_start, timezone=self.timezone)

    @cached_property
    def rendering(self) -> Rendering:
        return make_rendering(
            start_var=self.start_var,
            end_var=self.end_var,
            date_format=self.date_format,
            inclusive_end=self.inclusive_end,
            extra=self.extra_environment,
        )
