"""The ``iama`` command. Sub-commands import their heavy packages lazily so ``iama --help``
stays instant and the core works without the server or trainer extras installed.

Every error a user can fix ends the command with one line on stderr, ``iama <command>: ...``,
and no traceback: exit status 2 for usage and configuration, 1 for failures at run time.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException  # base of typer's (vendored) click errors

from iama import __version__

app = typer.Typer(
    help="IAMA: inference-aware meta-alignment (train, serve, evaluate).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"iama {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """IAMA: inference-aware meta-alignment (train, serve, evaluate)."""


@app.command("prepare-model")
def prepare_model(force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False) -> None:
    """Prepare the embedded default model (SmolLM2-135M-Instruct) and print its directory."""
    from iama.models import prepare_default_model

    typer.echo(prepare_default_model(force=force))


@app.command("rewards")
def rewards() -> None:
    """List the registered reward types."""
    from iama.rewards import available_rewards

    typer.echo(json.dumps(available_rewards(), indent=2))


def _register_optional() -> None:
    """Attach ``serve``/``train``/``eval`` when their packages are installed."""
    for module in ("iama_server.cli", "iama_trainer.cli", "iama_eval.cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name and not module.startswith(exc.name):
                raise
            continue
        mod.register(app)


_register_optional()


def main() -> None:
    """Run the CLI; click's usage errors become one line instead of a boxed usage screen."""
    try:
        code = app(standalone_mode=False)
    except TyperException as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "iama"
        message = exc.format_message().replace("Value error, ", "")
        typer.echo(f"{where}: {message}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
