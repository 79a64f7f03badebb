"""The cloudtasks:// URL (what it names, clear errors for bad ones) and
the endpoint's checks that need no emulator."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conveyor import Conveyor
from conveyor.backends.cloudtasks import CloudTasksBackend, parse_url
from conveyor.backends.cloudtasks.url import EMULATOR_ENV
from conveyor.gcp import tasks_endpoint
from conveyor.job import BackendMisconfiguredError, InvalidOptionError

TARGET = "https://app.example.com/tasks/"
STORE = "sqlite:///jobs.db?busy_timeout=5"


def test_names_the_queues_target_and_store() -> None:
    config = parse_url(
        f"cloudtasks://my-project/europe-west1/jobs?target={TARGET}&create=true"
        f"&service_account=runner@my-project.iam.gserviceaccount.com&store={STORE}"
    )
    assert config.queue_path("default") == "projects/my-project/locations/europe-west1/queues/jobs"
    assert config.queue_id("emails") == "jobs-emails"
    assert config.conveyor_queue("jobs-emails") == "emails"
    assert config.conveyor_queue(config.queue_path("default")) == "default"
    assert config.conveyor_queue("other") is None
    assert config.target == TARGET and config.store == STORE  # store= takes the rest
    assert config.create and config.emulator is None
    assert config.service_account == "runner@my-project.iam.gserviceaccount.com"


def test_the_emulator_comes_from_the_url_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = f"cloudtasks://my-project/us-central1/jobs?target={TARGET}"
    monkeypatch.setenv(EMULATOR_ENV, "127.0.0.1:8123")
    assert parse_url(f"{base}&store={STORE}").emulator == "127.0.0.1:8123"
    assert parse_url(f"{base}&emulator=localhost:9&store={STORE}").emulator == "localhost:9"
    monkeypatch.setenv(EMULATOR_ENV, "nonsense")
    with pytest.raises(InvalidOptionError, match=EMULATOR_ENV):
        parse_url(f"{base}&store={STORE}")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"cloudtasks://my-project/us-central1/jobs?store={STORE}", "no target="),
        (f"cloudtasks://my-project/us-central1/jobs?target={TARGET}", "no store="),
        (
            f"cloudtasks://my-project/us-central1/jobs?target=http://example.com/t&store={STORE}",
            "https://",
        ),
        (f"cloudtasks://my-project/jobs?target={TARGET}&store={STORE}", "<location>/<queue>"),
        (f"cloudtasks://my-project/us-central1/a_b?target={TARGET}&store={STORE}", "queue id"),
        (f"cloudtasks://P/us-central1/jobs?target={TARGET}&store={STORE}", "project id"),
        (f"cloudtasks://my-project/us-central1/jobs?target={TARGET}&color=red", "unknown option"),
        (
            f"cloudtasks://my-project/us-central1/jobs?target={TARGET}&store=cloudtasks://x",
            "cannot be Cloud Tasks",
        ),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(InvalidOptionError, match=says):
        parse_url(url)


def test_capabilities_are_the_stores_less_what_push_delivery_takes(tmp_path: Path) -> None:
    backend = CloudTasksBackend(
        f"cloudtasks://my-project/us-central1/jobs?target={TARGET}&store=sqlite:///{tmp_path}/j.db"
    )
    caps = backend.capabilities
    assert caps.keys and caps.lookup and caps.cancel and caps.retry and caps.recurring
    assert not caps.priorities and not caps.groups and not caps.ordered
    assert caps.max_delay == 30 * 86_400


async def test_no_credentials_is_said_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    # No gcloud configuration, no metadata server to ask: no credentials.
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    app = Conveyor(
        f"cloudtasks://my-project/us-central1/jobs?target={TARGET}&store=sqlite:///{tmp_path}/j.db"
    )
    with pytest.raises(BackendMisconfiguredError, match="no Google credentials"):
        await app.open()
    await app.close()


def test_the_endpoint_needs_a_cloudtasks_app() -> None:
    with pytest.raises(InvalidOptionError, match="cloudtasks://"):
        tasks_endpoint(Conveyor("memory://"))


async def test_an_endpoint_with_an_audience_wants_a_token(tmp_path: Path) -> None:
    app = Conveyor(
        f"cloudtasks://my-project/us-central1/jobs?target={TARGET}"
        f"&service_account=tasks@my-project.iam.gserviceaccount.com&store=sqlite:///{tmp_path}/j.db"
    )
    endpoint = tasks_endpoint(app, service_account="tasks@my-project.iam.gserviceaccount.com")
    assert endpoint.verifier.audience == TARGET  # the token is checked, for the target
    headers = {"X-CloudTasks-QueueName": "jobs", "X-CloudTasks-TaskName": "t1"}
    transport = httpx.ASGITransport(app=endpoint)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        answer = await http.post("/", content=b"{}", headers=headers)
        assert answer.status_code == 401
        assert "OIDC" in answer.json()["error"]
        wrong_queue = await http.post(
            "/", content=b"{}", headers={**headers, "X-CloudTasks-QueueName": "x"}
        )
        assert wrong_queue.status_code == 403
