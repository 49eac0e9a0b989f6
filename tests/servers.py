"""Start the real ``iama serve`` in a subprocess and talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

IAMA = str(Path(sys.executable).with_name("iama"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    model: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    wait_s: float = 300,
    kv_cache_gb: str | None = "1",
) -> ServerProc:
    """Start ``iama serve``; ``kv_cache_gb=None`` leaves the KV cache to the server's default."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    full_env = {**os.environ, **(env or {})}
    full_env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if kv_cache_gb is not None:
        full_env["VLLM_CPU_KVCACHE_SPACE"] = kv_cache_gb
    proc = subprocess.Popen(
        [IAMA, "serve", "--model", model, "--port", str(port), "--log-level", "info"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=full_env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return ServerProc(proc, url, log)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"server not healthy after {wait_s}s:\n{log.read_text()[-4000:]}")
