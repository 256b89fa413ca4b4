"""The pipeline model: one clear error for a bad pipeline (nothing sent), the YAML form, the
dependency order, and each step's record key (its job, the window and its extra environment)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from cml_tasks.backfill import window_key
from cml_tasks.errors import CMLInputError
from cml_tasks.job import JobRef
from cml_tasks.pipeline import Pipeline, Step, StepResult, plan_pipeline
from cml_tasks.window_options import WindowOptions

JOBS = "https://ml.example.com/alice/risk-analysis/jobs"
REPOSITORY = Path(__file__).resolve().parents[1]

RISK_YAML = f"""\
name: risk-monthly
options: {{every: month, timezone: Europe/Berlin}}
steps:
  - {{name: ingest, job: {JOBS}/208}}
  - {{name: train, job: {JOBS}/212, after: [ingest]}}
  - {{name: score, job: {JOBS}/213, after: [train]}}
"""


def _risk(**score: object) -> Pipeline:
    return Pipeline(
        "risk-monthly",
        options=WindowOptions(every="month", timezone="Europe/Berlin"),
        steps=[
            Step("ingest", f"{JOBS}/208"),
            Step("train", f"{JOBS}/212", after=["ingest"]),
            Step("score", f"{JOBS}/213", after=["train"], **score),  # type: ignore[arg-type]
        ],
    )


def test_the_yaml_file_and_the_python_form_are_one_model(tmp_path: Path) -> None:
    file = tmp_path / "risk.yaml"
    file.write_text(RISK_YAML)
    assert Pipeline.load(file) == _risk()
    shipped = Pipeline.load(REPOSITORY / "flows" / "risk_pipeline.yaml")
    assert shipped == _risk()


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([Step("a", f"{JOBS}/1", after=["b"])], "step 'a': after names no step 'b'"),
        (
            [Step("a", f"{JOBS}/1", after=["b"]), Step("b", f"{JOBS}/2", after=["a"])],
            "the steps a, b wait for each other (a cycle)",
        ),
        ([Step("a", f"{JOBS}/1", after=["a"])], "step 'a' comes after itself"),
        ([Step("a", f"{JOBS}/1"), Step("a", f"{JOBS}/2")], "two steps are named 'a'"),
        (
            [Step("a", f"{JOBS}/1"), Step("b", f"{JOBS}/1")],
            "steps 'a' and 'b' run the same job with the same environment",
        ),
        (
            [Step("a", f"{JOBS}/1", environment={"START_DATE": "x"})],
            "step 'a': environment sets START_DATE, which the window's dates set",
        ),
        ([], "steps: Tuple should have at least 1 item"),
    ],
)
def test_a_bad_pipeline_is_one_clear_error(steps: list[Step], message: str) -> None:
    with pytest.raises(CMLInputError) as raised:
        Pipeline("p", steps=steps)
    assert str(raised.value).startswith("Invalid pipeline 'p': ")
    assert message in str(raised.value)


def test_a_bad_step_is_refused_as_it_is_built() -> None:
    with pytest.raises(CMLInputError, match="Invalid step 'x': Invalid job 'nope'"):
        Step("x", "nope")
    with pytest.raises(CMLInputError, match="name: String should match pattern"):
        Step("bad name", f"{JOBS}/1")
    with pytest.raises(CMLInputError, match="Invalid environment variable name"):
        Step("x", f"{JOBS}/1", environment={"1A": "x"})
    with pytest.raises(CMLInputError, match="max_wait must be a positive number"):
        Step("x", f"{JOBS}/1", max_wait=0)


def test_the_same_job_twice_with_other_environments_is_two_steps() -> None:
    pipeline = Pipeline(
        "regions",
        steps=[
            Step("eu", f"{JOBS}/208", environment={"REGION": "eu"}),
            Step("us", f"{JOBS}/208", environment={"REGION": "us"}),
            Step("report", f"{JOBS}/213", after=["eu", "us"]),
        ],
    )
    plan = plan_pipeline(pipeline, date(2017, 3, 1), date(2017, 3, 31))
    (window,) = plan.windows
    keys = {name: planned.key for name, (_, planned) in window.steps.items()}
    assert len(set(keys.values())) == 3
    _, eu = window.steps["eu"]
    assert eu.environment == {"START_DATE": "2017-03-01", "END_DATE": "2017-03-31", "REGION": "eu"}
    assert [step.name for step in pipeline.order()] == ["eu", "us", "report"]
    assert pipeline.downstream("us") == {"us", "report"}


def test_a_step_without_extra_environment_shares_the_plain_jobs_record() -> None:
    plan = plan_pipeline(_risk(environment={"REGION": "eu"}), date(2017, 1, 1), date(2017, 2, 28))
    assert [w.label for w in plan.windows] == ["2017-01", "2017-02"]
    january = plan.windows[0]
    job, ingest = january.steps["ingest"]
    assert ingest.key == window_key(JobRef.parse(f"{JOBS}/208"), january.window)
    job, score = january.steps["score"]
    assert score.key != window_key(job, january.window)  # REGION=eu: a (step, window) of its own
    assert score.environment["REGION"] == "eu"


def test_the_steps_come_in_dependency_order_whatever_their_listing() -> None:
    pipeline = Pipeline(
        "listed-backwards",
        steps=[
            Step("score", f"{JOBS}/213", after=["train"]),
            Step("train", f"{JOBS}/212", after=["ingest"]),
            Step("ingest", f"{JOBS}/208"),
        ],
    )
    assert [step.name for step in pipeline.order()] == ["ingest", "train", "score"]
    assert pipeline.downstream("ingest") == {"ingest", "train", "score"}
    with pytest.raises(CMLInputError, match="has no step 'nope': its steps are score, train"):
        pipeline.downstream("nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just a list\n", "expected a mapping with name, options and steps"),
        ("name: [unclosed\n", "Cannot read pipeline file"),
        ("name: p\nsteps: []\nextra: 1\n", "extra: Extra inputs are not permitted"),
        (
            "name: p\noptions: {every: fortnight}\nsteps:\n  - {name: a, job: " + JOBS + "/1}\n",
            "every",
        ),
        ("name: p\nsteps:\n  - {name: a, job: " + JOBS + "/1, after: [b]}\n", "no step 'b'"),
    ],
)
def test_a_bad_pipeline_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(CMLInputError, match=message.replace("[", r"\[")):
        pipeline = Pipeline.load(file)
        pipeline.options.check()


def test_a_missing_or_special_pipeline_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CMLInputError, match="not a readable regular file"):
        Pipeline.load(tmp_path / "missing.yaml")
    with pytest.raises(CMLInputError, match="not a readable regular file"):
        Pipeline.load(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("#" * 300_000)
    with pytest.raises(CMLInputError, match="is over"):
        Pipeline.load(big)


def test_the_grid_words_are_the_documented_ones() -> None:
    assert [result.value for result in StepResult] == [
        "succeeded",
        "failed",
        "running",
        "not reached",
        "outcome unknown",
        "planned",
    ]
