"""The ``iama`` command. Sub-commands import their heavy packages lazily so ``iama --help``
stays instant and the core works without the server or trainer extras installed."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(help="IAMA: inference-aware meta-alignment (train, serve, evaluate).", no_args_is_help=True)


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
    app()


if __name__ == "__main__":
    main()
