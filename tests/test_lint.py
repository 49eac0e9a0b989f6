"""House style as checks: ruff (lint + format), mypy over the packages (STYLE.md §9), the
architecture's import contracts (import-linter, contracts in pyproject.toml) and dead code
(vulture, with a reviewed allow-list: tests/dead_code_allowlist.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint_and_format():
    lint = run(str(BIN / "ruff"), "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run(str(BIN / "ruff"), "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_type_checks_the_packages():
    out = run(str(BIN / "mypy"))  # files and settings: [tool.mypy] in pyproject.toml
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_import_contracts_hold():
    """Layers and cycles (function-local imports counted): docs/layout.md says what each means."""
    out = run(str(BIN / "lint-imports"), "--no-cache")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_no_dead_code_outside_the_reviewed_allow_list():
    """Names only a framework calls (validators, routes, callbacks, wire fields) are listed, each
    group with its reason, in the allow-list; anything else vulture finds unused is dead."""
    packages = ["iama", "server/iama_server", "trainer/iama_trainer", "trainer/iama_eval", "clients/python/iama_client"]
    users = ["benchmarks"]  # a function that only a benchmark calls is used
    out = run(str(BIN / "vulture"), *packages, *users, "tests/dead_code_allowlist.py", "--min-confidence", "60")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
