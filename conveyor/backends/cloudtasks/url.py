"""The Cloud Tasks backend's URL.

    cloudtasks://<project>/<location>/<queue>?target=<endpoint URL>
        &store=<conveyor URL>&create=true&emulator=host:port
        &service_account=<email>&audience=..

* `target` (required): the URL Cloud Tasks pushes every job to, where the
  app mounts `conveyor.gcp.tasks_endpoint(app)`. https://, or http:// (the
  emulator, a loopback host).
* `store` (required, last: it takes the rest of the URL as it is): the
  conveyor URL that keeps the job records (sqlite, redis, postgresql).
* Queues: conveyor's "default" is the URL's queue; conveyor queue `emails`
  is Cloud Tasks queue `<queue>-emails`. `create=true` makes a missing one
  (with unlimited attempts, so conveyor's retries decide when to stop).
* `service_account`: the tasks carry an OIDC token for this service
  account (audience `audience=`, by default the target URL), for the
  endpoint (or Cloud Run's own check) to verify.
* The emulator: `emulator=host:port`, else $CLOUD_TASKS_EMULATOR_HOST (the
  variable the community emulators use; Google's client has none); then
  conveyor speaks plain gRPC to it with no credentials. Otherwise
  credentials come from Application Default Credentials.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from conveyor.backends.pubsub.url import _PROJECT
from conveyor.backends.url_options import flag, host_port, split_url
from conveyor.job import InvalidOptionError

OPTIONS: Final = frozenset({"target", "store", "create", "emulator", "service_account", "audience"})
EMULATOR_ENV: Final = "CLOUD_TASKS_EMULATOR_HOST"
# Google's rules: a location id (`europe-west1`), a queue id of 1 to 100
# letters, digits and hyphens.
_LOCATION: Final = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
_QUEUE: Final = re.compile(r"^[A-Za-z0-9-]{1,100}$")
_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class CloudTasksURL:
    project: str
    location: str
    queue: str  # the Cloud Tasks queue of conveyor's "default" queue
    target: str  # the endpoint every task is pushed to
    store: str  # the conveyor URL of the store
    create: bool
    emulator: str | None  # host:port of an emulator
    service_account: str | None  # whose OIDC token the tasks carry
    audience: str | None
    display: str  # for messages

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def queue_id(self, conveyor_queue: str) -> str:
        if conveyor_queue == "default":
            return self.queue
        name = f"{self.queue}-{conveyor_queue}"
        if not _QUEUE.match(name):
            raise InvalidOptionError(
                f"conveyor queue {conveyor_queue!r} makes Cloud Tasks queue {name!r} on "
                f"{self.display}: Cloud Tasks allows 1 to 100 letters, digits and hyphens"
            )
        return name

    def queue_path(self, conveyor_queue: str) -> str:
        return f"{self.parent}/queues/{self.queue_id(conveyor_queue)}"

    def conveyor_queue(self, queue_name: str) -> str | None:
        """The conveyor queue a Cloud Tasks queue (its id or full path) serves."""
        queue_id = queue_name.rsplit("/", 1)[-1]
        if queue_id == self.queue:
            return "default"
        if queue_id.startswith(self.queue + "-"):
            return queue_id[len(self.queue) + 1 :]
        return None


def _target(url: str, value: str | None) -> str:
    if not value:
        raise InvalidOptionError(
            f"{url!r} has no target=: give the URL where the app mounts "
            "conveyor.gcp.tasks_endpoint(app), e.g. target=https://app.example.com/tasks"
        )
    parts = urlsplit(value)
    plain_ok = parts.scheme == "http" and parts.hostname in _LOOPBACK
    if not parts.hostname or not (parts.scheme == "https" or plain_ok):
        raise InvalidOptionError(
            f"target={value!r} in {url!r}: expected an https:// URL (http:// only to a "
            "loopback host, for the emulator)"
        )
    return value


def parse_url(url: str) -> CloudTasksURL:
    where, options, store = split_url(url, "cloudtasks", OPTIONS, "Cloud Tasks")
    parts = where.split("/")
    if len(parts) != 3 or not all(parts):
        raise InvalidOptionError(
            f"bad Cloud Tasks URL {url!r}: expected cloudtasks://<project>/<location>/<queue>?"
            "target=..&store=.."
        )
    project, location, queue = parts
    if not _PROJECT.match(project):
        raise InvalidOptionError(
            f"bad Google Cloud project id {project!r} in {url!r}: 6 to 30 lowercase letters, "
            "digits and hyphens, starting with a letter and not ending with a hyphen"
        )
    if not _LOCATION.match(location):
        raise InvalidOptionError(f"bad location {location!r} in {url!r} (e.g. europe-west1)")
    if not _QUEUE.match(queue):
        raise InvalidOptionError(
            f"bad Cloud Tasks queue id {queue!r} in {url!r}: 1 to 100 letters, digits and hyphens"
        )
    target = _target(url, options.get("target"))
    if not store:
        raise InvalidOptionError(
            f"{url!r} has no store=: Cloud Tasks keeps no job records, so it needs a conveyor "
            "URL that does (&store=postgresql://..., redis://... or sqlite:///...), last"
        )
    if store.partition("://")[0].lower() == "cloudtasks":
        raise InvalidOptionError(f"store={store!r} in {url!r}: a store cannot be Cloud Tasks")
    emulator = options.get("emulator") or os.environ.get(EMULATOR_ENV) or None
    if emulator is not None:
        emulator = host_port(url, "emulator" if "emulator" in options else EMULATOR_ENV, emulator)
    where_shown = f" (emulator at {emulator})" if emulator else ""
    return CloudTasksURL(
        project=project,
        location=location,
        queue=queue,
        target=target,
        store=store,
        create=flag(url, "create", options.get("create", "false")),
        emulator=emulator,
        service_account=options.get("service_account") or None,
        audience=options.get("audience") or None,
        display=f"cloudtasks://{project}/{location}/{queue}{where_shown}",
    )
