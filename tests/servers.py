"""Start the real ``iama serve`` in a subprocess and talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
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
    args: Sequence[str] = (),
) -> ServerProc:
    """Start ``iama serve`` (with more flags: ``args``); ``kv_cache_gb=None`` leaves the KV cache
    to the server's default."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    full_env = {"IAMA_USAGE_DB": f"sqlite:///{log_dir.resolve()}/usage-{port}.sqlite3", **os.environ, **(env or {})}
    full_env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if kv_cache_gb is not None:
        full_env["VLLM_CPU_KVCACHE_SPACE"] = kv_cache_gb
    cmd = [IAMA, "serve", "--model", model, "--port", str(port), "--log-level", "info", *args]
    return spawn_until_healthy(cmd, port, log, full_env, wait_s)


def start_bench_server(model: str, name: str, env: dict[str, str]) -> ServerProc:
    """``iama serve`` for a benchmark: logs under ``runs/<name>``, a 2 GiB KV cache, and up to
    30 minutes to start (the first use of the default model converts it)."""
    log_dir = Path("runs") / name
    log_dir.mkdir(parents=True, exist_ok=True)
    return start_server(model, log_dir, env=env, kv_cache_gb="2", wait_s=1800)


def spawn_until_healthy(cmd: list[str], port: int, log: Path, env: dict[str, str], wait_s: float) -> ServerProc:
    """Run a server command (ours or vLLM's) and wait until its ``/health`` says 200."""
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return ServerProc(proc, url, log)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"server not healthy after {wait_s}s:\n{log.read_text()[-4000:]}")
