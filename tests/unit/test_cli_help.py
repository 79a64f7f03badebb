"""Every option of every command says what it does in --help."""

from __future__ import annotations

from collections.abc import Iterator

import click

from conveyor.cli import cli


def _commands(group: click.Group, path: str = "conveyor") -> Iterator[tuple[str, click.Command]]:
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def test_every_option_has_help() -> None:
    missing = [
        f"{path} {option.opts[-1]}"
        for path, command in _commands(cli)
        for option in command.params
        if isinstance(option, click.Option) and not option.help
    ]
    assert missing == []
