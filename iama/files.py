"""Files other processes read: written atomically, and readable by other users.

A reader (the server, ``--resume``, a resumed eval) never sees half a file. And what the trainer
writes (``iama.json``, ``run.json``, markers, weights) must be readable by another user: the
Docker images run as uid 1000 and mount ``runs/`` written by whoever trained. ``tempfile``
creates files 0600 and directories 0700, so both are given the modes an ordinary ``open`` /
``mkdir`` would (0644 / 0755 under the usual umask 022).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


def atomic_write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write to a temp file in the same directory, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=indent)
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


def make_readable(root: Path) -> None:
    """Give ``root`` and everything below it the modes of ordinarily created files and dirs."""
    os.chmod(root, dir_mode())
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), dir_mode())
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), file_mode())
