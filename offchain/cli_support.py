"""What the `chainbill` command groups share: the database option, and the mirror opened
for one command with a user's mistake turned into a message and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from sqlalchemy import Connection

from offchain.db.engine import make_engine, upgrade_schema

DatabaseOption = Annotated[
    str, typer.Option(envvar="DATABASE_URL", help="sqlite:///path or postgresql://...")
]

# The exit code of a command refused for its input (a bad id, address or URL).
USAGE_ERROR = 2


def fail(exc: Exception) -> typer.Exit:
    """The exit of a command refused for `exc`, its message printed to stderr."""
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(USAGE_ERROR)


@contextmanager
def open_mirror(
    database_url: str, *, write: bool, refusals: tuple[type[Exception], ...]
) -> Iterator[Connection]:
    """A connection to the mirror, its schema brought up to date; with `write`, in one
    transaction committed when the block ends. A `refusals` error raised inside rolls the
    transaction back and ends the command with its message and exit code 2."""
    engine = make_engine(database_url)
    try:
        upgrade_schema(engine)
        with engine.begin() if write else engine.connect() as conn:
            yield conn
    except refusals as exc:
        raise fail(exc) from exc
    finally:
        engine.dispose()
