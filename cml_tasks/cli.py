"""`cml-jobs`: start CML jobs, list windows, run the emulator.

Commands that need Prefect import it inside the command: `cml-jobs --help` and `start` stay
fast (importing Prefect costs seconds).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from cml_tasks._stopping import request_stop
from cml_tasks._text import printable
from cml_tasks.errors import (
    CMLAuthError,
    CMLConfigError,
    CMLError,
    CMLInputError,
    CMLNotFoundError,
    CMLOutcomeUnknown,
    CMLProtocolError,
    CMLRequestRejected,
)
from cml_tasks.run_errors import CMLRunError
from cml_tasks.run_status import RunStatus

if TYPE_CHECKING:
    from cml_tasks.models import JobRun
    from cml_tasks.settings import CMLSettings
    from cml_tasks.window_options import WindowOptions


class ExitCode(IntEnum):
    """What scripts can branch on; documented in `cml-jobs --help`."""

    OK = 0
    FAILURE = 1
    BAD_INPUT = 2
    AUTH = 3
    NOT_FOUND = 4
    REJECTED = 5
    SERVER = 6
    OUTCOME_UNKNOWN = 7
    RUN_FAILED = 10
    RUN_TIMED_OUT = 11
    RUN_STOPPED = 12
    RUN_SKIPPED = 13
    WAIT_TIMEOUT = 14


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 2 bad input or settings, 3 authentication failed, 4 not found, "
    "5 request rejected or redirected, 6 server or network trouble (also an unreadable answer "
    "or an untrusted TLS certificate), 7 outcome unknown (the run may have started). "
    "With `start --wait`: 0 the run succeeded, 10 it failed, 11 CML timed it out, "
    "12 it was stopped, 13 it was skipped, 14 --timeout passed (the run was still going)."
)

app = typer.Typer(
    name="cml-jobs",
    help="Run Cloudera Machine Learning jobs. " + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def exit_code_for(error: CMLError) -> ExitCode:
    from cml_tasks.errors import CMLWaitCancelled
    from cml_tasks.run_errors import (
        CMLRunFailed,
        CMLRunSkipped,
        CMLRunStopped,
        CMLRunTimedOut,
        CMLWaitTimeout,
    )

    for kind, code in (
        (CMLRunFailed, ExitCode.RUN_FAILED),
        (CMLRunTimedOut, ExitCode.RUN_TIMED_OUT),
        (CMLRunStopped, ExitCode.RUN_STOPPED),
        (CMLWaitCancelled, ExitCode.RUN_STOPPED),
        (CMLRunSkipped, ExitCode.RUN_SKIPPED),
        (CMLWaitTimeout, ExitCode.WAIT_TIMEOUT),
        (CMLInputError, ExitCode.BAD_INPUT),
        (CMLConfigError, ExitCode.BAD_INPUT),
        (CMLAuthError, ExitCode.AUTH),
        (CMLNotFoundError, ExitCode.NOT_FOUND),
        (CMLRequestRejected, ExitCode.REJECTED),
        (CMLOutcomeUnknown, ExitCode.OUTCOME_UNKNOWN),
        (CMLProtocolError, ExitCode.SERVER),
    ):
        if isinstance(error, kind):
            return code
    return ExitCode.SERVER


def fail(error: CMLError, *, as_json: bool) -> NoReturn:
    """Report an error on stderr (and as JSON on stdout for scripts), then exit with its code."""
    code = exit_code_for(error)
    if as_json:
        payload = {"error": {"type": type(error).__name__, "message": printable(error)}}
        typer.echo(json.dumps(payload))
    typer.echo(f"Error: {printable(error)}", err=True)
    raise typer.Exit(code)


def bad_input(message: str) -> NoReturn:
    """Exit 2 with a message about the command line itself (nothing was sent)."""
    typer.echo(f"Error: {printable(message)}", err=True)
    raise typer.Exit(ExitCode.BAD_INPUT)


INTERRUPTED = 130
"""The exit code of an interrupted command (128 + SIGINT), whichever signal interrupted it."""
_STOPPING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    request_stop()  # for the worker threads: the signal reaches only this one
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def stopping_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (`kill`, a closed terminal, a cancelled CI job) raise
    KeyboardInterrupt as SIGINT does, so a followed run is stopped and a start in flight is
    reported, instead of the process dying while its CML run goes on; all three also tell
    the worker threads (`request_stop`)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in _STOPPING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


TEMPORARY_SERVER_STARTUP_SECONDS = 90
"""How long a command waits for its temporary Prefect server unless
`PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS` says (Prefect's 20 s is too short for a busy
machine: a server takes about 15 s to start on an idle one)."""


@contextmanager
def running_a_flow() -> Iterator[None]:
    """Around a flow run in this process: a stopping signal stops it (its followed runs are
    stopped, exit 130), and a temporary Prefect server that did not start is one message
    naming what to set, not Prefect's traceback."""
    from cml_tasks.prefect_rest import FILE_LEASE_STORAGE

    if "PREFECT_API_URL" not in os.environ:  # a temporary server, as set here unless set
        os.environ.setdefault(
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
            str(TEMPORARY_SERVER_STARTUP_SECONDS),
        )
        # Its project slots' leases in files: each run starts the server anew, and with
        # Prefect's default (memory) the slots of a killed run would stay taken for good.
        os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", FILE_LEASE_STORAGE)
    try:
        with stopping_signals_interrupt():
            yield
    except KeyboardInterrupt:
        typer.echo(
            "\nInterrupted: followed runs were stopped; what started is recorded, and the same "
            "command resumes.",
            err=True,
        )
        raise typer.Exit(INTERRUPTED) from None
    except RuntimeError as error:
        from cml_tasks.prefect._adapter import temporary_server_failed

        seconds = temporary_server_failed(error)
        if seconds is None:
            raise
        typer.echo(
            f"Error: The temporary Prefect server did not start within {seconds} s. Set "
            "PREFECT_API_URL to a running Prefect server (`prefect server start`), or allow "
            "a slow machine longer with PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.",
            err=True,
        )
        raise typer.Exit(ExitCode.FAILURE) from None


def interrupted_start(job: str) -> NoReturn:
    """Exit 130 saying that the run may exist: the start request may have reached CML."""
    typer.echo(
        f"Interrupted while starting {printable(job)}: the request may have reached CML, so "
        f"the run may have started. Check with `cml-jobs runs {printable(job)}` before "
        "starting it again.",
        err=True,
    )
    raise typer.Exit(INTERRUPTED)


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command()
def start(
    job: Annotated[
        str, typer.Argument(help="Job Overview page URL, e.g. https://host/alice/proj/jobs/208")
    ],
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", metavar="NAME=VALUE", help="Environment for the run."),
    ] = None,
    as_json: JsonOption = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Start through API v2 and follow the run to its end (CML_API_V2_KEY)."
        ),
    ] = False,
    timeout: Annotated[
        str | None,
        typer.Option(help="With --wait: give up after this long (e.g. 2h, 30m) and stop the run."),
    ] = None,
    poll: Annotated[
        str | None,
        typer.Option(help="With --wait: time between polls (1s..7d).", show_default="30s"),
    ] = None,
) -> None:
    """Start a run of a CML job (API v1) and print its engine id; with --wait, follow it."""
    if not wait:
        given = [name for name, value in (("--timeout", timeout), ("--poll", poll)) if value]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            bad_input(f"{' and '.join(given)} only {verb} with --wait (follow the run)")
        start_and_report(job, env or [], as_json=as_json)
        return
    try:
        max_wait = parse_duration(timeout, option="--timeout") if timeout is not None else None
        poll_interval = parse_duration(poll or "30s", option="--poll")
    except ValueError as error:
        bad_input(str(error))
    start_and_follow(
        job, env or [], as_json=as_json, max_wait=max_wait, poll_interval=poll_interval
    )


MIN_DURATION = 1.0
MAX_DURATION = 7 * 86400.0


def parse_duration(text: str, *, option: str = "duration") -> float:
    """Seconds from `90`, `90s`, `30m`, `2h` or `1d`: finite, between 1 s and 7 days (a
    shorter poll floods CML with requests; NaN or infinity would wait forever)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    scale = units.get(value[-1:])
    number = value[:-1] if scale else value
    shown = printable(repr(text)[:40])
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise ValueError(f"Invalid {option} {shown}: use e.g. 90s, 30m, 2h") from None
    if not math.isfinite(seconds):
        raise ValueError(f"Invalid {option} {shown}: must be a finite duration, e.g. 2h")
    if not MIN_DURATION <= seconds <= MAX_DURATION:
        raise ValueError(f"Invalid {option} {shown}: must be between 1s and 7d")
    return seconds


def start_and_follow(
    job: str,
    assignments: list[str],
    *,
    as_json: bool,
    max_wait: float | None,
    poll_interval: float,
    settings: CMLSettings | None = None,
) -> None:
    """`start --wait`: start (reconciling a lost answer), follow, exit with the outcome's code."""
    from cml_tasks.client import CMLClient
    from cml_tasks.environment import parse_assignments
    from cml_tasks.reconcile import start_run
    from cml_tasks.settings import CMLSettings
    from cml_tasks.waiting import raise_for_status, wait_for_run

    def show(run: JobRun) -> None:
        if not as_json:
            typer.echo(printable(f"{run.status.short:<10} run {run.id}  {run.page_url}"))

    try:
        environment = parse_assignments(assignments)
        with (
            stopping_signals_interrupt(),
            CMLClient(settings or CMLSettings.load(required=("api_v2_key",))) as client,
        ):
            try:
                run = start_run(client, job, environment)
            except KeyboardInterrupt:
                interrupted_start(job)
            done = wait_for_run(
                client, run, poll_interval=poll_interval, max_wait=max_wait, on_change=show
            )
        if as_json:
            echo_json(done.model_dump(mode="json"))
        raise_for_status(done)
    except CMLError as error:
        fail(error, as_json=as_json and not isinstance(error, CMLRunError))


@app.command()
def runs(
    job: Annotated[str, typer.Argument(help="Job Overview page URL")],
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="How many of the newest runs to show (1..1000).")
    ] = 10,
    status: Annotated[
        str | None,
        typer.Option(help="Only runs in this status: " + ", ".join(s.short for s in RunStatus)),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List a job's recent runs (API v2), newest first, with status and environment."""
    from itertools import islice

    from cml_tasks.client import CMLClient
    from cml_tasks.settings import CMLSettings

    try:
        search_filter = {"status": parse_status(status).short} if status is not None else None
        with CMLClient(CMLSettings.load(required=("api_v2_key",))) as client:
            found = list(
                islice(
                    client.list_runs(job, page_size=min(limit, 100), search_filter=search_filter),
                    limit,
                )
            )
    except CMLError as error:
        fail(error, as_json=as_json)
    if as_json:
        echo_json([run.model_dump(mode="json") for run in found])
        return
    for run in found:
        created = run.created_at.strftime("%Y-%m-%d %H:%M:%S") if run.created_at else "?"
        env = " ".join(f"{name}={value}" for name, value in run.environment.items())
        typer.echo(printable(f"{run.id}  {run.status.short:<10} {created}  {env}".rstrip()))


def parse_status(text: str) -> RunStatus:
    """`running`, `RUNNING` or `ENGINE_RUNNING` -> `RunStatus.RUNNING`; anything else is bad
    input, refused before a request (CML would answer 400)."""
    wanted = text.strip().upper()
    for status in RunStatus:
        if wanted in (status.value, status.short.upper()):
            return status
    raise CMLInputError(
        f"Invalid --status {printable(repr(text)[:40])}: use one of "
        + ", ".join(status.short for status in RunStatus)
    )


def echo_json(payload: object) -> None:
    """JSON for scripts, ASCII only: no control character or escape reaches a terminal."""
    typer.echo(json.dumps(payload))


@app.command()
def stop(
    job: Annotated[str, typer.Argument(help="Job Overview page URL")],
    run_id: Annotated[str, typer.Argument(help="The run's id (its engine id).")],
    as_json: JsonOption = False,
) -> None:
    """Stop a run of a job (API v2); a run that already ended is left as it is."""
    from cml_tasks.client import CMLClient
    from cml_tasks.settings import CMLSettings

    try:
        with CMLClient(CMLSettings.load(required=("api_v2_key",))) as client:
            run = client.stop_run(job, run_id)
    except CMLError as error:
        fail(error, as_json=as_json)
    if as_json:
        echo_json(run.model_dump(mode="json"))
        return
    typer.echo(printable(f"Stop requested: run {run.id} is {run.status.short}  {run.page_url}"))


def start_and_report(
    job: str, assignments: list[str], *, as_json: bool, settings: CMLSettings | None = None
) -> None:
    """The `start` command's work, with settings from the environment unless given."""
    from cml_tasks.client import CMLClient
    from cml_tasks.environment import parse_assignments
    from cml_tasks.job import JobRef
    from cml_tasks.settings import CMLSettings

    try:
        ref = JobRef.parse(job)
        environment = parse_assignments(assignments)
        with (
            stopping_signals_interrupt(),
            CMLClient(settings or CMLSettings.load(required=("api_key",))) as client,
        ):
            try:
                run = client.start(ref, environment)
            except KeyboardInterrupt:
                interrupted_start(job)
    except CMLError as error:
        fail(error, as_json=as_json)
    if as_json:
        echo_json(run.model_dump(mode="json"))
        return
    lines = [
        f"Started {run.job.slug} (user {run.job.username}): engine id {run.engine_id}",
        f"  job page:    {run.job_url}",
    ]
    if run.environment:
        shown = " ".join(f"{name}={value}" for name, value in run.environment.items())
        lines.append(f"  environment: {shown}")
    for line in lines:
        typer.echo(printable(line))


# The date-range and rendering options shared by `windows` and `backfill`.
FromOption = Annotated[
    str, typer.Option("--from", metavar="YYYY-MM-DD", help="First day of the range.")
]
ToOption = Annotated[
    str, typer.Option("--to", metavar="YYYY-MM-DD", help="Last day of the range (inclusive).")
]
EveryOption = Annotated[
    str, typer.Option(help="Cadence: day, week, month, quarter, year, or e.g. '3 months'.")
]
TimezoneOption = Annotated[str, typer.Option(help="IANA time zone of the cadence.")]
WeekStartOption = Annotated[str, typer.Option(help="First day of weekly windows.")]
StartVarOption = Annotated[str, typer.Option(help="Variable for the first day.")]
EndVarOption = Annotated[str, typer.Option(help="Variable for the end.")]
DateFormatOption = Annotated[str, typer.Option(help="strftime format of the dates.")]
ExclusiveEndOption = Annotated[
    bool, typer.Option("--exclusive-end", help="Send the day after the window as its end.")
]
ExtraOption = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="NAME=VALUE", help="A fixed variable sent as well."),
]


def window_options(
    every: str,
    timezone: str,
    week_start: str,
    start_var: str,
    end_var: str,
    date_format: str,
    exclusive_end: bool,
    extra: list[str] | None,
) -> WindowOptions:
    """The window options of `windows` and `backfill`, from their flags."""
    from cml_tasks.environment import parse_assignments
    from cml_tasks.window_options import WindowOptions

    return WindowOptions.checked(
        every=every,
        timezone=timezone,
        week_start=week_start,
        start_var=start_var,
        end_var=end_var,
        date_format=date_format,
        inclusive_end=not exclusive_end,
        extra_environment=parse_assignments(extra or []),
    )


@app.command()
def windows(
    from_: FromOption,
    to: ToOption,
    every: EveryOption = "month",
    timezone: TimezoneOption = "UTC",
    week_start: WeekStartOption = "monday",
    start_var: StartVarOption = "START_DATE",
    end_var: EndVarOption = "END_DATE",
    date_format: DateFormatOption = "%Y-%m-%d",
    exclusive_end: ExclusiveEndOption = False,
    extra: ExtraOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the calendar windows in a range and the environment each run would get."""
    from cml_tasks.windows import parse_date, windows_between

    try:
        options = window_options(
            every, timezone, week_start, start_var, end_var, date_format, exclusive_end, extra
        )
        rendering = options.rendering
        found = windows_between(parse_date(from_), parse_date(to), options.cadence)
    except CMLError as error:
        fail(error, as_json=as_json)
    cadence = options.cadence
    if as_json:
        rows = [
            {
                "window": window.label,
                "first_day": window.start.isoformat(),
                "last_day": window.last_day.isoformat(),
                "environment": rendering.environment(window),
            }
            for window in found
        ]
        typer.echo(json.dumps(rows))
        return
    end = "exclusive" if exclusive_end else "inclusive"
    typer.echo(f"{len(found)} windows, {cadence}, end {end}:")
    width = max(len(window.label) for window in found)
    for window in found:
        shown = " ".join(f"{k}={v}" for k, v in rendering.environment(window).items())
        typer.echo(printable(f"  {window.label:<{width}}  {shown}"))


OptionalJobArgument = Annotated[
    str | None,
    typer.Argument(help="Job Overview page URL (or --pipeline FILE instead)", show_default=False),
]
WINDOW_FLAGS = {
    "every": "--every",
    "timezone": "--timezone",
    "week_start": "--week-start",
    "start_var": "--start-var",
    "end_var": "--end-var",
    "date_format": "--date-format",
    "exclusive_end": "--exclusive-end",
    "extra": "--set",
}
"""`backfill`'s window options (parameter -> flag): a pipeline file sets them itself."""


def job_or_pipeline(job: str | None, pipeline: Path | None) -> str | Path:
    """Exactly one of a job URL and --pipeline FILE (exit 2 otherwise, nothing read)."""
    if job is not None and pipeline is not None:
        bad_input("give a job URL or --pipeline FILE, not both")
    if pipeline is not None:
        return pipeline
    if job is None:
        bad_input("give a job URL, or --pipeline FILE")
    return job


@app.command()
def backfill(
    ctx: typer.Context,
    from_: FromOption,
    to: ToOption,
    job: OptionalJobArgument = None,
    pipeline: Annotated[
        Path | None,
        typer.Option(
            "--pipeline",
            metavar="FILE",
            help="Run a pipeline file's steps (YAML) instead of one job: per window in "
            "dependency order, each followed to its end (CML_API_V2_KEY); the file sets the "
            "windows, so the window options do not apply.",
        ),
    ] = None,
    from_step: Annotated[
        str | None,
        typer.Option(
            metavar="STEP",
            help="With --pipeline: start STEP and every step after it again for the chosen "
            "windows (the steps before it stay as they are).",
        ),
    ] = None,
    every: EveryOption = "month",
    timezone: TimezoneOption = "UTC",
    week_start: WeekStartOption = "monday",
    start_var: StartVarOption = "START_DATE",
    end_var: EndVarOption = "END_DATE",
    date_format: DateFormatOption = "%Y-%m-%d",
    exclusive_end: ExclusiveEndOption = False,
    extra: ExtraOption = None,
    max_concurrency: Annotated[
        int,
        typer.Option(
            help="At most this many starts in flight (1..64); with --pipeline, windows in flight."
        ),
    ] = 4,
    reprocess: Annotated[
        str,
        typer.Option(
            help="missing: windows not started yet (or whose start failed; with --pipeline, "
            "every step not succeeded yet); failed: only failed ones; all: every window again."
        ),
    ] = "missing",
    newest_first: Annotated[
        bool, typer.Option("--newest-first", help="Newest window first.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="List windows (with --pipeline, windows x steps) and environments; start nothing.",
        ),
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Start through API v2 (CML_API_V2_KEY) and follow each run to its end; "
            "--max-concurrency then bounds active runs. Implied by --pipeline.",
        ),
    ] = False,
    timeout: Annotated[
        str | None,
        typer.Option(
            help="With --follow or --pipeline: stop a run still going after this long (e.g. "
            "2h); a pipeline step's own max_wait wins."
        ),
    ] = None,
    poll: Annotated[
        str | None,
        typer.Option(help="With --follow or --pipeline: time between polls (default 30s)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Start a job once for every window of a date range; skips windows already started.

    Re-running the same command resumes: each window is started at most once. Exit code 1
    when a window (or, with --follow, its run) failed, 7 when a start's outcome is unknown
    (check CML before re-running; with CML_API_V2_KEY set the backfill asks CML itself).

    With --pipeline FILE instead of a job: every step of each window, a step once all its
    `after` steps succeeded, printed as a windows x steps grid; a step that succeeded is never
    started again, a failed one is (then the steps after it). Exit code 1 when a step failed,
    7 when one's outcome is unknown.
    """
    from cml_tasks import backfill_cli
    from cml_tasks.windows import parse_date

    target = job_or_pipeline(job, pipeline)
    if isinstance(target, Path):
        refuse_window_flags(ctx)
        order = "newest" if newest_first else "oldest"
        parameters = pipeline_parameters(
            max_concurrency, order, reprocess, from_step, poll, timeout
        )
        pipeline_backfill(target, from_, to, parameters, dry_run=dry_run, as_json=as_json)
        return
    if from_step is not None:
        bad_input("--from-step only applies with --pipeline (a pipeline's steps)")
    job = target
    try:
        start, end = parse_date(from_), parse_date(to)
        options: dict[str, Any] = {
            "options": window_options(
                every, timezone, week_start, start_var, end_var, date_format, exclusive_end, extra
            ),
            "order": "newest" if newest_first else "oldest",
            "max_concurrency": max_concurrency,
            "reprocess": reprocess,
        }
        if follow:
            options |= {
                "follow": True,
                "poll_interval": parse_duration(poll or "30s", option="--poll"),
                "max_wait": parse_duration(timeout, option="--timeout") if timeout else None,
            }
        else:
            given = [name for name, value in (("--timeout", timeout), ("--poll", poll)) if value]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                bad_input(f"{' and '.join(given)} only {verb} with --follow (follow the runs)")
        if dry_run:
            backfill_cli.print_report(
                backfill_cli.dry_run(job, start, end, options), as_json=as_json
            )
            return
        settled = backfill_cli.settled(job, start, end, options)
        if settled is not None:
            backfill_cli.print_report(settled[0], as_json=as_json)
            typer.echo(
                f"Nothing to start: every window's record on {settled[1]} says skip "
                "(no flow run was created).",
                err=True,
            )
            return
    except CMLError as error:
        fail(error, as_json=as_json)
    except ValueError as error:  # a duration
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    with running_a_flow():
        report, problem = backfill_cli.run(job, start, end, options, show_progress=not as_json)
    if isinstance(problem, CMLError) and backfill_cli.is_input_error(problem):
        fail(problem, as_json=as_json)
    if report is None:
        typer.echo(f"Error: {problem}", err=True)
        raise typer.Exit(ExitCode.FAILURE)
    backfill_cli.print_report(report, as_json=as_json)
    if report.failures:
        typer.echo(f"Failed windows:\n{report.failure_text()}\n{report.resume_hint()}", err=True)
        unknown = backfill_cli.has_unknown(report)
        raise typer.Exit(ExitCode.OUTCOME_UNKNOWN if unknown else ExitCode.FAILURE)


def refuse_window_flags(ctx: typer.Context) -> None:
    """With --pipeline, the file's `options` set the windows: a window flag is refused."""
    sources = {name: ctx.get_parameter_source(name) for name in WINDOW_FLAGS}
    given = [
        WINDOW_FLAGS[name]
        for name, source in sources.items()
        if source is not None and source.name == "COMMANDLINE"  # typer's own click's enum
    ]
    if given:
        verb = "does" if len(given) == 1 else "do"
        bad_input(
            f"{', '.join(given)} {verb} not apply with --pipeline: the pipeline file sets the "
            "windows (its options)"
        )


def pipeline_parameters(
    max_concurrency: int,
    order: str,
    reprocess: str,
    from_step: str | None,
    poll: str | None,
    timeout: str | None,
) -> dict[str, Any]:
    """The `cml-pipeline-backfill` flow's parameters from `backfill --pipeline`'s options
    (a pipeline always follows its runs: --poll and --timeout apply without --follow)."""
    try:
        return {
            "max_concurrency": max_concurrency,
            "order": order,
            "reprocess": reprocess,
            "from_step": from_step,
            "poll_interval": parse_duration(poll or "30s", option="--poll"),
            "max_wait": parse_duration(timeout, option="--timeout") if timeout else None,
        }
    except ValueError as error:
        bad_input(str(error))


def pipeline_backfill(
    path: Path, from_: str, to: str, parameters: dict[str, Any], *, dry_run: bool, as_json: bool
) -> None:
    """`backfill --pipeline`: check everything, then the dry run's grid or the flow's, and
    the exit code of the worst cell (7 an outcome unknown, 1 a failed step)."""
    from cml_tasks import pipeline_cli
    from cml_tasks.errors import BackfillFailed
    from cml_tasks.windows import parse_date

    try:
        start, end = parse_date(from_), parse_date(to)
        if dry_run:
            report = pipeline_cli.dry_run(path, start, end, parameters)
            pipeline_cli.print_report(report, as_json=as_json)
            return
        plan = pipeline_cli.checked_plan(path, start, end, parameters, dry_run=False)
    except CMLError as error:
        fail(error, as_json=as_json)
    with running_a_flow():
        found, problem = pipeline_cli.run(plan, start, end, parameters)
    if found is None:
        if isinstance(problem, CMLError) and not isinstance(problem, BackfillFailed):
            fail(problem, as_json=as_json)
        typer.echo(f"Error: {printable(problem)}", err=True)
        raise typer.Exit(ExitCode.FAILURE)
    pipeline_cli.print_report(found, as_json=as_json)
    if found.failures():
        raise typer.Exit(ExitCode.OUTCOME_UNKNOWN if found.unknown else ExitCode.FAILURE)


@app.command()
def records(
    job: OptionalJobArgument = None,
    from_: Annotated[
        str | None, typer.Option("--from", metavar="YYYY-MM-DD", help="Only windows from this day.")
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", metavar="YYYY-MM-DD", help="Only windows up to this day.")
    ] = None,
    forget: Annotated[
        str | None,
        typer.Option(
            metavar="WINDOW",
            help="Make this window (e.g. 2017-01, as listed) 'not started' again, after asking.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="With --forget: do not ask.")] = False,
    pipeline: Annotated[
        Path | None,
        typer.Option(
            "--pipeline",
            metavar="FILE",
            help="A pipeline file's windows x steps grid from its steps' records instead of "
            "one job's (needs --from and --to; read-only).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List a job's window records on the Prefect server (state, engine id, when attempted),
    or forget one so that the next backfill or scheduled run starts it again."""
    from cml_tasks import records_cli
    from cml_tasks.job import JobRef
    from cml_tasks.settings import CMLSettings
    from cml_tasks.windows import parse_date

    target = job_or_pipeline(job, pipeline)
    if isinstance(target, Path):
        if forget is not None:
            bad_input("--forget applies to one job's window: give its job URL, not --pipeline")
        if from_ is None or to is None:
            bad_input("--pipeline needs --from and --to: the windows of the grid")
        pipeline_records(target, from_, to, as_json=as_json)
        return
    job = target
    try:
        ref = JobRef.parse(job).with_host(CMLSettings.load().host)
        start = parse_date(from_) if from_ else None
        end = parse_date(to) if to else None
        if forget is not None:
            records_cli.forget(ref, forget, yes=yes)
            return
        found, shared_api = records_cli.load(ref, start, end)
    except CMLError as error:
        fail(error, as_json=as_json)
    except LookupError as error:
        bad_input(str(error))
    if not shared_api:
        note_not_shared()
    records_cli.show(found, ref, as_json=as_json)


def note_not_shared() -> None:
    """Records on an ephemeral API are this machine's alone: say so (stderr)."""
    typer.echo(
        "Note: no PREFECT_API_URL, so these are the records of this machine's own "
        "ephemeral Prefect API; other machines cannot see them.",
        err=True,
    )


def pipeline_records(path: Path, from_: str, to: str, *, as_json: bool) -> None:
    """`records --pipeline`: each (window, step) as its record tells it; starts nothing."""
    from cml_tasks import pipeline_cli
    from cml_tasks.windows import parse_date

    try:
        report, shared_api = pipeline_cli.recorded(path, parse_date(from_), parse_date(to))
    except CMLError as error:
        fail(error, as_json=as_json)
    if not shared_api:
        note_not_shared()
    pipeline_cli.print_report(report, as_json=as_json)


@app.command()
def emulator(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
    config: Annotated[
        Path | None, typer.Option(help="Seed file (TOML or JSON): users, projects, jobs, faults.")
    ] = None,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="Serve HTTPS with this certificate (PEM).")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="The certificate's key (PEM).")] = None,
) -> None:
    """Run the CML emulator: a local HTTP(S) server speaking the CML v1 and v2 APIs."""
    from cml_tasks.emulator import default_config, load_config, serve

    try:
        seed = load_config(config) if config else default_config()
    except (OSError, ValueError) as error:
        bad_input(str(error))
    if (ssl_certfile is None) != (ssl_keyfile is None):
        bad_input("--ssl-certfile and --ssl-keyfile go together")
    serve(
        host,
        port,
        seed,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
    )


@app.command()
def demo(
    ui: Annotated[
        bool, typer.Option("--ui", help="Keep the emulator and Prefect up, for the Prefect UI.")
    ] = False,
) -> None:
    """Backfill a year of months, run a scheduled window and a three-step pipeline, in
    Prefect, on a built-in CML emulator and a temporary Prefect server (nothing to set up).
    SIGTERM and SIGHUP stop it as Ctrl-C does: the Prefect server it started goes too."""
    from cml_tasks.prefect.demo import run_demo

    with stopping_signals_interrupt():
        run_demo(ui=ui)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return app(args=argv if argv is not None else sys.argv[1:], prog_name="cml-jobs")


if __name__ == "__main__":
    main()
