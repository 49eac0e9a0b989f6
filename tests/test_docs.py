"""The docs: README is the front door (short, links that resolve), the reference in ``docs/``
builds with ``mkdocs build --strict`` (a broken link or anchor fails), and its examples are code
that at least parses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's (and MkDocs' default) anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in md.read_text().splitlines() if line.startswith("#")}


def test_readme_is_a_front_door_whose_links_resolve():
    readme = ROOT / "README.md"
    text = readme.read_text()
    assert len(text.splitlines()) < 300
    assert text.count("    bash scripts/") == 2  # exactly the two set-up commands
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path
        assert file.exists(), target
        if anchor:
            assert anchor in anchors(file), target


def test_readme_python_examples_parse():
    for code in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        compile(code, "README.md", "exec")


def test_mkdocs_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    mkdocs = Path(sys.executable).with_name("mkdocs")
    out = subprocess.run(
        [str(mkdocs), "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "benchmarks" / "index.html").exists()  # benchmarks/README.md, with its figures
    assert (site / "benchmarks" / "results" / "number" / "kl_path.png").exists()
    reference = (site / "reference" / "index.html").read_text()
    assert "bon_first_variation" in reference and "reversed cumulative sum" in reference  # from the docstrings
