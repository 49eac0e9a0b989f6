"""Start-up, readiness and fatal failure of a server process.

``/health`` answers 200 only once the server is READY: the engine is up *and* every served
reward has been loaded and run once, so the first request costs what the second does. A
failure while starting (a reward that cannot load, an engine that cannot start) or later (the
vLLM engine dies) is fatal: ``/health`` turns 503 at once, new requests are refused with 503,
in-flight ones drain, and ``iama serve`` exits non-zero so that a supervisor (Docker,
Kubernetes) restarts it instead of keeping a process that can never answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

log = logging.getLogger("iama.server")


ENGINE_DIED = "the generation engine died; exiting so that the process is restarted"


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: what goes to /health and the log's last line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@dataclass
class Lifecycle:
    phase: Phase = Phase.STARTING
    detail: str | None = None
    exit_code: int = 0
    ready_rewards: set[str] = field(default_factory=set)
    on_fatal: Callable[[], None] | None = None  # `iama serve` stops uvicorn here

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def mark_ready(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def fail(self, detail: str) -> None:
        """Fatal: report it once, refuse new work, and let the process exit non-zero."""
        if self.phase is Phase.FAILED:
            return
        self.phase, self.detail, self.exit_code = Phase.FAILED, detail, 1
        log.error("iama serve: %s", detail)
        if self.on_fatal is not None:
            self.on_fatal()
