"""BullMQ's own Lua scripts, loaded from the installed `bullmq` package.

conveyor does not carry a copy of BullMQ's scripts: the official Python port
(PyPI `bullmq`, the `bullmq` extra) ships the very files Node BullMQ runs, and
they are read from its folder when a backend is made. Which files they are depends on the
installed version, so it is checked: PyPI bullmq 3.4.4 ships the scripts of
npm bullmq 6.4.0 byte for byte (blank lines aside), and that pair is what
conveyor's interop tests run against. Another version is refused with a
clear error rather than run with scripts whose arguments may have moved.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final

from conveyor.job import BackendUnavailableError

PYPI_VERSION: Final = "3.4.4"
NODE_VERSION: Final = "6.4.0"
# What a queue's meta hash says when Node BullMQ (or conveyor) made it:
# `meta.version` is "<library>:<version>"; the layout holds within a major.
LIBRARY: Final = "bullmq"
MAJOR: Final = NODE_VERSION.split(".")[0]

# The scripts used, by the name their file has without the key count.
NAMES: Final = (
    "addStandardJob",
    "addDelayedJob",
    "addPrioritizedJob",
    "moveToActive",  # what batch_scripts.CLAIM is tested against
    "moveToFinished",
    "moveToDelayed",
    "retryJob",
    "removeJob",
    "moveStalledJobsToWait",
    "extendLock",
    "updateProgress",
    "addLog",
    "reprocessJob",
    "getState",
    # Job schedulers (schedules.py): Node's worker's next iteration, its removal.
    "updateJobScheduler",
    "removeJobScheduler",
    # Pausing a queue as Node's queue.pause()/resume() do (admin.py).
    "pause",
)


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    keys: int  # how many KEYS it takes (the number in its file name)
    source: str
    sha: str


def _installed_version() -> str:
    try:
        return metadata.version("bullmq")
    except metadata.PackageNotFoundError:
        raise BackendUnavailableError(
            "the bullmq:// backend runs BullMQ's own Lua scripts from the Python package "
            "'bullmq', which is not installed (install it with: pip install 'conveyor[bullmq]')"
        ) from None


def load_scripts() -> dict[str, Script]:
    version = _installed_version()
    if version != PYPI_VERSION:
        raise BackendUnavailableError(
            f"the bullmq:// backend needs the Python package bullmq=={PYPI_VERSION} (the scripts "
            f"of Node BullMQ {NODE_VERSION}); bullmq {version} is installed "
            f"(pip install 'conveyor[bullmq]')"
        )
    # Found, not imported: importing the package would load redis-py and the
    # rest of the port (a tenth of a second at every start) for files only.
    spec = importlib.util.find_spec("bullmq")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("the installed bullmq package has no folder of scripts")
    folder = Path(spec.submodule_search_locations[0]) / "commands"
    by_name = {}
    for entry in folder.iterdir():
        stem, dash, count = entry.name.removesuffix(".lua").rpartition("-")
        if dash and stem in NAMES and entry.name.endswith(".lua"):
            source = entry.read_text()
            sha = hashlib.sha1(source.encode()).hexdigest()
            by_name[stem] = Script(stem, int(count), source, sha)
    missing = sorted(set(NAMES) - set(by_name))
    if missing:
        raise BackendUnavailableError(
            f"the installed bullmq package lacks the scripts {', '.join(missing)}"
        )
    return by_name


def version_problem(meta_version: str | None) -> str | None:
    """Why a queue whose meta hash says `meta_version` cannot be served, or None."""
    if meta_version is None:
        return None
    library, _, version = meta_version.partition(":")
    if library == LIBRARY and version.split(".")[0] == MAJOR:
        return None
    return (
        f"the queue was made by {meta_version!r}; conveyor runs the scripts of "
        f"{LIBRARY} {NODE_VERSION} and serves queues of {LIBRARY} {MAJOR}.x only"
    )
