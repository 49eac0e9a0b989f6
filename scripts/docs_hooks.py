"""MkDocs hook: render ``benchmarks/README.md`` as the site's benchmarks page, with its figures.

The benchmark write-up stays beside its raw files and scripts in ``benchmarks/`` (every figure
next to the json/csv it was drawn from); the site shows it at ``benchmarks/`` with the figures
copied along, so its relative image links work and ``mkdocs build --strict`` checks them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
FIGURES = {".png", ".svg"}


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "benchmarks/index.md", abs_src_path=str(BENCHMARKS / "README.md")))
    for path in sorted((BENCHMARKS / "results").rglob("*")):
        if path.suffix in FIGURES:
            uri = f"benchmarks/{path.relative_to(BENCHMARKS).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
