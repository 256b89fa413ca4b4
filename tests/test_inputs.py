"""Bad input, case by case: each gets a clear error and sends no request."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx

from cml_tasks import CMLClient, CMLConfigError, CMLInputError, CMLSettings, JobRef
from cml_tasks.environment import parse_assignments, validate_environment

KEY = "uysgxtj7jzkps96njextnxxmq05usp0b"
URL = "https://cml.example.com/alice/risk-analysis/jobs/208"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (URL, ("https://cml.example.com", "alice", "risk-analysis", "208")),
        (URL + "/", ("https://cml.example.com", "alice", "risk-analysis", "208")),
        (
            "https://cml.example.com:443/alice/risk-analysis/jobs/208",
            ("https://cml.example.com", "alice", "risk-analysis", "208"),
        ),
        (
            "HTTPS://CML.Example.com:8443/team-a/p_1.x/jobs/ab12-cd34",
            ("https://cml.example.com:8443", "team-a", "p_1.x", "ab12-cd34"),
        ),
    ],
)
def test_job_url_parses(url: str, expected: tuple[str, str, str, str]) -> None:
    ref = JobRef.from_url(url)
    assert (ref.host, ref.username, ref.project, ref.job_id) == expected
    assert ref.slug == f"{expected[2]}/{expected[3]}"
    assert ref.start_url == f"{expected[0]}/api/v1/projects/{ref.path}/start"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://cml.example.com/alice/risk-analysis/jobs/208", "http(s)"),
        ("https:///alice/risk-analysis/jobs/208", "http(s)"),
        ("https://cml.example.com/alice/risk-analysis/208", "Overview page URL"),
        ("https://cml.example.com/alice/risk-analysis/runs/208", "Overview page URL"),
        ("https://cml.example.com/alice/risk-analysis/jobs/208/history", "Overview page URL"),
        ("https://cml.example.com/alice/risk analysis/jobs/208", "project name"),
        ("https://cml.example.com/alice/risk-analysis/jobs/2;08", "job id"),
        ("https://cml.example.com/-alice/risk-analysis/jobs/208", "username"),
        ("https://key:@cml.example.com/alice/risk-analysis/jobs/208", "credentials"),
        ("https://cml.example.com:99999/alice/risk-analysis/jobs/208", "Invalid job URL"),
        # Issue item 21: a ?query or #fragment was silently dropped.
        ("http://127.0.0.1:8090/alice/risk-analysis/jobs/208?tab=history", "no ?query"),
        ("https://cml.example.com/alice/risk-analysis/jobs/208#runs", "#fragment"),
        ("https://cml.example.com/alice/risk-analysis/jobs/208?", "no ?query"),
    ],
)
def test_bad_job_url_is_a_clear_error(url: str, fragment: str) -> None:
    with pytest.raises(CMLInputError, match=None) as caught:
        JobRef.from_url(url)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    "parts",
    [("", "risk-analysis", "208"), ("alice", "", "208"), ("alice", "risk-analysis", "")],
)
def test_bad_job_parts(parts: tuple[str, str, str]) -> None:
    with pytest.raises(CMLInputError):
        JobRef.from_parts(*parts)


def test_job_given_as_parts_or_slug() -> None:
    assert JobRef.parse("alice/risk-analysis/208") == JobRef.from_parts(
        "alice", "risk-analysis", 208
    )
    assert JobRef.parse("alice/risk-analysis/jobs/208").job_id == "208"
    with pytest.raises(CMLInputError, match="user/project/job_id"):
        JobRef.parse("risk-analysis/208")


@pytest.mark.parametrize(
    ("environment", "fragment"),
    [
        ({"1START": "x"}, "Invalid environment variable name"),
        ({"START-DATE": "x"}, "Invalid environment variable name"),
        ({"": "x"}, "Invalid environment variable name"),
        ({"START_DATE": 20170101}, "must be a string"),
        ({"START_DATE": None}, "must be a string"),
        ({"START_DATE": ["2017-01-01"]}, "must be a string"),
    ],
)
def test_bad_environment(environment: dict[str, object], fragment: str) -> None:
    with pytest.raises(CMLInputError, match=fragment):
        validate_environment(environment)


def test_assignments() -> None:
    assert parse_assignments(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(CMLInputError, match="NAME=VALUE"):
        parse_assignments(["A"])
    with pytest.raises(CMLInputError, match="twice"):
        parse_assignments(["A=1", "A=2"])


def test_missing_settings_name_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CML_API_KEY", raising=False)
    settings = CMLSettings.load(_env_file=None)
    with pytest.raises(CMLConfigError, match="CML_API_KEY"):
        settings.require("api_key")
    with pytest.raises(CMLConfigError) as caught:
        settings.require("api_key", "api_v2_key")
    assert "CML_API_KEY" in str(caught.value) and "CML_API_V2_KEY" in str(caught.value)


def test_malformed_settings_name_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CML_TIMEOUT", "soon")
    monkeypatch.setenv("CML_VERIFY_TLS", "perhaps")
    monkeypatch.setenv("CML_HOST", "ftp://cml")
    with pytest.raises(CMLConfigError) as caught:
        CMLSettings.load(_env_file=None)
    for name in ("CML_TIMEOUT", "CML_VERIFY_TLS", "CML_HOST"):
        assert name in str(caught.value)


def test_settings_from_dotenv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CML_HOST", "CML_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text(f"CML_HOST=https://cml.example.com/\nCML_API_KEY={KEY}\n")
    monkeypatch.chdir(tmp_path)
    settings = CMLSettings.load()
    assert settings.host == "https://cml.example.com"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == KEY
    assert KEY not in repr(settings) and KEY not in str(settings)


def test_ca_bundle(tmp_path: Path) -> None:
    with pytest.raises(CMLConfigError, match="CML_CA_BUNDLE"):
        CMLSettings.load(ca_bundle=tmp_path / "missing.pem")
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert CMLSettings.load(ca_bundle=bundle).verify() == str(bundle)
    assert CMLSettings.load(verify_tls=False).verify() is False


def _client(**settings: object) -> CMLClient:
    return CMLClient(CMLSettings.load(_env_file=None, **settings))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "job", "environment", "error", "fragment"),
    [
        ({}, URL, None, CMLConfigError, "CML_API_KEY"),
        ({"api_key": KEY}, "alice/risk-analysis/208", None, CMLInputError, "CML_HOST"),
        ({"api_key": KEY}, "not a url", None, CMLInputError, "Invalid job"),
        ({"api_key": KEY}, URL, {"9LIVES": "x"}, CMLInputError, "9LIVES"),
        ({"api_key": KEY}, URL, {"N": 1}, CMLInputError, "must be a string"),
        (
            {"api_key": KEY, "host": "https://other.example.com"},
            URL,
            None,
            CMLInputError,
            "refusing to send the API key to another host",
        ),
        (
            {"api_key": KEY},
            "http://cml.example.com/alice/risk-analysis/jobs/208",
            None,
            CMLConfigError,
            "CML_ALLOW_INSECURE_HTTP",
        ),
    ],
)
def test_bad_input_sends_no_request(
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, object],
    job: str,
    environment: dict[str, object] | None,
    error: type[Exception],
    fragment: str,
) -> None:
    for name in ("CML_HOST", "CML_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    # Only CML's paths: a Prefect API worker of an earlier test may still be shipping logs.
    with respx.mock(assert_all_called=False, assert_all_mocked=False) as mock:
        route = mock.route(path__regex=r"^/api/v[12]/").mock(
            return_value=httpx.Response(200, json={"engine_id": "x" * 16})
        )
        with _client(**settings) as client, pytest.raises(error) as caught:
            client.start(job, environment)
    assert fragment in str(caught.value)
    assert KEY not in str(caught.value)
    assert not route.called


def test_plain_http_allowed_by_explicit_opt_in() -> None:
    with respx.mock() as mock:
        route = mock.post(
            "http://cml.example.com/api/v1/projects/alice/risk-analysis/jobs/208/start"
        ).mock(return_value=httpx.Response(200, json={"engine_id": "abcdefgh12345678"}))
        with _client(api_key=KEY, allow_insecure_http=True) as client:
            run = client.start("http://cml.example.com/alice/risk-analysis/jobs/208")
    assert run.engine_id == "abcdefgh12345678"
    assert route.call_count == 1


def test_empty_keys_count_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CML_API_KEY", "")
    monkeypatch.setenv("CML_API_V2_KEY", "  ")
    settings = CMLSettings.load(_env_file=None)
    with pytest.raises(CMLConfigError) as caught:
        settings.require("api_key", "api_v2_key")
    assert "CML_API_KEY" in str(caught.value) and "CML_API_V2_KEY" in str(caught.value)
    assert CMLSettings.load(_env_file=None, api_key="").api_key is None


def test_errors_survive_pickling() -> None:
    """Prefect persists a failed task's exception; every error must come back whole."""
    import pickle

    from cml_tasks.errors import CMLAuthError, CMLOutcomeUnknown, CMLThrottled

    for error in (
        CMLAuthError("Starting x", status_code=401, server_message="bad", job_url=URL),
        CMLThrottled("Starting x", status_code=429, retry_after=3.0, job_url=URL),
        CMLOutcomeUnknown("Starting x: outcome unknown", job_url=URL),
        CMLInputError("bad job"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


# Issue items 12, 13 and 21: a .env that is not UTF-8 or not a regular file, non-UTF-8
# bytes in a value, a timeout too short to connect, a default port spelled out.


@pytest.mark.parametrize(
    ("content", "encoding"),
    [("CML_HOST=https://cml.example.com\nCML_API_KEY=caf\xe9\n", "latin-1"), ("A=1\n", "utf-16")],
    ids=["latin-1", "utf-16"],
)
def test_item_12_dotenv_not_utf8_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, encoding: str
) -> None:
    (tmp_path / ".env").write_bytes(content.encode(encoding))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CMLConfigError, match="is not UTF-8 text") as caught:
        CMLSettings.load()
    assert "save it as UTF-8" in str(caught.value)


def test_item_21_dotenv_fifo_is_refused_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    os.mkfifo(tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CMLConfigError, match="is not a regular file"):
        CMLSettings.load()


@pytest.mark.parametrize(
    "value", ["\udcff\udcfe", "ok\ud800"], ids=["surrogate-escaped bytes", "lone surrogate"]
)
def test_item_13_values_that_are_not_utf8_are_refused(value: str) -> None:
    with pytest.raises(CMLInputError, match="A is not valid UTF-8 text"):
        parse_assignments([f"A={value}"])
    with pytest.raises(CMLInputError, match="A is not valid UTF-8 text"):
        validate_environment({"A": value})


@pytest.mark.parametrize("name", ["CML_TIMEOUT", "CML_CONNECT_TIMEOUT"])
def test_item_21_timeout_below_the_minimum_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "1e-9")
    with pytest.raises(CMLConfigError, match=f"{name}: Input should be greater than or equal"):
        CMLSettings.load(_env_file=None)
    monkeypatch.setenv(name, "0.1")
    CMLSettings.load(_env_file=None)


@pytest.mark.parametrize(
    ("host", "job"),
    [
        ("https://cml.example.com:443", URL),
        ("https://cml.example.com", "https://cml.example.com:443/alice/risk-analysis/jobs/208"),
        ("http://127.0.0.1:80", "http://127.0.0.1/alice/risk-analysis/jobs/208"),
    ],
)
def test_item_21_default_port_is_the_same_host(host: str, job: str) -> None:
    ref = JobRef.parse(job).with_host(host)
    assert ref.host == host.removesuffix(":443").removesuffix(":80")


def test_item_21_a_port_that_is_not_the_default_is_still_another_host() -> None:
    with pytest.raises(CMLInputError, match="another host"):
        JobRef.parse("http://127.0.0.1/alice/p/jobs/1").with_host("http://127.0.0.1:443")
