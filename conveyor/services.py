"""Per-service backends: the locks and the cache of an app on backends of
their own (`Conveyor(url, locks_url=..., cache_url=...)`, or
`$CONVEYOR_LOCKS_URL` / `$CONVEYOR_CACHE_URL`), e.g. jobs on SQS, locks and
the cache on Redis.

A service with no URL of its own uses the jobs backend (a broker with a
store serves locks and the cache from its store). A URL given is checked at
construction: a backend that declares no locks (or no cache) is refused
there, not at the first call, the jobs URL named for a service included
(`CONVEYOR_LOCKS_URL=$CONVEYOR_URL` on SQS without a store). The same URL
for both services, or the jobs URL itself, shares one backend object: one
connection, one open and close.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from conveyor.backends import from_url, scheme_of
from conveyor.backends.base import Backend
from conveyor.job import UnsupportedURLError
from conveyor.settings import CONVEYOR_CACHE_URL, CONVEYOR_LOCKS_URL, env_str

# service -> (its Conveyor argument, its environment variable)
_SOURCES = {"locks": ("locks_url", CONVEYOR_LOCKS_URL), "cache": ("cache_url", CONVEYOR_CACHE_URL)}


@dataclass(slots=True)
class ServiceBackends:
    """The backends of the locks and the cache that are not the jobs
    backend (None: the service uses the jobs backend, whichever it is at the
    time: the CLI's --url may replace it before the app opens)."""

    locks: Backend | None = None
    cache: Backend | None = None

    def own(self) -> list[Backend]:
        """The distinct backends of their own, each once (they may share one)."""
        found = {id(b): b for b in (self.locks, self.cache) if b is not None}
        return list(found.values())

    def locks_or(self, jobs: Backend) -> Backend:
        return self.locks if self.locks is not None else jobs

    def cache_or(self, jobs: Backend) -> Backend:
        return self.cache if self.cache is not None else jobs


def service_backends(
    jobs: Backend,
    jobs_url: str,
    locks_url: str | None,
    cache_url: str | None,
    build: Callable[[str], Backend] = from_url,
) -> ServiceBackends:
    """Build (not open) the service backends the arguments or the environment
    name; an argument wins over its variable. Refuses a URL whose backend
    cannot hold the service, naming where the URL came from; the jobs URL
    named for a service is checked against the jobs backend (`jobs`)."""
    built: dict[str, Backend] = {jobs_url: jobs}

    def backend_for(service: str, given: str | None) -> Backend | None:
        argument, variable = _SOURCES[service]
        url = given if given is not None else env_str(variable)
        where = f"{argument}=" if given is not None else f"${variable}"
        if url is None:
            return None
        if not isinstance(url, str) or not url:
            raise UnsupportedURLError(f"{where}: expected a backend URL, got {url!r}")
        backend = built.get(url)
        if backend is None:
            backend = build(url)
        if not getattr(backend.capabilities, service):
            scheme = scheme_of(url)
            # Unset, the service would use the jobs backend: say so only where it can hold it.
            fallback = (
                f" (or leave {argument} unset to use the jobs backend)"
                if getattr(jobs.capabilities, service)
                else ""
            )
            raise UnsupportedURLError(
                f"{where} names a {scheme}:// backend, which cannot hold {_WHAT[service]}"
                f"{_broker_hint(scheme)}; use memory://, sqlite://, redis:// or postgresql://"
                f"{fallback}"
            )
        built[url] = backend
        # The jobs URL named again is the jobs backend: no backend of its own.
        return None if backend is jobs else backend

    return ServiceBackends(
        locks=backend_for("locks", locks_url), cache=backend_for("cache", cache_url)
    )


async def open_all(backends: Sequence[Backend]) -> None:
    """Open the backends in order; when one fails, close those it opened."""
    opened: list[Backend] = []
    try:
        for backend in backends:
            await backend.open()
            opened.append(backend)
    except BaseException:
        await close_all(opened)
        raise


async def close_all(backends: Sequence[Backend]) -> None:
    """Close each backend even when closing another fails (the first failure
    is raised once all were tried)."""
    failure: Exception | None = None
    for backend in backends:
        try:
            await backend.close()
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


_WHAT = {"locks": "locks", "cache": "a cache"}


def _broker_hint(scheme: str) -> str:
    if scheme.startswith(("sqs", "pubsub")):
        return " (a broker without a store carries messages only; one with ?store=<URL> can)"
    return ""
