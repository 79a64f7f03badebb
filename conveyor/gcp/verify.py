"""Is a request to the Cloud Tasks endpoint a task of this app's queues?

Checked, in order (the first that fails refuses the request):

1. The Cloud Tasks headers: X-CloudTasks-QueueName names one of the URL's
   queues (its id, or its full path as the emulator sends it) and
   X-CloudTasks-TaskName is present. Anyone can send these headers to a
   public URL, so they only keep out requests that were never meant for
   the endpoint; the checks below are what authenticate.
2. The shared secret, when one is set (`secret=`, else
   $CONVEYOR_CLOUDTASKS_SECRET, which producers put on every task as the
   X-Conveyor-Secret header): compared in constant time.
3. The OIDC token, when an audience is set: Cloud Tasks signs it for the
   URL's `service_account=`; its signature (Google's keys), expiry and
   audience are checked, and its email when `service_account` is given.
4. The body's task name equals X-CloudTasks-TaskName (a body cannot be
   replayed under another task's name).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.backends.cloudtasks.backend import SECRET_HEADER
from conveyor.backends.cloudtasks.url import CloudTasksURL

QUEUE_HEADER = "x-cloudtasks-queuename"
TASK_HEADER = "x-cloudtasks-taskname"
RETRY_HEADER = "x-cloudtasks-taskretrycount"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Verifier:
    config: CloudTasksURL
    secret: str | None
    audience: str | None
    service_account: str | None

    @property
    def authenticates(self) -> bool:
        return bool(self.secret or self.audience)

    async def refuse(self, headers: Mapping[str, str]) -> Refusal | None:
        """Why the request is refused; None: it is a task of ours."""
        queue = headers.get(QUEUE_HEADER)
        if not queue or not headers.get(TASK_HEADER):
            return Refusal(400, "not a Cloud Tasks request (no X-CloudTasks-QueueName/TaskName)")
        if self.config.conveyor_queue(queue) is None:
            return Refusal(403, f"queue {queue!r} is not one of {self.config.display}")
        if self.secret is not None:
            given = headers.get(SECRET_HEADER.lower(), "")
            if not hmac.compare_digest(given.encode(), self.secret.encode()):
                return Refusal(401, f"missing or wrong {SECRET_HEADER}")
        if self.audience is not None:
            bearer = headers.get("authorization", "")
            if not bearer.lower().startswith("bearer "):
                return Refusal(401, "no OIDC token (Authorization: Bearer)")
            try:
                claims = await asyncio.to_thread(_verified_claims, bearer[7:], self.audience)
            except ValueError as exc:
                return Refusal(401, f"OIDC token refused: {exc}")
            if self.service_account is not None and (
                claims.get("email") != self.service_account or not claims.get("email_verified")
            ):
                return Refusal(403, f"OIDC token is not {self.service_account}'s")
        return None


def _verified_claims(token: str, audience: str) -> Mapping[str, Any]:
    # google-auth fetches Google's public keys to check the signature.
    from google.auth.transport import requests as google_requests
    from google.oauth2 import id_token

    claims: Mapping[str, Any] = id_token.verify_oauth2_token(  # type: ignore[no-untyped-call]
        token, google_requests.Request(), audience=audience
    )
    return claims
