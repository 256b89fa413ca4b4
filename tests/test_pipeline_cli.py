"""`cml-jobs backfill --pipeline` and `cml-jobs records --pipeline`, run as a user runs them
(a subprocess on a "machine" of its own) against the emulator and a real `prefect server
start`: a month's failed step is fixed and resumed, nothing is started twice, `--from-step`
starts a step and the steps after it again; the dry run needs no Prefect and no key; bad
input sends nothing. The emulator's runs are the judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PrefectServer, machine_env
from typer.testing import CliRunner

from cml_tasks.cli import ExitCode, app
from cml_tasks.emulator import (
    DEFAULT_V1_KEY,
    DEFAULT_V2_KEY,
    Emulator,
    OutcomeRule,
    default_config,
)

CML_JOBS = str(Path(sys.executable).with_name("cml-jobs"))
KEYS = {"CML_API_KEY": DEFAULT_V1_KEY, "CML_API_V2_KEY": DEFAULT_V2_KEY}
HALF_YEAR = ["--from", "2017-01-01", "--to", "2017-06-30"]
FAST = ["--poll", "1s"]
MARCH_FAILS = [OutcomeRule(when={"START_DATE": "2017-03-01"}, outcome="failed")]


@pytest.fixture
def cml() -> Iterator[Emulator]:
    """The default world, its runs five times faster (a run takes about 0.3 s)."""
    with Emulator(default_config(time_scale=0.2)) as emulator:
        yield emulator


def pipeline_yaml(cml: Emulator, steps: str | None = None) -> str:
    """The issue's pipeline: ingest (208), then train (212), then score (213)."""
    jobs = f"{cml.url}/alice/risk-analysis/jobs"
    steps = steps or (
        f"  - {{name: ingest, job: {jobs}/208}}\n"
        f"  - {{name: train, job: {jobs}/212, after: [ingest]}}\n"
        f"  - {{name: score, job: {jobs}/213, after: [train]}}\n"
    )
    return "name: risk-monthly\noptions: {every: month, timezone: Europe/Berlin}\nsteps:\n" + steps


def write(tmp_path: Path, text: str, name: str = "risk.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def cml_jobs(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CML_JOBS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def runs_per_job(cml: Emulator) -> tuple[int, int, int]:
    """How many runs jobs 208, 212 and 213 have."""
    counts = Counter(run["job_id"] for run in cml.runs())
    return counts["208"], counts["212"], counts["213"]


def grid(payload: dict[str, Any]) -> dict[str, list[str]]:
    """`{"2017-03": ["succeeded", "failed", "not reached"], ...}` from a report's JSON."""
    return {row["window"]: [cell["result"] for cell in row["cells"]] for row in payload["rows"]}


def newest_runs(cml: Emulator, count: int) -> list[tuple[str, str]]:
    """`[("212", "2017-03-01"), ...]`: the job and START_DATE of the newest `count` runs."""
    return [(run["job_id"], run["environment"]["START_DATE"]) for run in cml.runs()[-count:]]


def json_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return payload


def test_a_failed_step_is_fixed_and_resumed_and_nothing_runs_twice(
    server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    cml.set_outcomes("212", MARCH_FAILS)
    path = write(tmp_path, pipeline_yaml(cml))
    env = machine_env(server, tmp_path, "laptop", **KEYS)
    work = tmp_path / "laptop" / "work"
    backfill = ["backfill", "--pipeline", str(path), *HALF_YEAR, *FAST]

    first = cml_jobs(env, work, *backfill)
    assert first.returncode == ExitCode.FAILURE, first.stdout + first.stderr[-3000:]
    assert runs_per_job(cml) == (6, 6, 5)
    lines = first.stdout.splitlines()
    assert lines[0] == "Failed:"
    assert lines[1].startswith("  2017-03 train: failed: ")
    assert f"({cml.url}/alice/risk-analysis/jobs/212/runs/" in lines[1]
    march = next(line for line in lines if line.startswith("2017-03 "))
    assert march.split()[-4:] == ["succeeded", "failed", "not", "reached"]
    assert "START_DATE=2017-03-01 END_DATE=2017-03-31" in march
    summary = "6 windows x 3 steps: 16 succeeded, 1 failed, 1 not reached"
    assert lines.index(summary) > lines.index(march)
    assert lines[-1].startswith("Resume: run the same backfill")

    cml.set_outcomes("212", [])
    fixed = cml_jobs(env, work, *backfill, "--json")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert runs_per_job(cml) == (6, 7, 6)
    report = json_of(fixed)
    assert set(map(tuple, grid(report).values())) == {("succeeded",) * 3}
    assert newest_runs(cml, 2) == [("212", "2017-03-01"), ("213", "2017-03-01")]
    assert report["summary"] == "6 windows x 3 steps: 18 succeeded"

    again = cml_jobs(env, work, *backfill, "--follow", "--json")  # implied; harmless
    assert again.returncode == 0, again.stderr[-3000:]
    assert runs_per_job(cml) == (6, 7, 6)
    assert grid(json_of(again)) == grid(report)

    may = ["--from", "2017-05-01", "--to", "2017-05-31"]
    step = ["--from-step", "train", "--json"]
    from_train = cml_jobs(env, work, "backfill", "--pipeline", str(path), *may, *FAST, *step)
    assert from_train.returncode == 0, from_train.stderr[-3000:]
    assert runs_per_job(cml) == (6, 8, 7)
    assert newest_runs(cml, 2) == [("212", "2017-05-01"), ("213", "2017-05-01")]
    assert grid(json_of(from_train)) == {"2017-05": ["succeeded"] * 3}
    assert json_of(from_train)["summary"] == "1 window x 3 steps: 3 succeeded"

    listed = cml_jobs(env, work, "records", "--pipeline", str(path), *HALF_YEAR, "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    records = json_of(listed)
    assert grid(records) == {f"2017-0{m}": ["succeeded"] * 3 for m in range(1, 7)}
    may_train = records["rows"][4]["cells"][1]
    assert may_train["engine_id"] == cml.runs()[-2]["id"]
    assert runs_per_job(cml) == (6, 8, 7), "records starts nothing"


def test_the_dry_run_lists_every_step_and_needs_no_prefect_nor_keys(
    cml: Emulator, tmp_path: Path
) -> None:
    path = write(tmp_path, pipeline_yaml(cml))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CML_", "PREFECT_"))}
    script = (
        "import sys\n"
        "from cml_tasks.cli import main\n"
        "try:\n"
        f"    main(['backfill', '--pipeline', {str(path)!r}, *{HALF_YEAR!r}, '--dry-run',"
        " '--json'])\n"
        "except SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\n"
        "loaded = [m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')]\n"
        "assert not loaded, loaded[:5]\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    report = json_of(done)
    assert report["dry_run"] is True
    assert grid(report) == {f"2017-0{m}": ["planned"] * 3 for m in range(1, 7)}
    june = report["rows"][5]["cells"]
    assert [cell["environment"] for cell in june] == [
        {"START_DATE": "2017-06-01", "END_DATE": "2017-06-30"}
    ] * 3
    assert [cell["job_url"].rsplit("/", 1)[1] for cell in june] == ["208", "212", "213"]

    table = cml_jobs(env, tmp_path, "backfill", "--pipeline", str(path), *HALF_YEAR, "--dry-run")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines() if line.startswith("2017-")]
    assert len(rows) == 6
    assert rows[1] == ["2017-02", "START_DATE=2017-02-01", "END_DATE=2017-02-28", *["planned"] * 3]
    assert "6 windows x 3 steps: 18 planned" in table.stdout
    assert cml.requests() == [] and cml.runs() == []


def test_a_step_s_own_variables_are_shown_escaped(cml: Emulator, tmp_path: Path) -> None:
    jobs = f"{cml.url}/alice/risk-analysis/jobs"
    steps = (
        f"  - {{name: ingest, job: {jobs}/208}}\n"
        f'  - {{name: train, job: {jobs}/212, after: [ingest], environment: {{NOTE: "a\\eb"}}}}\n'
    )
    path = write(tmp_path, pipeline_yaml(cml, steps))
    result = CliRunner().invoke(
        app, ["backfill", "--pipeline", str(path), *HALF_YEAR, "--dry-run"], env=KEYS
    )
    assert result.exit_code == 0, result.output
    assert "NOTE=a\\x1bb" in result.stdout and "\x1b" not in result.stdout
    assert cml.requests() == []


CYCLE = (
    "  - {name: ingest, job: 'JOBS/208', after: [score]}\n"
    "  - {name: train, job: 'JOBS/212', after: [ingest]}\n"
    "  - {name: score, job: 'JOBS/213', after: [train]}\n"
)
UNKNOWN_AFTER = (
    "  - {name: ingest, job: 'JOBS/208'}\n  - {name: train, job: 'JOBS/212', after: [cleanse]}\n"
)
TWICE = "  - {name: train, job: 'JOBS/208'}\n  - {name: train, job: 'JOBS/212'}\n"
BAD_FILES = {
    "cycle": (CYCLE, "the steps ingest, train, score wait for each other (a cycle)"),
    "unknown after": (UNKNOWN_AFTER, "step 'train': after names no step 'cleanse'"),
    "duplicate names": (TWICE, "two steps are named 'train'"),
}
REAL_RUN = ["backfill", "--pipeline", "{file}", *HALF_YEAR, *FAST]
BAD_ARGS: dict[str, tuple[list[str], str]] = {
    "unknown --from-step": (
        [*REAL_RUN, "--from-step", "report"],
        "Pipeline risk-monthly has no step 'report': its steps are ingest, train, score",
    ),
    "unknown --from-step, dry run": (
        [*REAL_RUN, "--from-step", "report", "--dry-run"],
        "its steps are ingest, train, score",
    ),
    "a missing file": (
        ["backfill", "--pipeline", "{tmp}/nope.yaml", *HALF_YEAR],
        "nope.yaml is not a readable regular file",
    ),
    "a job and --pipeline": (
        ["backfill", "{job}", "--pipeline", "{file}", *HALF_YEAR],
        "give a job URL or --pipeline FILE, not both",
    ),
    "neither a job nor --pipeline": (
        ["backfill", *HALF_YEAR],
        "give a job URL, or --pipeline FILE",
    ),
    "--every with --pipeline": (
        [*REAL_RUN, "--every", "week"],
        "--every does not apply with --pipeline: the pipeline file sets the windows",
    ),
    "window flags with --pipeline": (
        [*REAL_RUN, "--timezone", "UTC", "--set", "A=b"],
        "--timezone, --set do not apply with --pipeline: the pipeline file sets the windows",
    ),
    "--from-step without --pipeline": (
        ["backfill", "{job}", *HALF_YEAR, "--from-step", "train"],
        "--from-step only applies with --pipeline",
    ),
    "--poll too short": ([*REAL_RUN, "--poll", "0.1s"], "must be between 1s and 7d"),
    "--max-concurrency 0": ([*REAL_RUN, "--max-concurrency", "0"], "max_concurrency must be"),
    "records --forget with --pipeline": (
        ["records", "--pipeline", "{file}", *HALF_YEAR, "--forget", "2017-03"],
        "--forget applies to one job's window",
    ),
    "records --pipeline without --to": (
        ["records", "--pipeline", "{file}", "--from", "2017-01-01"],
        "--pipeline needs --from and --to",
    ),
}


def invoke_bad(
    cml: Emulator, tmp_path: Path, args: list[str], env: dict[str, str | None]
) -> tuple[int, str]:
    """Run `cml-jobs` in this process; the exit code and everything printed. Nothing may
    reach CML."""
    file = write(tmp_path, pipeline_yaml(cml))
    job = cml.job_url("alice", "risk-analysis", "208")
    args = [a.format(file=file, tmp=tmp_path, job=job) for a in args]
    result = CliRunner().invoke(app, args, env=env)
    assert cml.requests() == [], result.output
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.mark.parametrize("case", BAD_ARGS.values(), ids=list(BAD_ARGS))
def test_bad_arguments_exit_2_and_send_nothing(
    cml: Emulator, tmp_path: Path, case: tuple[list[str], str]
) -> None:
    args, message = case
    code, output = invoke_bad(cml, tmp_path, args, dict(KEYS))
    assert code == ExitCode.BAD_INPUT, output
    assert message in output


@pytest.mark.parametrize("case", BAD_FILES.values(), ids=list(BAD_FILES))
def test_a_bad_pipeline_file_exits_2_and_sends_nothing(
    cml: Emulator, tmp_path: Path, case: tuple[str, str]
) -> None:
    steps, message = case
    write(
        tmp_path,
        pipeline_yaml(cml, steps.replace("JOBS", f"{cml.url}/alice/risk-analysis/jobs")),
        "bad.yaml",
    )
    for command in (["backfill"], ["backfill", "--dry-run"], ["records"]):
        args = [*command, "--pipeline", str(tmp_path / "bad.yaml"), *HALF_YEAR]
        code, output = invoke_bad(cml, tmp_path, args, dict(KEYS))
        assert code == ExitCode.BAD_INPUT, output
        assert message in output, output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: risk\nsteps: [unclosed\n", "Cannot read pipeline file"),
        ("- just\n- a list\n", "expected a mapping with name, options and steps"),
    ],
    ids=["not YAML", "not a mapping"],
)
def test_a_file_that_is_not_a_pipeline_exits_2(
    cml: Emulator, tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text, "bad.yaml")
    code, output = invoke_bad(
        cml, tmp_path, ["backfill", "--pipeline", str(path), *HALF_YEAR], dict(KEYS)
    )
    assert code == ExitCode.BAD_INPUT, output
    assert message in output


def test_a_real_run_without_the_v2_key_exits_2_before_any_request(
    cml: Emulator, tmp_path: Path
) -> None:
    env: dict[str, str | None] = {"CML_API_KEY": DEFAULT_V1_KEY, "CML_API_V2_KEY": None}
    code, output = invoke_bad(cml, tmp_path, REAL_RUN, env)
    assert code == ExitCode.BAD_INPUT, output
    assert "Missing CML settings" in output and "CML_API_V2_KEY" in output
    code, output = invoke_bad(cml, tmp_path, [*REAL_RUN, "--dry-run"], env)
    assert code == 0, output
