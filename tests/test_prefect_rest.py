"""Which Prefect API a rerun reads its records from without Prefect: only a certain one."""

from __future__ import annotations

from pathlib import Path

from cml_tasks.prefect_rest import prefect_api_from_settings

URL = "http://prefect.example:4200/api"


def _profiles(home: Path, text: str) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    (home / "profiles.toml").write_text(text)
    return {"PREFECT_HOME": str(home)}


def test_the_environment_wins_and_its_key_is_sent_but_never_shown(tmp_path: Path) -> None:
    env = _profiles(tmp_path / "home", f'active = "a"\n[profiles.a]\nPREFECT_API_URL = "{URL}x"\n')
    (tmp_path / ".env").write_text("PREFECT_API_URL=http://elsewhere/api\n")
    api = prefect_api_from_settings(
        env | {"PREFECT_API_URL": URL + "/", "PREFECT_API_KEY": "pnu_secret"}, cwd=tmp_path
    )
    assert api is not None
    assert (api.url, api.headers) == (URL, {"Authorization": "Bearer pnu_secret"})
    assert "pnu_secret" not in repr(api)


def test_the_active_profile_is_read_when_nothing_local_overrides_it(tmp_path: Path) -> None:
    env = _profiles(
        tmp_path / "home",
        f'active = "a"\n[profiles.a]\nPREFECT_API_URL = "{URL}"\n'
        'PREFECT_API_AUTH_STRING = "admin:pass"\n[profiles.b]\nPREFECT_API_URL = "http://b/api"\n',
    )
    api = prefect_api_from_settings(env, cwd=tmp_path)
    assert api is not None
    assert (api.url, api.headers) == (URL, {"Authorization": "Basic YWRtaW46cGFzcw=="})
    chosen = prefect_api_from_settings(env | {"PREFECT_PROFILE": "b"}, cwd=tmp_path)
    assert chosen is not None and chosen.url == "http://b/api"


def test_an_uncertain_api_is_left_to_prefect(tmp_path: Path) -> None:
    env = _profiles(tmp_path / "home", f'active = "a"\n[profiles.a]\nPREFECT_API_URL = "{URL}"\n')
    for local in (".env", "prefect.toml"):
        (tmp_path / local).write_text("")
        assert prefect_api_from_settings(env, cwd=tmp_path) is None
        (tmp_path / local).unlink()
    (tmp_path / "pyproject.toml").write_text('[tool.prefect]\nlogging.level = "INFO"\n')
    assert prefect_api_from_settings(env, cwd=tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert prefect_api_from_settings(env, cwd=tmp_path) is not None
    tls = {"PREFECT_API_URL": URL, "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true"}
    assert prefect_api_from_settings(tls, cwd=tmp_path) is None
    assert prefect_api_from_settings({"PREFECT_HOME": str(tmp_path / "none")}, cwd=tmp_path) is None
