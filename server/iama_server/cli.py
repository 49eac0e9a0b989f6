"""``iama serve``: run the FastAPI app under uvicorn with graceful shutdown.

Failures a user can fix end the command with one line on stderr and no traceback: bad
settings (exit 2), a port that is taken or a model that cannot be served (exit 1). A fatal
failure after start-up (``lifecycle.py``) stops uvicorn and exits 1, so supervisors restart us.
"""

from __future__ import annotations

import logging
import os
import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from iama.console import fail

log = logging.getLogger("iama.server")


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


def _exit(message: str, code: int) -> NoReturn:
    fail("serve", message, code)


_QUIET_RESOURCE_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"


def _quiet_resource_tracker() -> None:
    """Keep the error line last: when an engine process dies hard, Python's resource tracker (a
    process of its own, started with this environment) warns about vLLM's semaphores *after* we
    exit, a line the user can do nothing about, printed below the one that says what happened."""
    current = os.environ.get("PYTHONWARNINGS")
    if _QUIET_RESOURCE_TRACKER not in (current or ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, _QUIET_RESOURCE_TRACKER]))


def _listen(host: str, port: int) -> socket.socket:
    """Bind before anything loads, so a taken port fails in milliseconds, not after the engine."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        _exit(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    model: Annotated[str | None, typer.Option(help="'default', a local path or a hub id")] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="the model name clients send and see (default: the model's name)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file with ServerSettings fields", envvar="IAMA_CONFIG_FILE")
    ] = None,
    max_budget: Annotated[int | None, typer.Option(help="largest N a request may ask for")] = None,
    api_key: Annotated[list[str] | None, typer.Option(help="accepted API key (repeatable); or IAMA_API_KEYS")] = None,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False, help="log level")] = LogLevel.info,
) -> None:
    """Serve a model on vLLM with per-request reward weights, budget and algorithm."""
    import uvicorn

    from iama.configfile import ConfigError
    from iama_server.app import create_app
    from iama_server.lifecycle import one_line
    from iama_server.settings import ServerSettings

    try:
        settings = ServerSettings.load(
            config,
            model=model,
            served_model_name=served_model_name,
            host=host,
            port=port,
            max_budget=max_budget,
            api_keys=api_key or None,
        )
    except ConfigError as exc:
        _exit(str(exc), 2)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = _listen(settings.host, settings.port)
    _quiet_resource_tracker()
    try:
        app = create_app(settings)
    except Exception as exc:  # a model or reward that cannot be served: say which, in one line
        log.debug("start-up failed", exc_info=True)
        _exit(one_line(exc), 1)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=log_level.value, timeout_graceful_shutdown=int(settings.graceful_shutdown_s))
    )
    lifecycle = app.state.iama.lifecycle
    lifecycle.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run(sockets=[sock])
    if lifecycle.exit_code:
        _exit(lifecycle.detail or "failed", lifecycle.exit_code)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
