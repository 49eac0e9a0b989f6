"""``iama serve`` failing as a supervisor expects: one line on stderr, no traceback, non-zero.
(A killed engine core on a real server is checked in test_tensor_parallel.py, on its TP=2 server.)"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
from servers import IAMA, free_port


def serve(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IAMA, "serve", *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def last_line(out: subprocess.CompletedProcess[str]) -> str:
    return out.stderr.strip().splitlines()[-1]


@pytest.mark.inprocess
def test_a_taken_port_fails_at_once():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = serve("--model", "default", "--port", str(port))
    assert out.returncode == 1
    assert last_line(out) == f"iama serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in out.stderr


@pytest.mark.inprocess
def test_bad_settings_name_the_variable_or_file(tmp_path):
    out = serve(env={"IAMA_MAX_BUDGET": "0"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert last_line(out) == "iama serve: environment: IAMA_MAX_BUDGET: Input should be greater than or equal to 1"
    cfg = tmp_path / "server.yaml"
    cfg.write_text("max_budget: [1\n")
    out = serve("--config", str(cfg))
    assert out.returncode == 2 and last_line(out).startswith(f"iama serve: {cfg}: not valid YAML at line 2")


@pytest.mark.engine
def test_a_model_that_cannot_be_served_exits_non_zero_with_one_line(tmp_path):
    out = serve("--model", str(tmp_path / "no-such-model"), "--port", str(free_port()))
    assert out.returncode == 1, out.stderr[-2000:]
    assert last_line(out).startswith("iama serve: ") and "no-such-model" in last_line(out)
