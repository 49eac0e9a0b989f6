"""Where the installer takes torch's CPU build from (``scripts/torch_source.py``)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import torch_source  # noqa: E402

pytestmark = pytest.mark.inprocess

TAG = torch_source.python_tag()
WHEEL = f"torch-{torch_source.TORCH_VERSION}+cpu-{TAG}-{TAG}-manylinux_2_28_x86_64.whl"


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/whl/cpu"


def test_a_local_wheel_wins_even_when_the_index_answers(tmp_path):
    (tmp_path / WHEEL).write_bytes(b"")
    (tmp_path / WHEEL.replace(TAG, "cp99")).write_bytes(b"")  # another Python's wheel is ignored
    assert torch_source.choose({"PIP_FIND_LINKS": f"/nowhere {tmp_path}"}, TAG) == ("wheel", str(tmp_path / WHEEL))
    assert torch_source.choose({"IAMA_TORCH_WHEELS": str(tmp_path)}, TAG)[0] == "wheel"


def test_the_cpu_index_is_used_when_there_is_no_wheel(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<a>torch</a>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert torch_source.choose({"IAMA_TORCH_INDEX_URL": url}, TAG) == ("index", url)
    finally:
        server.shutdown()


def test_no_wheel_and_no_index_is_one_clear_line_naming_both(tmp_path):
    url = closed_port_url()
    with pytest.raises(ValueError) as err:
        torch_source.choose({"IAMA_TORCH_WHEELS": str(tmp_path), "IAMA_TORCH_INDEX_URL": url}, TAG)
    msg = str(err.value)
    assert f"torch-{torch_source.TORCH_VERSION}+cpu-{TAG}-*.whl in {tmp_path}" in msg
    assert f"CPU index {url} did not answer" in msg and "IAMA_TORCH_WHEELS" in msg and "\n" not in msg
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "torch_source.py")],
        capture_output=True,
        text=True,
        env={"IAMA_TORCH_WHEELS": str(tmp_path), "IAMA_TORCH_INDEX_URL": url, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 1 and out.stderr.startswith("iama: torch 2.13.0 (CPU build) is needed")
