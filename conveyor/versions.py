"""Versioned job types: `@app.job("greet", version=2, migrations={1: upgrade_v1})`.

A job carries the version of its type it was enqueued with. A worker runs an
older payload through the type's migrations in order (step n turns a
version-n payload into a version-(n+1) one) before validating it; a payload
newer than the worker's type is left for a newer worker (worker/newer.py).

Where the version lives: in an envelope around the stored payload,
`{"__conveyor_version__": 2, "payload": {...}}`, not in a field of the job
record. Every backend and broker already stores, copies, retries, republishes,
dead-letters and redrives the payload byte for byte, so the version goes
wherever the payload goes, on every backend at once and on those to come,
with no schema migration; a record field would have to be carried by each
record format, message format and redrive path, and one that dropped it
would quietly turn a version-3 payload into a "version 1" one, which the
worker would then "migrate" into garbage. Version 1 payloads are stored
bare, exactly as before, so existing jobs, types and workers are untouched.
`Job` opens the envelope when a record is built (job.py): `Job.payload` is
the payload as enqueued, `Job.version` its version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.job import VERSION_KEY, InvalidOptionError, InvalidPayloadError

Migration = Callable[[Any], Any]
"""Turns a stored payload (JSON: a dict, list, ...) of version n into version n+1's."""


@dataclass(frozen=True, slots=True)
class Versioning:
    """A job type's version and the migrations up to it from each older one."""

    version: int = 1
    # Step n upgrades a version-n payload to version n+1.
    migrations: Mapping[int, Migration] = field(default_factory=dict)

    def wrap(self, payload_json: str) -> str:
        """The stored form of a payload (JSON text) of this version: version 1
        as it is, unless it is an object with the envelope's key, which would
        read as an envelope; that one, and every later version, enveloped."""
        if self.version == 1 and not _has_version_key(payload_json):
            return payload_json
        return f'{{"{VERSION_KEY}":{self.version},"payload":{payload_json}}}'

    def upgrade(self, name: str, payload: Any, version: int) -> Any:
        """A version-`version` payload of job `name`, migrated to this version."""
        for step in range(version, self.version):
            migrate = self.migrations.get(step)
            if migrate is None:  # a declared type (no handler) may lack them
                raise InvalidPayloadError(
                    f"job {name!r}: no migration from version {step} to {step + 1} here"
                )
            try:
                payload = migrate(payload)
            except Exception as exc:
                # The same payload fails the same way on every attempt: final.
                raise InvalidPayloadError(
                    f"job {name!r}: migrating its payload from version {step} to "
                    f"{step + 1} failed: {type(exc).__name__}: {exc}"
                ) from exc
        return payload


def versioning(
    name: str,
    version: int,
    migrations: Mapping[int, Migration] | None,
    *,
    handled: bool,
) -> Versioning:
    """Check a type's `version` and `migrations`. A type with a handler
    (`handled`) needs a step from every older version, so that a worker never
    meets a payload it cannot bring up to date; a declaration (a producer's,
    which runs nothing) may leave them out, but what it gives must fit."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidOptionError(
            f"version of job {name!r} must be an integer >= 1, got {version!r}"
        )
    steps = dict(migrations or {})
    for step, migrate in steps.items():
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step < version:
            raise InvalidOptionError(
                f"migrations of job {name!r} (version {version}): key {step!r} is not a "
                f"version from 1 to {version - 1} (key n upgrades a version-n payload to n+1)"
            )
        if not callable(migrate):
            raise InvalidOptionError(
                f"migrations of job {name!r}: the step from version {step} must be a "
                f"function of the payload, got {migrate!r}"
            )
    missing = [n for n in range(1, version) if n not in steps]
    if missing and (handled or steps):
        listed = ", ".join(f"{n} -> {n + 1}" for n in missing)
        raise InvalidOptionError(
            f"job {name!r} is version {version} but has no migration for {listed}: give "
            f"migrations={{n: upgrade}} for every version n from 1 to {version - 1}, each "
            "turning a version-n payload into a version-(n+1) one"
        )
    return Versioning(version, steps)


def _has_version_key(payload_json: str) -> bool:
    """Whether a payload is an object with the envelope's key (the text is
    looked at first: a parse only where the key's name occurs)."""
    if VERSION_KEY not in payload_json:
        return False
    value = json.loads(payload_json)
    return isinstance(value, dict) and VERSION_KEY in value
