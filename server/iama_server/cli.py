"""``iama serve``: run the FastAPI app under uvicorn with graceful shutdown."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def serve(
    model: Annotated[str | None, typer.Option(help="'default', a local path or a hub id")] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file with ServerSettings fields", exists=True, envvar="IAMA_CONFIG_FILE")
    ] = None,
    max_budget: Annotated[int | None, typer.Option(help="largest N a request may ask for")] = None,
    api_key: Annotated[list[str] | None, typer.Option(help="accepted API key (repeatable); or IAMA_API_KEYS")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve a model on vLLM with per-request reward weights, budget and algorithm."""
    import uvicorn

    from iama_server.app import create_app
    from iama_server.settings import ServerSettings

    try:
        settings = ServerSettings.load(
            config, model=model, host=host, port=port, max_budget=max_budget, api_keys=api_key or None
        )
    except Exception as exc:
        raise typer.BadParameter(str(exc)) from exc
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
