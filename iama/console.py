"""How every ``iama`` command ends on an error a user can fix: one line, no traceback.

``iama <command>: <what is wrong>`` on stderr; exit status 2 for usage and configuration
errors, 1 for failures at run time (a model that cannot be served, a port that is taken).
"""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(command: str, message: str, code: int = 1) -> NoReturn:
    typer.echo(f"iama {command}: {message}", err=True)
    raise typer.Exit(code)
