"""The bad-input catalogue: every class of bad setting, job URL, environment assignment,
window option and command option, and every kind of hostile answer, run through `cml-jobs`
in-process against the emulator. Each case asserts its message, its documented exit code,
how many requests reached CML (none for bad input) and that no traceback is printed.

README: "Bad input and hostile answers" summarises this table by class.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cml_tasks.cli import ExitCode, app
from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, Fault

KEYS = {"CML_API_KEY": DEFAULT_V1_KEY, "CML_API_V2_KEY": DEFAULT_V2_KEY}
JOB = "{base}/alice/risk-analysis/jobs/208"
PROJECT_JSON = {"name": "risk-analysis", "owner": {"username": "alice"}}
BASIC = base64.b64encode(f"{DEFAULT_V1_KEY}:".encode()).decode()
"""The v1 key as `Authorization: Basic` carries it."""
RUN_JSON = {
    "id": "abcdefgh12345678",
    "project_id": "lv1g-4hu5-a359-wagc",
    "job_id": "208",
    "status": "ENGINE_RUNNING",
}


@dataclass(frozen=True)
class Case:
    """One bad input or hostile answer and what `cml-jobs` must make of it."""

    args: tuple[str, ...]
    code: ExitCode
    message: str
    env: dict[str, str | None] = field(default_factory=dict)
    fault: Fault | None = None
    sent: int | None = 0
    """Requests CML may see (None: not counted); bad input sends none."""
    hidden: tuple[str, ...] = ()
    """Text that must not appear (a secret, a raw escape, a redirect's query)."""


def answer(endpoint: str, body: object = "", **options: object) -> Fault:
    text = body if isinstance(body, str) else json.dumps(body)
    return Fault(endpoint=endpoint, kind="answer", body=text, **options)  # type: ignore[arg-type]


START = ("start", JOB)
WAIT = ("start", JOB, "--wait")
RUNS = ("runs", JOB)
STOP = ("stop", JOB, "abcdefgh12345678")
WINDOWS = ("windows", "--from", "2017-01-01", "--to", "2017-12-31")
DRY = ("backfill", JOB, "--from", "2017-01-01", "--to", "2017-03-31", "--dry-run")
DRY_FOLLOW = (*DRY, "--follow")
BAD = ExitCode.BAD_INPUT
CR_KEY = DEFAULT_V2_KEY + "\r"

CASES: dict[str, Case] = {
    # --- settings (environment variables) ---------------------------------------------------
    "timeout inf": Case(
        START, BAD, "CML_TIMEOUT: Input should be a finite number", {"CML_TIMEOUT": "inf"}
    ),
    "timeout nan": Case(
        START, BAD, "CML_TIMEOUT: Input should be a finite number", {"CML_TIMEOUT": "nan"}
    ),
    "timeout 1e300": Case(
        START,
        BAD,
        "CML_TIMEOUT: Input should be less than or equal to 3600",
        {"CML_TIMEOUT": "1e300"},
    ),
    "timeout negative": Case(
        START,
        BAD,
        "CML_TIMEOUT: Input should be greater than or equal to 0.1",
        {"CML_TIMEOUT": "-1"},
    ),
    "connect timeout inf": Case(
        START,
        BAD,
        "CML_CONNECT_TIMEOUT: Input should be a finite number",
        {"CML_CONNECT_TIMEOUT": "inf"},
    ),
    "malformed and missing": Case(
        START, BAD, "CML_API_KEY: missing", {"CML_TIMEOUT": "soon", "CML_API_KEY": None}
    ),
    "CA bundle not PEM": Case(
        START,
        BAD,
        "CML_CA_BUNDLE: /etc/hostname is not a PEM CA bundle",
        {"CML_CA_BUNDLE": "/etc/hostname"},
    ),
    "CA bundle missing": Case(
        START, BAD, "CML_CA_BUNDLE: no such file", {"CML_CA_BUNDLE": "/nonexistent/ca.pem"}
    ),
    "verify tls perhaps": Case(START, BAD, "CML_VERIFY_TLS", {"CML_VERIFY_TLS": "perhaps"}),
    "insecure http maybe": Case(
        START, BAD, "CML_ALLOW_INSECURE_HTTP", {"CML_ALLOW_INSECURE_HTTP": "maybe"}
    ),
    "host not a url": Case(
        START, BAD, "CML_HOST: Invalid CML_HOST 'not a url'", {"CML_HOST": "not a url"}
    ),
    "host with path": Case(START, BAD, "without a path or query", {"CML_HOST": "{base}/cml"}),
    "host with query": Case(START, BAD, "without a path or query", {"CML_HOST": "{base}?next=x"}),
    "host ftp": Case(
        START, BAD, "CML_HOST: Invalid CML_HOST 'ftp://cml'", {"CML_HOST": "ftp://cml"}
    ),
    "host user info": Case(
        START,
        BAD,
        "user:password in the URL is not allowed",
        {"CML_HOST": "https://bob:S3CRET@cml.example.com"},
        hidden=("S3CRET",),
    ),
    "host line break": Case(START, BAD, "line break", {"CML_HOST": "https://cml.exa\nmple.com"}),
    "host bad name": Case(
        START, BAD, "not a valid host name", {"CML_HOST": "https://cml_!.example.com"}
    ),
    "v1 key with CR": Case(
        START,
        BAD,
        "CML_API_KEY: the key contains whitespace or a control character",
        {"CML_API_KEY": DEFAULT_V1_KEY + "\r"},
        hidden=(DEFAULT_V1_KEY,),
    ),
    "v2 key with CR": Case(
        WAIT,
        BAD,
        "CML_API_V2_KEY: the key contains whitespace",
        {"CML_API_V2_KEY": CR_KEY},
        hidden=(DEFAULT_V2_KEY,),
    ),
    "key with inner space": Case(
        START,
        BAD,
        "CML_API_KEY: the key contains whitespace",
        {"CML_API_KEY": "abc def"},
        hidden=("abc def",),
    ),
    "v1 key missing": Case(START, BAD, "CML_API_KEY", {"CML_API_KEY": None}),
    "v2 key missing": Case(RUNS, BAD, "CML_API_V2_KEY", {"CML_API_V2_KEY": None}),
    # --- job URLs --------------------------------------------------------------------------
    "job not a url": Case(("start", "not-a-job"), BAD, "Invalid job 'not-a-job'"),
    "job url password": Case(
        ("start", "http://alice:PW@127.0.0.1:99999/alice/p/jobs/1"),
        BAD,
        "user:password in the URL is not allowed",
        hidden=(":PW@",),
    ),
    "job url ftp password": Case(
        ("start", "ftp://alice:PW@127.0.0.1/alice/p/jobs/1"),
        BAD,
        "'ftp://***@127.0.0.1/alice/p/jobs/1'",
        hidden=(":PW@",),
    ),
    "job slug newline": Case(
        ("start", "alice\n/risk-analysis/208"),
        BAD,
        "Invalid username or team",
        {"CML_HOST": "{base}"},
    ),
    "job url newline": Case(
        ("start", "{base}/alice/risk-analysis/jobs/2\n08"),
        BAD,
        "line break, tab or control character",
    ),
    "job url escape": Case(
        ("start", "{base}/alice/risk\x1b[2J/jobs/208"), BAD, "risk\\x1b[2J", hidden=("\x1b",)
    ),
    "job url port": Case(
        ("start", "https://cml.example.com:99999/alice/p/jobs/1"), BAD, "Invalid job URL"
    ),
    "job url too long": Case(
        ("start", "https://cml.example.com/" + "a" * 3000), BAD, "longer than 2048"
    ),
    "job url bad host": Case(
        ("start", "https://bad_host_!/alice/p/jobs/1"), BAD, "not a valid host name"
    ),
    "job url not a job page": Case(
        ("start", "{base}/alice/risk-analysis/jobs/208/history"), BAD, "Overview page URL"
    ),
    "job on another host": Case(
        START,
        BAD,
        "refusing to send the API key to another host",
        {"CML_HOST": "https://cml.example.com"},
    ),
    "plain http remote": Case(
        ("start", "http://cml.example.com/alice/p/jobs/1"), BAD, "CML_ALLOW_INSECURE_HTTP"
    ),
    # --- environment assignments -----------------------------------------------------------
    "env without =": Case((*START, "-e", "START_DATE"), BAD, "expected NAME=VALUE"),
    "env digit name": Case((*START, "-e", "1X=2"), BAD, "Invalid environment variable name '1X'"),
    "env newline name": Case(
        (*START, "-e", "A\n=x"), BAD, "Invalid environment variable name 'A\\n'"
    ),
    "env twice": Case(
        (*START, "-e", "A=1", "-e", "A=2"), BAD, "Environment variable A is given twice"
    ),
    "env empty name": Case((*START, "-e", "=x"), BAD, "Invalid environment variable name ''"),
    "env space name": Case((*START, "-e", "A B=x"), BAD, "Invalid environment variable name 'A B'"),
    # --- windows: dates and window options --------------------------------------------------
    "window bad month": Case(
        ("windows", "--from", "2017-13-01", "--to", "2017-12-31"), BAD, "month must be in 1..12"
    ),
    "window end before start": Case(
        ("windows", "--from", "2017-03-01", "--to", "2017-01-31"), BAD, "is before start"
    ),
    "window short year": Case(
        ("windows", "--from", "1-01-01", "--to", "2017-12-31"), BAD, "expected YYYY-MM-DD"
    ),
    "window cadence": Case((*WINDOWS, "--every", "fortnight"), BAD, "'3 months'"),
    "window time zone": Case(
        (*WINDOWS, "--timezone", "Mars/Olympus"), BAD, "unknown time zone 'Mars/Olympus'"
    ),
    "window week start": Case(
        (*WINDOWS, "--every", "week", "--week-start", "someday"), BAD, "invalid week start"
    ),
    "window set": Case((*WINDOWS, "--set", "A"), BAD, "expected NAME=VALUE"),
    "window start var": Case(
        (*WINDOWS, "--start-var", "1X"), BAD, "invalid environment variable name '1X'"
    ),
    "window date format": Case((*WINDOWS, "--date-format", "nodate"), BAD, "renders no date"),
    # --- start options ---------------------------------------------------------------------
    "timeout without wait": Case(
        (*START, "--timeout", "3s"), BAD, "--timeout only applies with --wait"
    ),
    "poll without wait": Case((*START, "--poll", "10s"), BAD, "--poll only applies with --wait"),
    "poll nan": Case(
        (*WAIT, "--poll", "nan"), BAD, "Invalid --poll 'nan': must be a finite duration"
    ),
    "poll inf": Case(
        (*WAIT, "--poll", "inf"), BAD, "Invalid --poll 'inf': must be a finite duration"
    ),
    "poll microsecond": Case((*WAIT, "--poll", "0.000001s"), BAD, "must be between 1s and 7d"),
    "poll a month": Case((*WAIT, "--poll", "30d"), BAD, "must be between 1s and 7d"),
    "timeout negative option": Case((*WAIT, "--timeout", "-1s"), BAD, "must be between 1s and 7d"),
    "timeout words": Case(
        (*WAIT, "--timeout", "soon"), BAD, "Invalid --timeout 'soon': use e.g. 90s"
    ),
    # --- backfill --dry-run: the same checks as a real run (check_run_options, CML_HOST) ----
    "backfill max concurrency 0": Case(
        (*DRY, "--max-concurrency", "0"), BAD, "max_concurrency must be 1..64, got 0"
    ),
    "backfill max concurrency 10000": Case(
        (*DRY, "--max-concurrency", "10000"), BAD, "max_concurrency must be 1..64, got 10000"
    ),
    "backfill max concurrency words": Case(
        (*DRY, "--max-concurrency", "many"), BAD, "Invalid value for '--max-concurrency'"
    ),
    "backfill reprocess bogus": Case(
        (*DRY, "--reprocess", "bogus"),
        BAD,
        "invalid reprocess 'bogus': use 'missing', 'failed' or 'all'",
    ),
    "backfill reprocess bogus json": Case(
        (*DRY, "--reprocess", "bogus", "--json"),
        BAD,
        '"type": "CMLInputError", "message": "invalid reprocess',
    ),
    "backfill job on another host": Case(
        DRY,
        BAD,
        "is not CML_HOST https://cml.example.com: refusing to send the API key to another host",
        {"CML_HOST": "https://cml.example.com"},
    ),
    "backfill job on another host without keys": Case(
        DRY,
        BAD,
        "refusing to send the API key to another host",
        {"CML_HOST": "https://cml.example.com", "CML_API_KEY": None, "CML_API_V2_KEY": None},
    ),
    "backfill bad date": Case(
        ("backfill", JOB, "--from", "2017-02-30", "--to", "2017-03-31", "--dry-run"),
        BAD,
        "day is out of range for month",
    ),
    "backfill follow poll nan": Case(
        (*DRY_FOLLOW, "--poll", "nan"), BAD, "'nan': must be a finite duration"
    ),
    "backfill follow poll inf": Case(
        (*DRY_FOLLOW, "--poll", "inf"), BAD, "'inf': must be a finite duration"
    ),
    "backfill follow poll microsecond": Case(
        (*DRY_FOLLOW, "--poll", "0.000001s"), BAD, "must be between 1s and 7d"
    ),
    "backfill follow timeout nan": Case(
        (*DRY_FOLLOW, "--timeout", "nan"), BAD, "'nan': must be a finite duration"
    ),
    "backfill follow timeout words": Case(
        (*DRY_FOLLOW, "--timeout", "soon"), BAD, "'soon': use e.g. 90s, 30m, 2h"
    ),
    "backfill follow timeout a month": Case(
        (*DRY_FOLLOW, "--timeout", "30d"), BAD, "must be between 1s and 7d"
    ),
    "backfill follow timeout negative": Case(
        (*DRY_FOLLOW, "--timeout", "-1s"), BAD, "must be between 1s and 7d"
    ),
    # --- runs and stop options -------------------------------------------------------------
    "limit negative": Case((*RUNS, "--limit", "-5"), BAD, "--limit"),
    "limit zero": Case((*RUNS, "--limit", "0"), BAD, "--limit"),
    "limit huge": Case((*RUNS, "--limit", "5000"), BAD, "--limit"),
    "status bogus": Case(
        (*RUNS, "--status", "bogus"), BAD, "Invalid --status 'bogus': use one of scheduling"
    ),
    "status with space": Case((*RUNS, "--status", "run ning"), BAD, "Invalid --status"),
    "run id with space": Case(("stop", JOB, "a b"), BAD, "Invalid run id 'a b'"),
    "run id newline": Case(("stop", JOB, "abc\n"), BAD, "Invalid run id 'abc\\n'"),
    "run id path": Case(("stop", JOB, "../../x"), BAD, "Invalid run id '../../x'"),
    "run id huge": Case(("stop", JOB, "x" * 500), BAD, "Invalid run id"),
    # --- hostile answers -------------------------------------------------------------------
    "start 200 not JSON": Case(
        START,
        ExitCode.OUTCOME_UNKNOWN,
        "answered 200 without an engine id",
        fault=answer("v1.start", "<html>login</html>"),
        sent=1,
    ),
    "start 200 forged lines": Case(
        START,
        ExitCode.OUTCOME_UNKNOWN,
        "answered 200 with an invalid engine id",
        fault=answer(
            "v1.start", {"engine_id": "abc\n  job page: https://evil.example\x1b]0;pwned\x07"}
        ),
        sent=1,
        hidden=("evil.example", "\x1b"),
    ),
    "start 200 number id": Case(
        START,
        ExitCode.OUTCOME_UNKNOWN,
        "without an engine id",
        fault=answer("v1.start", {"engine_id": 5}),
        sent=1,
    ),
    "start 200 empty object": Case(
        START,
        ExitCode.OUTCOME_UNKNOWN,
        "without an engine id",
        fault=answer("v1.start", {}),
        sent=1,
    ),
    "start 200 oversized id": Case(
        START,
        ExitCode.OUTCOME_UNKNOWN,
        "with an invalid engine id",
        fault=answer("v1.start", {"engine_id": "x" * 1000}),
        sent=1,
    ),
    "start 200 20 MB": Case(
        START,
        ExitCode.OUTCOME_UNKNOWN,
        "with more than 1048576 bytes",
        fault=answer("v1.start", "x", body_repeat=20_000_000),
        sent=1,
    ),
    "start 200 bad gzip": Case(
        START,
        ExitCode.OUTCOME_UNKNOWN,
        "could not be decoded",
        fault=answer("v1.start", "not gzip", headers={"Content-Encoding": "gzip"}),
        sent=1,
    ),
    "start drip": Case(
        START,
        ExitCode.OUTCOME_UNKNOWN,
        "still arriving after 1 s",
        {"CML_TIMEOUT": "1"},
        fault=Fault(endpoint="v1.start", kind="drip", seconds=0.1),
        sent=1,
    ),
    "start redirect": Case(
        START,
        ExitCode.REJECTED,
        "redirected the request to evil.example",
        fault=answer(
            "v1.start", status=302, headers={"Location": "https://evil.example/login?token=T0KEN"}
        ),
        sent=1,
        hidden=("T0KEN",),
    ),
    "start 400 escape in message": Case(
        START,
        ExitCode.REJECTED,
        "bad \\x1b[31mthing",
        fault=answer("v1.start", {"message": "bad \x1b[31mthing"}, status=400),
        sent=1,
        hidden=("\x1b",),
    ),
    # Reconciled through v2 (no run with this environment), so retried safely, then given up.
    "v2 start 200 garbage": Case(
        (*WAIT, "--poll", "1s", "-e", "CASE=v2-garbage"),
        ExitCode.OUTCOME_UNKNOWN,
        "answered 200 with no readable run",
        fault=answer("v2.create_run", "[1, 2]"),
        sent=None,
    ),
    "runs 200 not JSON": Case(
        RUNS,
        ExitCode.SERVER,
        "answered 200 without a JSON object",
        fault=answer("v2.list_runs", "<html/>"),
        sent=1,
    ),
    "runs wrong shape": Case(
        RUNS,
        ExitCode.SERVER,
        "`job_runs` is not a list of objects",
        fault=answer("v2.list_runs", {"job_runs": "x"}),
        sent=1,
    ),
    "runs run id newline": Case(
        RUNS,
        ExitCode.SERVER,
        "invalid fields",
        fault=answer("v2.list_runs", {"job_runs": [{**RUN_JSON, "id": "a\nb"}]}),
        sent=1,
    ),
    "runs run id missing": Case(
        RUNS,
        ExitCode.SERVER,
        "invalid fields",
        fault=answer("v2.list_runs", {"job_runs": [{"status": "ENGINE_RUNNING"}]}),
        sent=1,
    ),
    "runs page token escape": Case(
        RUNS,
        ExitCode.SERVER,
        "invalid next_page_token",
        fault=answer("v2.list_runs", {"job_runs": [RUN_JSON], "next_page_token": "\x1b[2J"}),
        sent=1,
    ),
    "runs 9 MB page": Case(
        RUNS,
        ExitCode.SERVER,
        "with more than 8388608 bytes",
        fault=answer("v2.list_runs", "[", body_repeat=9_000_000),
        sent=1,
    ),
    "runs deep nesting": Case(
        RUNS,
        ExitCode.SERVER,
        "without a JSON object",
        fault=answer("v2.list_runs", "[" * 100_000),
        sent=1,
    ),
    "runs bad project id": Case(
        RUNS,
        ExitCode.SERVER,
        "invalid project id",
        fault=answer(
            "v2.list_projects",
            {
                "projects": [
                    {"id": "a/../b", "name": "risk-analysis", "owner": {"username": "alice"}}
                ]
            },
        ),
        sent=1,
    ),
    "runs redirect": Case(
        RUNS,
        ExitCode.REJECTED,
        "redirected the request to sso.example",
        fault=answer(
            "v2.list_runs", status=307, headers={"Location": "https://sso.example/x?state=S7ATE"}
        ),
        sent=1,
        hidden=("S7ATE",),
    ),
    "stop 200 not an object": Case(
        STOP, ExitCode.SERVER, "without a JSON object", fault=answer("v2.stop_run", "[]"), sent=1
    ),
    # Issue items 6, 8, 9, 10 and 15.
    "runs page token repeats": Case(
        RUNS,
        ExitCode.SERVER,
        "next_page_token it had already given",
        fault=answer("v2.list_runs", {"job_runs": [RUN_JSON], "next_page_token": "again"}),
        sent=2,
    ),
    "lookup page token repeats": Case(
        RUNS,
        ExitCode.SERVER,
        "next_page_token it had already given",
        fault=answer("v2.list_projects", {"projects": [], "next_page_token": "again"}),
        sent=2,
    ),
    "runs two projects one name": Case(
        RUNS,
        ExitCode.SERVER,
        "2 projects with that owner and name (lv1g-4hu5-a359-wagc, twin-0001)",
        fault=answer(
            "v2.list_projects",
            {
                "projects": [
                    {**PROJECT_JSON, "id": "lv1g-4hu5-a359-wagc"},
                    {**PROJECT_JSON, "id": "twin-0001"},
                ]
            },
        ),
        sent=1,
    ),
    "runs created_at without zone": Case(
        RUNS,
        ExitCode.SERVER,
        "invalid fields, e.g. ('created_at',)",
        fault=answer(
            "v2.list_runs", {"job_runs": [{**RUN_JSON, "created_at": "2017-01-01T00:00:00"}]}
        ),
        sent=1,
    ),
    "start 200 gzip in gzip": Case(
        START,
        ExitCode.OUTCOME_UNKNOWN,
        "Content-Encoding 'gzip, gzip' (more than one content-coding",
        fault=answer("v1.start", "bomb", headers={"Content-Encoding": "gzip, gzip"}),
        sent=1,
    ),
    "runs 200 gzip in gzip": Case(
        RUNS,
        ExitCode.SERVER,
        "Content-Encoding 'gzip, gzip' (more than one content-coding",
        fault=answer("v2.list_runs", "bomb", headers={"Content-Encoding": "gzip, gzip"}),
        sent=1,
    ),
    "start 200 unasked coding": Case(
        START,
        ExitCode.OUTCOME_UNKNOWN,
        "Content-Encoding 'br' (not one the client accepts)",
        fault=answer("v1.start", "brotli?", headers={"Content-Encoding": "br"}),
        sent=1,
    ),
    "start 401 echoes the Basic header": Case(
        START,
        ExitCode.AUTH,
        "bad header Authorization: Basic ***",
        fault=answer(
            "v1.start", {"message": f"bad header Authorization: Basic {BASIC}"}, status=401
        ),
        sent=1,
        hidden=(BASIC[:12],),
    ),
    # Issue items 11, 12, 13, 14 and 21.
    "item 11 windows daily 0001..9999": Case(
        ("windows", "--from", "0001-01-01", "--to", "9999-12-30", "--every", "day", "--json"),
        BAD,
        "holds 3,652,058 windows of every day (UTC), more than the maximum of 100,000 "
        "(MAX_WINDOWS)",
    ),
    "item 11 windows daily 1000 years": Case(
        ("windows", "--from", "1000-01-01", "--to", "1999-12-31", "--every", "day"),
        BAD,
        "more than the maximum of 100,000 (MAX_WINDOWS)",
    ),
    "item 11 backfill dry run daily 0001..9999": Case(
        (
            "backfill",
            JOB,
            "--from",
            "0001-01-01",
            "--to",
            "9999-12-30",
            "--every",
            "day",
            "--dry-run",
        ),
        BAD,
        "more than the maximum of 100,000 (MAX_WINDOWS)",
    ),
    "item 12 every with 5000 digits": Case(
        (*WINDOWS, "--every", "9" * 5000 + " days"),
        BAD,
        "the count has more than 6 digits",
    ),
    "item 13 env value not UTF-8": Case(
        (*START, "-e", "A=\udcff\udcfe"),
        BAD,
        "Environment variable A is not valid UTF-8 text (byte 0xff at position 0)",
    ),
    "item 13 env value not UTF-8 with wait": Case(
        (*WAIT, "-e", "A=ok\udcff"), BAD, "Environment variable A is not valid UTF-8 text"
    ),
    "item 13 windows set not UTF-8": Case(
        (*WINDOWS, "--set", "A=\udcff"), BAD, "Environment variable A is not valid UTF-8 text"
    ),
    "item 14 windows set escape": Case(
        (*WINDOWS, "--set", "A=x\x1b]0;pwned\x07\n  2099-01  START_DATE=forged"),
        ExitCode.OK,
        "A=x\\x1b]0;pwned\\x07\\x0a  2099-01",
        hidden=("\x1b", "\x07", "\n  2099-01"),
    ),
    "item 14 windows date format newline": Case(
        (*WINDOWS, "--date-format", "%Y-%m-%d%n"),
        ExitCode.OK,
        "START_DATE=2017-01-01\\x0a END_DATE=2017-01-31\\x0a",
        hidden=("2017-01-01\n",),
    ),
    "item 21 timeout 1e-9": Case(
        START,
        BAD,
        "CML_TIMEOUT: Input should be greater than or equal to 0.1",
        {"CML_TIMEOUT": "1e-9"},
    ),
    "item 21 connect timeout 1e-9": Case(
        START,
        BAD,
        "CML_CONNECT_TIMEOUT: Input should be greater than or equal to 0.1",
        {"CML_CONNECT_TIMEOUT": "1e-9"},
    ),
    "item 21 job url query": Case(
        ("start", "{base}/alice/risk-analysis/jobs/208?tab=history"),
        BAD,
        "a job URL has no ?query or #fragment",
    ),
    "item 21 job url fragment": Case(
        ("start", "{base}/alice/risk-analysis/jobs/208#runs"),
        BAD,
        "a job URL has no ?query or #fragment",
    ),
    "start 400 key across the cut": Case(
        START,
        ExitCode.REJECTED,
        "x***",
        fault=answer("v1.start", {"message": "x" * 990 + DEFAULT_V1_KEY}, status=400),
        sent=1,
        hidden=(DEFAULT_V1_KEY[:6],),
    ),
}


@pytest.fixture(scope="module")
def cml() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_bad_input_and_hostile_answers(cml: Emulator, case: Case) -> None:
    cml.clear_faults()
    if case.fault is not None:
        cml.inject(case.fault)
    base = cml.url
    args = [arg.replace("{base}", base) for arg in case.args]
    env: dict[str, str | None] = {**KEYS, "CML_HOST": None}
    env |= {name: v.replace("{base}", base) if v else v for name, v in case.env.items()}
    before = len(cml.requests())
    try:
        result = CliRunner().invoke(app, args, env=env)
    finally:
        cml.clear_faults()
    output = result.output
    assert result.exit_code == case.code, output
    assert case.message in output, output
    assert "Traceback" not in output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    for text in case.hidden:
        assert text not in output, output
    if case.sent is not None:
        sent = [r for r in cml.requests()[before:] if case.fault is None or r["fault"]]
        assert len(sent) == case.sent, sent


RUN_OPTIONS = {
    "max concurrency 0": (("--max-concurrency", "0"), {"max_concurrency": 0}),
    "max concurrency 10000": (("--max-concurrency", "10000"), {"max_concurrency": 10000}),
    "reprocess bogus": (("--reprocess", "bogus"), {"reprocess": "bogus"}),
}


@pytest.mark.parametrize(("args", "given"), RUN_OPTIONS.values(), ids=list(RUN_OPTIONS))
def test_backfill_dry_run_says_what_the_flow_says(
    cml: Emulator, args: tuple[str, ...], given: dict[str, object]
) -> None:
    """One validation path: the dry run's message is `check_run_options`'s, the check the
    `cml-backfill` flow makes before its first request (tests/test_backfill.py runs the flow)."""
    from cml_tasks.backfill import check_run_options
    from cml_tasks.errors import CMLInputError

    options: dict[str, object] = {
        "max_concurrency": 4,
        "reprocess": "missing",
        "follow": False,
        "scale_out": False,
        "poll_interval": 30.0,
    }
    with pytest.raises(CMLInputError) as caught:
        check_run_options(**(options | given))  # type: ignore[arg-type]
    job = JOB.replace("{base}", cml.url)
    result = CliRunner().invoke(app, [*DRY[:1], job, *DRY[2:], *args], env={**KEYS})
    assert result.exit_code == BAD
    assert result.output == f"Error: {caught.value}\n"


# Known gaps of `cml-jobs backfill`'s own options (cml_tasks/cli.py, `backfill`: it parses
# `--poll`/`--timeout` only under `if follow:` and without naming the option). `start` refuses
# `--timeout`/`--poll` without `--wait` and names the option; the backfill should do the same.


def test_backfill_timeout_without_follow_is_refused(cml: Emulator) -> None:
    args = [*DRY[:1], JOB.replace("{base}", cml.url), *DRY[2:], "--timeout", "2h"]
    result = CliRunner().invoke(app, args, env={**KEYS, "CML_HOST": None})
    assert result.exit_code == BAD, result.output
    assert "--timeout only applies with --follow" in result.output


def test_backfill_poll_without_follow_is_refused(cml: Emulator) -> None:
    args = [*DRY[:1], JOB.replace("{base}", cml.url), *DRY[2:], "--poll", "nan"]
    result = CliRunner().invoke(app, args, env={**KEYS, "CML_HOST": None})
    assert result.exit_code == BAD, result.output
    assert "--poll only applies with --follow" in result.output


@pytest.mark.parametrize("option", ["--poll", "--timeout"])
def test_backfill_duration_errors_name_the_option(cml: Emulator, option: str) -> None:
    args = [*DRY_FOLLOW[:1], JOB.replace("{base}", cml.url), *DRY_FOLLOW[2:], option, "nan"]
    result = CliRunner().invoke(app, args, env={**KEYS, "CML_HOST": None})
    assert result.exit_code == BAD, result.output
    assert f"Invalid {option} 'nan': must be a finite duration" in result.output


def test_a_key_that_slips_past_the_settings_never_shows_in_a_transport_error(
    cml: Emulator,
) -> None:
    """Defence in depth: even a key built without validation (a CR in the header) is
    redacted from the transport error's str and repr, and it is not retried."""
    from pydantic import SecretStr

    from cml_tasks import CMLClient, CMLSettings, CMLTransportError, RetryPolicy

    settings = CMLSettings.model_construct(
        **{**CMLSettings.load(_env_file=None).model_dump(), "api_v2_key": SecretStr(CR_KEY)}
    )
    job = cml.job_url("alice", "risk-analysis", "208")
    with (
        CMLClient(settings, retry=RetryPolicy(attempts=1)) as client,
        pytest.raises(CMLTransportError) as caught,
    ):
        client.list_runs_page(job)
    assert DEFAULT_V2_KEY not in str(caught.value) + repr(caught.value)
    assert "***" in str(caught.value)


def test_start_held_by_100_continue_ends_within_cml_timeout(cml: Emulator) -> None:
    """Issue item 7 through `cml-jobs`: a server answering `100 Continue` every second held
    `start` past 100 s with CML_TIMEOUT=30. The emulator cannot answer that, so a raw socket
    does: the start ends within CML_TIMEOUT (2 s) as outcome unknown (exit 7)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def flood() -> None:
        try:
            connection, _ = listener.accept()
        except OSError:
            return  # closed: the CLI never came
        with connection:
            connection.recv(65536)
            while not stop.is_set():
                try:
                    connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                except OSError:
                    return
                time.sleep(1.0)

    threading.Thread(target=flood, daemon=True).start()
    job = f"http://127.0.0.1:{listener.getsockname()[1]}/alice/risk-analysis/jobs/208"
    began = time.monotonic()
    try:
        env = {**KEYS, "CML_HOST": None, "CML_TIMEOUT": "2"}
        result = CliRunner().invoke(app, ["start", job], env=env)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - began < 2 + 2
    assert result.exit_code == ExitCode.OUTCOME_UNKNOWN, result.output
    assert "headers had not arrived after 2 s (CML_TIMEOUT, in total)" in result.output
    assert "Traceback" not in result.output


def test_item_11_backfill_pipeline_dry_run_refuses_too_many_windows(
    cml: Emulator, tmp_path: Path
) -> None:
    """`backfill --pipeline ... --dry-run` plans through `windows_between` too: refused at
    once (it ran past 7 minutes), naming the maximum."""
    jobs = f"{cml.url}/alice/risk-analysis/jobs"
    pipeline = tmp_path / "risk.yaml"
    pipeline.write_text(
        "name: risk-daily\noptions: {every: day}\nsteps:\n"
        f"  - {{name: ingest, job: {jobs}/208}}\n",
        encoding="utf-8",
    )
    args = ["backfill", "--pipeline", str(pipeline), "--from", "0001-01-01"]
    args += ["--to", "9999-12-30", "--dry-run"]
    before = len(cml.requests())
    started = time.monotonic()
    result = CliRunner().invoke(app, args, env={**KEYS, "CML_HOST": None})
    assert time.monotonic() - started < 10
    assert result.exit_code == BAD, result.output
    assert "more than the maximum of 100,000 (MAX_WINDOWS)" in result.output
    assert "Traceback" not in result.output
    assert len(cml.requests()) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("CML_API_KEY=caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 15"),
        ("CML_API_KEY=x\n".encode("utf-16"), "is not UTF-8 text (byte 0xff at offset 0"),
    ],
    ids=["latin-1", "utf-16"],
)
def test_item_12_dotenv_not_utf8_exits_2(
    cml: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, message: str
) -> None:
    """A `.env` in another encoding was a UnicodeDecodeError traceback."""
    (tmp_path / ".env").write_bytes(content)
    monkeypatch.chdir(tmp_path)
    before = len(cml.requests())
    result = CliRunner().invoke(app, ["start", JOB.replace("{base}", cml.url)], env=KEYS)
    assert result.exit_code == BAD, result.output
    assert f"Error: The settings file .env {message}" in result.output
    assert "Traceback" not in result.output
    assert len(cml.requests()) == before


def test_item_21_dotenv_fifo_exits_2_at_once(
    cml: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `.env` that is a FIFO blocked every command forever."""
    os.mkfifo(tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["start", JOB.replace("{base}", cml.url)], env=KEYS)
    assert result.exit_code == BAD, result.output
    assert "The settings file .env is not a regular file" in result.output
    assert "Traceback" not in result.output
