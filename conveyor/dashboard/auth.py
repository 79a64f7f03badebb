"""Who may act on a dashboard, framework-free.

Reading is open (the dashboard binds to 127.0.0.1 by default), unless basic
auth is configured, which then guards every page and route. Actions (retry,
cancel, purge, pause...) are off unless a token is configured, and each
needs one of:

* `Authorization: Bearer <token>`: for scripts and the JSON API; a header
  the browser never adds by itself, so it needs no CSRF token;
* a session cookie from the login form (POST /api/login with the token),
  HttpOnly and SameSite=Strict, plus an `X-CSRF-Token` header;
* basic-auth credentials, plus an `X-CSRF-Token` header.

A browser sends cookies and basic credentials on its own, to any request a
hostile page makes it send: hence the CSRF token, which is bound to the
session (an HMAC of its id under this dashboard's key) and which only a page
that can read the dashboard's own responses learns (GET /api/session).

No credentials at all: 401. Wrong ones, or a missing or wrong CSRF token: 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from conveyor.job import InvalidOptionError
from conveyor.settings import CONVEYOR_DASHBOARD_BASIC_AUTH, CONVEYOR_DASHBOARD_TOKEN, env_str

SESSION_COOKIE = "conveyor_dashboard_session"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 8 * 3600
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: its HTTP status and a one-line reason."""

    status: int
    message: str
    challenge: str | None = None  # the WWW-Authenticate header of a 401


@dataclass(frozen=True, slots=True)
class Access:
    """The dashboard's credentials and whether actions are on."""

    token: str | None
    basic: tuple[str, str] | None
    actions: bool

    @classmethod
    def build(
        cls,
        token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        actions: bool | None = None,
    ) -> Access:
        """Credentials given, else from the environment. `actions`: None
        turns them on exactly when a token is set; True without one is an
        error. Basic credentials then act as well as the token does."""
        token = token if token is not None else env_str(CONVEYOR_DASHBOARD_TOKEN)
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise InvalidOptionError(
                f"the dashboard token must be at least {MIN_TOKEN_LENGTH} characters "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
            )
        if basic_auth is None:
            raw = env_str(CONVEYOR_DASHBOARD_BASIC_AUTH) or ""
            if raw:
                user, colon, password = raw.partition(":")
                if not (user and colon and password):
                    raise InvalidOptionError(
                        f"{CONVEYOR_DASHBOARD_BASIC_AUTH} must be USER:PASSWORD"
                    )
                basic_auth = (user, password)
        if actions and token is None:
            raise InvalidOptionError(
                f"dashboard actions need a token ({CONVEYOR_DASHBOARD_TOKEN} or token=)"
            )
        return cls(token, basic_auth, token is not None if actions is None else actions)


class Sessions:
    """Signed session cookies and the CSRF token bound to each; the key is
    this dashboard's own, so sessions end when it restarts."""

    def __init__(self, key: bytes | None = None, max_age: float = SESSION_SECONDS) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        self.max_age = max_age

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> str:
        """A new session's cookie value: id, expiry and their signature."""
        expires = int((time.time() if now is None else now) + self.max_age)
        body = f"{secrets.token_urlsafe(18)}.{expires}"
        return f"{body}.{self._sign(body)}"

    def principal(self, cookie: str | None, now: float | None = None) -> str | None:
        """The session a cookie proves (None: missing, forged or expired)."""
        if not cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        session_id, _, expires = body.partition(".")
        if not (session_id and expires.isdigit()):
            return None
        if not _same(signature, self._sign(body)):  # bytes: any text compares
            return None
        if int(expires) < (time.time() if now is None else now):
            return None
        return f"session:{session_id}"

    def csrf_for(self, principal: str) -> str:
        return self._sign(f"csrf:{principal}")

    def csrf_ok(self, principal: str, given: str | None) -> bool:
        return given is not None and _same(given, self.csrf_for(principal))


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one request carries: its Authorization header, session cookie
    and CSRF header."""

    authorization: str | None
    cookie: str | None
    csrf: str | None


def _same(given: str, expected: str) -> bool:
    """Constant-time; on bytes, as compare_digest refuses non-ASCII text
    (a header or cookie may hold anything)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def basic_user(access: Access, authorization: str | None) -> str | Refusal | None:
    """The basic-auth user the header proves; None without basic
    credentials; a Refusal for wrong ones."""
    scheme, _, value = (authorization or "").partition(" ")
    if access.basic is None or scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):  # binascii.Error; non-ASCII in the header
        return Refusal(403, "malformed basic credentials")
    if _same(user, access.basic[0]) & _same(password, access.basic[1]):
        return user
    return Refusal(403, "wrong user name or password")


class Gate:
    """Decides, request by request, who may read and who may act."""

    def __init__(self, access: Access, sessions: Sessions | None = None) -> None:
        self.access = access
        self.sessions = sessions if sessions is not None else Sessions()

    def principal(self, creds: Credentials) -> str | Refusal | None:
        """Who the request proves to be, by cookie or basic auth (a bearer
        token is checked by `may_act` alone)."""
        user = basic_user(self.access, creds.authorization)
        if user is not None:
            return user if isinstance(user, Refusal) else f"basic:{user}"
        return self.sessions.principal(creds.cookie)

    def may_read(self, creds: Credentials) -> Refusal | None:
        """None when the request may read: always, unless basic auth guards
        the dashboard, which then takes basic credentials, a session or the token."""
        if self.access.basic is None:
            return None
        if self._bearer(creds) is True:
            return None
        who = self.principal(creds)
        if isinstance(who, Refusal):
            return who
        if who is None:
            return Refusal(401, "log in to see this dashboard", 'Basic realm="conveyor"')
        return None

    def may_act(self, creds: Credentials) -> Refusal | None:
        """None when the request may act (retry, cancel, purge, pause...)."""
        if not self.access.actions:
            return Refusal(
                403,
                "actions are off: this dashboard is read-only "
                f"(set {CONVEYOR_DASHBOARD_TOKEN} to turn them on)",
            )
        bearer = self._bearer(creds)
        if bearer is True:
            return None
        if isinstance(bearer, Refusal):
            return bearer
        who = self.principal(creds)
        if isinstance(who, Refusal):
            return who
        if who is None:
            return Refusal(
                401,
                "authentication needed: send Authorization: Bearer <token>, or log in",
                'Bearer realm="conveyor"',
            )
        if not self.sessions.csrf_ok(who, creds.csrf):
            return Refusal(403, "missing or wrong CSRF token (X-CSRF-Token header)")
        return None

    def _bearer(self, creds: Credentials) -> bool | Refusal | None:
        """True for the right bearer token, a Refusal for a wrong one, None
        when the request carries none."""
        scheme, _, value = (creds.authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        if self.access.token is not None and _same(value.strip(), self.access.token):
            return True
        return Refusal(403, "wrong token")

    def login(self, token: str | None) -> str | Refusal:
        """A session cookie for the right token."""
        if self.access.token is None:
            return Refusal(403, f"no token is configured ({CONVEYOR_DASHBOARD_TOKEN})")
        if not token:
            return Refusal(401, "give the dashboard token")
        if not _same(token, self.access.token):
            return Refusal(403, "wrong token")
        return self.sessions.issue()
