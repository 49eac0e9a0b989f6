"""Docker images, checked without a Docker engine: lint, structure, and their install/entry steps.

The images run ``scripts/install.sh`` (the README's installer) and ``docker/entrypoint.sh``;
here those same steps run in a fresh virtual environment, so the images cannot drift from the
README without this failing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cpu", ROOT / "docker" / "Dockerfile.gpu"]


def test_hadolint_passes():
    hadolint = Path(sys.executable).with_name("hadolint")
    out = subprocess.run([str(hadolint), *map(str, DOCKERFILES)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(path):
    text = path.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    assert "RUN bash scripts/install.sh run" in text  # the README's installer, nothing hand-rolled
    assert re.search(r"^USER 1000", text, re.M)  # non-root
    assert re.search(r'^HEALTHCHECK .*\n\s+CMD \["curl", "-fsS", "http://127.0.0.1:8000/health"\]', text, re.M)
    assert 'VOLUME ["/cache", "/models"]' in text and "IAMA_CACHE_DIR=/cache" in text
    assert 'ENTRYPOINT ["iama-entrypoint"]' in text and "COPY docker/entrypoint.sh" in text
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied


def test_compose_shares_the_model_volume():
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"server", "server-gpu", "train"} <= set(services)
    assert services["train"]["profiles"] == ["train"]
    for name in ("server", "train"):
        vols = services[name].get("volumes") or compose["x-common"]["volumes"]
        assert "iama-models:/models" in vols and "iama-cache:/cache" in vols
    assert "--resume" in services["train"]["command"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "*.safetensors" in ignored


@pytest.mark.slow
def test_image_install_and_entry_steps_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "IAMA_VENV": str(venv), "IAMA_EDITABLE": "0", "IAMA_TARGET": "cpu"}
    out = subprocess.run(
        ["bash", "scripts/install.sh", "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    assert out.returncode == 0, out.stderr[-3000:]
    bin_dir = venv / "bin"
    run_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    # non-editable: the package is imported from the venv, not from this checkout
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import iama_server; print(iama_server.__file__)"],
        capture_output=True,
        text=True,
        env=run_env,
        cwd=tmp_path,
    )
    assert str(venv) in where.stdout, where.stdout + where.stderr
    entry = ROOT / "docker" / "entrypoint.sh"
    helped = subprocess.run([str(entry), "iama", "serve", "--help"], capture_output=True, text=True, env=run_env)
    assert helped.returncode == 0 and "--max-budget" in helped.stdout
    # `iama serve` through the entry point prepares the default model into IAMA_CACHE_DIR first;
    # the cache the test session already filled makes that instant, so a real serve is not needed.
    prepared = subprocess.run([str(bin_dir / "iama"), "prepare-model"], capture_output=True, text=True, env=run_env)
    assert prepared.returncode == 0 and Path(prepared.stdout.strip()).is_dir(), prepared.stderr[-2000:]
    check = "import transformers, vllm; import torch; assert torch.__version__.startswith('2.13.0')"
    assert subprocess.run([str(bin_dir / "python"), "-c", check], env=run_env).returncode == 0
