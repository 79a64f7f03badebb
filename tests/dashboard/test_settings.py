"""The dashboard's settings: credentials from arguments and the environment,
refused configurations, the warning before binding beyond loopback, and the
command's help."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor import InvalidOptionError
from conveyor.cli import cli
from conveyor.dashboard import Redaction
from conveyor.dashboard.auth import Access, Sessions
from conveyor.dashboard.server import exposure_warning
from conveyor.settings import CONVEYOR_DASHBOARD_BASIC_AUTH, CONVEYOR_DASHBOARD_TOKEN

TOKEN = "a-long-enough-dashboard-token"


def test_credentials_from_arguments_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Access.build() == Access(None, None, actions=False)
    assert Access.build(token=TOKEN).actions is True
    monkeypatch.setenv(CONVEYOR_DASHBOARD_TOKEN, TOKEN)
    monkeypatch.setenv(CONVEYOR_DASHBOARD_BASIC_AUTH, "ops:pass:with:colons")
    access = Access.build()
    assert access.token == TOKEN and access.basic == ("ops", "pass:with:colons")
    assert Access.build(actions=False).actions is False


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"token": "short"}, "", "at least 16 characters"),
        ({"actions": True}, "", "need a token"),
        ({}, "no-colon", "USER:PASSWORD"),
        ({}, ":nouser", "USER:PASSWORD"),
    ],
)
def test_bad_settings_are_refused(
    kwargs: dict[str, object], env: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env:
        monkeypatch.setenv(CONVEYOR_DASHBOARD_BASIC_AUTH, env)
    with pytest.raises(InvalidOptionError, match=message):
        Access.build(**kwargs)  # type: ignore[arg-type]


def test_redaction_rules_are_checked() -> None:
    with pytest.raises(InvalidOptionError, match=r"write \['password'\]"):
        Redaction({"email.welcome": "password"})
    rules = Redaction({"a": ["Password"], "*": ["token"]})
    assert rules.apply("a", {"PASSWORD": 1, "x": [{"token": 2}]}) == {
        "PASSWORD": "[redacted]",
        "x": [{"token": "[redacted]"}],
    }
    assert rules.apply("b", {"password": 1}) == {"password": 1}


def test_sessions_expire_and_cannot_be_forged() -> None:
    sessions = Sessions(max_age=60)
    cookie = sessions.issue(now=1000.0)
    assert sessions.principal(cookie, now=1030.0) is not None
    assert sessions.principal(cookie, now=1061.0) is None  # expired
    body, _, signature = cookie.rpartition(".")
    session_id = body.partition(".")[0]
    assert sessions.principal(f"{session_id}.9999999999.{signature}", now=1030.0) is None
    assert Sessions().principal(cookie, now=1030.0) is None  # another dashboard's key
    principal = sessions.principal(cookie, now=1030.0)
    assert principal is not None
    assert sessions.csrf_ok(principal, sessions.csrf_for(principal))
    assert not sessions.csrf_ok(principal, sessions.csrf_for("session:other"))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_no_warning_on_loopback(host: str) -> None:
    assert exposure_warning(host, Access(None, None, False)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "dashboard.internal"])
def test_a_warning_beyond_loopback_without_auth(host: str) -> None:
    warning = exposure_warning(host, Access(None, None, False))
    assert warning is not None and host in warning and CONVEYOR_DASHBOARD_TOKEN in warning
    assert exposure_warning(host, Access(None, ("ops", "a-long-password"), False)) is None


def test_a_token_alone_beyond_loopback_still_warns_that_reads_are_open() -> None:
    """The token guards actions only: every page and the JSON API (payloads
    included) stay open to whoever reaches the port, which basic auth guards."""
    warning = exposure_warning("0.0.0.0", Access("a-token-of-sixteen+", None, True))
    assert warning is not None and "payload" in warning
    assert "CONVEYOR_DASHBOARD_BASIC_AUTH" in warning


def test_the_command_binds_to_loopback_by_default() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--help"], prog_name="conveyor")
    assert result.exit_code == 0, result.output
    assert "default: 127.0.0.1" in result.output and "--port" in result.output
    assert CONVEYOR_DASHBOARD_TOKEN in result.output


async def test_on_loopback_only_loopback_names_are_answered(tmp_path: Path) -> None:
    """A page whose own name was made to resolve to 127.0.0.1 (DNS rebinding)
    sends its name as Host: the dashboard on loopback refuses it, so it
    cannot read the jobs through the browser of someone on this machine."""
    import httpx

    from conveyor import Conveyor
    from conveyor.dashboard import create_app
    from conveyor.dashboard.server import standalone

    app = Conveyor(f"sqlite:///{tmp_path / 'jobs.db'}")
    served = standalone(app, create_app(app), host="127.0.0.1")
    transport = httpx.ASGITransport(app=served)
    async with app, httpx.AsyncClient(transport=transport, base_url="http://x") as http:
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
            answered = await http.get("/api/session", headers={"Host": host})
            assert answered.status_code == 200, (host, answered.text)
        rebound = await http.get("/api/overview", headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 400 and "evil.example" in rebound.text
    # Bound beyond loopback (behind basic auth, say), names are not checked.
    anywhere = httpx.ASGITransport(app=standalone(app, create_app(app), host="0.0.0.0"))
    async with app, httpx.AsyncClient(transport=anywhere, base_url="http://x") as http:
        assert (await http.get("/api/session", headers={"Host": "jobs.example"})).status_code == 200
