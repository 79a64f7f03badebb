"""What every command shares: one-line errors, the group class that makes them,
the global options, and running an action on an opened app.

Every failure is reported as one red `error: ...` line on stderr with a non-zero
exit status; `--debug` (or CONVEYOR_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.segment import Segment
from rich.text import Text

from conveyor.app import Conveyor
from conveyor.backends import scheme_of
from conveyor.durations import InvalidDurationError, parse_duration
from conveyor.job import ConveyorError, JobState
from conveyor.settings import CONVEYOR_URL

T = TypeVar("T")


# --------------------------------------------------------------------------- errors


class CliError(Exception):
    """An expected failure: shown as one line, or with its traceback under --debug."""


class _ErrorLine(click.ClickException):
    """What click shows for any failure: one red line on stderr."""

    def show(self, file: Any = None) -> None:
        console = Console(file=file, stderr=file is None, soft_wrap=True, highlight=False)
        console.print(Text.assemble(("error: ", "bold red"), (self.message, "red")))


class _UsageLine(_ErrorLine):
    exit_code = 2  # click's status for usage errors, kept for scripts that test it


def _one_line(message: str) -> str:
    # Exception texts (pydantic, sqlite, import errors) may span lines; the
    # contract is one line, so fold them rather than cut them.
    parts = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " ".join(parts) or "unknown error"


def describe(exc: BaseException) -> str:
    """The one-line text shown for an exception."""
    if isinstance(exc, ConveyorError | CliError):
        return _one_line(str(exc)) if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return _one_line(f"{exc.strerror}{where}")
    if isinstance(exc, ImportError):
        return _one_line(str(exc))
    # Anything else is unexpected: name its type, which is usually the best clue.
    return _one_line(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")


def _usage_line(exc: click.UsageError) -> _UsageLine:
    message = exc.format_message()
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]  # match our own lower-case messages
    if exc.ctx is not None:
        message = f"{message.rstrip('.')} (see '{exc.ctx.command_path} --help')"
    return _UsageLine(_one_line(message))


# Options of the root group that may also come after the subcommand
# (`conveyor worker app --url redis://...`), with whether each takes a value.
_GLOBAL_OPTIONS: dict[str, bool] = {"--url": True, "--debug": False}


class ConveyorGroup(click.Group):
    """A click group that turns every failure below it into one error line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:  # the root: global options may come anywhere
            args = self._globals_first(ctx, args)
        return super().parse_args(ctx, args)

    def _globals_first(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Move global options found after the subcommand in front of it,
        unless the subcommand has an option of the same name (demo's --url)."""
        position, command = self._subcommand(ctx, args)
        if command is None:
            return args
        own = _option_names(command, args[position + 1 :])
        before, after, moved = args[: position + 1], [], []
        rest = iter(args[position + 1 :])
        for token in rest:
            if token == "--":
                after += [token, *rest]
                break
            name = token.split("=", 1)[0]
            if name in _GLOBAL_OPTIONS and name not in own:
                moved.append(token)
                if _GLOBAL_OPTIONS[name] and "=" not in token:
                    moved.append(next(rest, ""))
                continue
            after.append(token)
        return moved + before + after

    def _subcommand(self, ctx: click.Context, args: list[str]) -> tuple[int, click.Command | None]:
        skip = False
        for position, token in enumerate(args):
            if skip:
                skip = False
                continue
            if token.startswith("-"):
                skip = _GLOBAL_OPTIONS.get(token, False)
                continue
            return position, self.get_command(ctx, token)
        return len(args), None

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # not an error: shows the help
        except click.UsageError as exc:
            raise _usage_line(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, _ErrorLine, click.exceptions.NoArgsIsHelpError):
            raise
        except click.UsageError as exc:
            raise _usage_line(exc) from exc
        except click.ClickException as exc:
            raise _ErrorLine(_one_line(exc.format_message())) from exc
        except BrokenPipeError:
            raise  # output piped into `head` and the like: click exits quietly
        except Exception as exc:
            if _debug_enabled(ctx):
                raise
            raise _ErrorLine(describe(exc)) from exc


def _option_names(command: click.Command, args: list[str]) -> set[str]:
    """The option names `command` (or the subcommand of a group named next in
    `args`) declares."""
    names = {opt for param in command.params for opt in getattr(param, "opts", ())}
    if isinstance(command, click.Group):
        for token in args:
            if not token.startswith("-"):
                sub = command.commands.get(token)
                if sub is not None:
                    names |= _option_names(sub, [])
                break
    return names


def _debug_enabled(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug"))


# --------------------------------------------------------------------------- options and output


@dataclass(frozen=True, slots=True)
class Options:
    """The global options, given before the command name."""

    url: str | None
    debug: bool


def options(ctx: click.Context) -> Options:
    found = ctx.find_root().obj
    assert isinstance(found, Options)
    return found


# Control characters but newline and tab: in a job's name, error or log line
# they would reach the operator's terminal as commands (ESC sequences set its
# title, clear the screen, ...). Shown escaped instead.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """`text` with its control characters shown as escapes (\\x1b)."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


class _Console(Console):
    """Rich's console, writing the application's text with `visible`:
    every value shown passes here, whatever view made it (rich's own
    styles are control segments, left alone)."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        shown = (
            segment if segment.control else Segment(visible(segment.text), segment.style)
            for segment in buffer
        )
        return super()._render_buffer(shown)


def out() -> Console:
    # Made per call so output follows sys.stdout when it is swapped (CliRunner).
    # No markup: what is printed holds the application's text (job names,
    # queues, errors), whose square brackets must show as written, never
    # style or break the output; conveyor's own styles go as Text.
    console = _Console(highlight=False, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped or captured: rich would assume 80 columns and cut ids and
        # names; a pipe has no width, so give rows the room they need.
        console.width = 160
    return console


def print_json(value: Any) -> None:
    # Plain click.echo, not rich: --json output is for machines and must not wrap.
    click.echo(json.dumps(value, indent=2, default=str))


def confirm(question: str, otherwise: str) -> None:
    try:
        confirmed = click.confirm(question, default=False)
    except click.Abort:  # end of input, e.g. no terminal to ask on
        confirmed = False
    if not confirmed:
        raise CliError(f"not confirmed; {otherwise} (pass --yes to skip the question)")


def parse_state(value: str) -> JobState:
    try:
        return JobState(value.strip().lower())
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise CliError(f"unknown job state {value!r}; known: {known}") from None


def duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    # A callback rather than a ParamType subclass: ParamType is generic only
    # from click 8.2 on, and we support 8.1.
    if value is None:
        return None
    try:
        return parse_duration(value, what="the duration", allow_zero=True)
    except InvalidDurationError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


# --------------------------------------------------------------------------- running on the app


def admin_app(ctx: click.Context) -> Conveyor:
    """An app with no job types: enough for every inspect/admin call."""
    app = Conveyor(options(ctx).url)
    _require_existing_sqlite(app)
    return app


def _require_existing_sqlite(app: Conveyor) -> None:
    # Opening a SQLite URL creates the file. For inspection commands a typo in
    # the URL would then show an empty, brand-new queue: say so instead.
    if scheme_of(app.url) != "sqlite":
        return
    path = getattr(app.backend, "path", None)
    if isinstance(path, str) and not os.path.exists(path):
        raise CliError(
            f"no SQLite database at {path} (check --url or {CONVEYOR_URL}; "
            "the file appears once a job is enqueued or a worker starts)"
        )


def run(ctx: click.Context, action: Callable[[Conveyor], Awaitable[T]]) -> T:
    """Run `action(app)` on a fresh event loop with the app opened and closed."""
    return run_on(admin_app(ctx), action)


def run_on(app: Conveyor, action: Callable[[Conveyor], Awaitable[T]]) -> T:
    async def go() -> T:
        async with app:
            return await action(app)

    return asyncio.run(go())
