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
    model: Annotated[
        str | None,
        typer.Option(
            help="'default', a local path or a hub id; or an adapter's directory (a lora.merge: false run's "
            "model/): its base is served, with the adapter, named after the run, as the default model"
        ),
    ] = None,
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
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME=PATH",
            help="serve the IAMA adapter (a LoRA run with lora.merge: false) at PATH on the base as model NAME, "
            "with the rewards of its iama.json (repeatable; replaces the config's `adapters`)",
        ),
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False, help="log level")] = LogLevel.info,
    ray: Annotated[
        bool, typer.Option("--ray", help="serve on Ray Serve: replicas of the app behind its router")
    ] = False,
    replicas: Annotated[int, typer.Option(min=1, help="with --ray: replicas (each an engine)")] = 1,
    max_replicas: Annotated[
        int | None, typer.Option(min=1, help="with --ray: autoscale between --replicas and this")
    ] = None,
    target_ongoing_requests: Annotated[
        float, typer.Option(min=0.1, help="with --max-replicas: ongoing requests per replica to aim at")
    ] = 8.0,
    gpus_per_replica: Annotated[
        float, typer.Option(min=0, help="with --ray: GPUs per replica (tensor_parallel_size of them)")
    ] = 0.0,
) -> None:
    """Serve a model on vLLM with per-request reward weights, budget and algorithm."""
    import uvicorn

    from iama.configfile import ConfigError
    from iama_server.app import create_app
    from iama_server.lifecycle import one_line
    from iama_server.settings import ServerSettings

    adapters = _adapter_flags(adapter or [])
    try:
        settings = ServerSettings.load(
            config,
            model=model,
            served_model_name=served_model_name,
            host=host,
            port=port,
            max_budget=max_budget,
            api_keys=api_key or None,
            adapters=adapters,
        )
    except ConfigError as exc:
        _exit(str(exc), 2)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ray:
        overrides = {"model": model, "served_model_name": served_model_name, "max_budget": max_budget}
        flags: dict[str, object] = {k: v for k, v in overrides.items() if v is not None}
        flags |= ({"api_keys": api_key} if api_key else {}) | ({"adapters": adapters} if adapters else {})
        file_values = {} if config is None else _read_config(config)
        _serve_on_ray(
            settings, {**file_values, **flags}, replicas, max_replicas, target_ongoing_requests, gpus_per_replica
        )
        return
    if replicas != 1 or max_replicas is not None or gpus_per_replica:
        _exit("--replicas, --max-replicas and --gpus-per-replica need --ray", 2)
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


def _adapter_flags(values: list[str]) -> dict[str, str] | None:
    """``--adapter NAME=PATH`` flags as the ``adapters`` setting (None: no flag given)."""
    adapters: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            _exit(f"--adapter: expected NAME=PATH, got {value!r}", 2)
        if name in adapters:
            _exit(f"--adapter: {name!r} is given twice", 2)
        adapters[name] = path
    return adapters or None


def _read_config(path: Path) -> dict:
    from iama.configfile import read_yaml

    return dict(read_yaml(path))


def _serve_on_ray(
    settings: object,
    replica_settings: dict,
    replicas: int,
    max_replicas: int | None,
    target: float,
    gpus: float,
) -> None:
    """Start (or join, with RAY_ADDRESS) a Ray cluster and run the Serve app until interrupted.
    Replicas read the same IAMA_* environment; ``replica_settings`` adds the file and flags."""
    import time

    import ray as ray_
    from ray import serve as ray_serve

    from iama_server.ray_app import build_app

    host, port = settings.host, settings.port  # type: ignore[attr-defined]
    args: dict = {"settings": replica_settings}
    if max_replicas is not None:
        if max_replicas < replicas:
            _exit("--max-replicas must be >= --replicas", 2)
        args["autoscaling_config"] = {
            "min_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": target,
        }
    else:
        args["num_replicas"] = replicas
    if gpus:
        args["num_gpus"] = gpus
    ray_.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    ray_serve.start(http_options={"host": host, "port": port})
    ray_serve.run(build_app(args), name="iama", route_prefix="/", blocking=False)
    log.info("iama on Ray Serve at http://%s:%d (%s)", host, port, args)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.shutdown()
        ray_.shutdown()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
