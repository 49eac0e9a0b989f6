"""Docker images, checked without a Docker engine: lint, structure, and their install/entry steps.

The images run ``scripts/install.sh server`` (the README's installer, without the trainer)
and ``docker/entrypoint.sh``;
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


@pytest.mark.tools
def test_hadolint_passes():
    hadolint = Path(sys.executable).with_name("hadolint")
    out = subprocess.run([str(hadolint), *map(str, DOCKERFILES)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.inprocess
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(path):
    text = path.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    # the README's installer, nothing hand-rolled; the server profile keeps the trainer out
    assert "ARG IAMA_PROFILE=server\n" in text
    assert 'RUN IAMA_EXTRAS="$IAMA_EXTRAS" bash scripts/install.sh "$IAMA_PROFILE"' in text
    assert re.search(r"^USER 1000", text, re.M)  # non-root
    # the health check follows the port the server is told to use
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*curl -fsS .*127\.0\.0\.1:\$\{IAMA_PORT:-8000\}/health", text, re.M)
    assert 'VOLUME ["/cache", "/models"]' in text and "IAMA_CACHE_DIR=/cache" in text
    assert 'ENTRYPOINT ["iama-entrypoint"]' in text and "COPY docker/entrypoint.sh" in text
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied


@pytest.mark.inprocess
def test_the_gpu_runtime_can_compile_triton_kernels():
    runtime = DOCKERFILES[1].read_text().split("\nFROM ")[-1]
    assert re.search(r"apt-get install .*\bgcc\b.*\blibc6-dev\b", runtime)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())


@pytest.mark.inprocess
def test_compose_profiles_never_start_two_servers_on_one_port():
    services = compose()["services"]
    profiles = {p for svc in services.values() for p in svc.get("profiles", [])}
    assert {"cpu", "gpu", "train", "train-gpu"} <= profiles
    for profile in profiles | {None}:  # `--profile X up`, and a plain `up`
        active = [n for n, svc in services.items() if not svc.get("profiles") or profile in svc["profiles"]]
        ports = [p.split(":")[0] for n in active for p in services[n].get("ports", [])]
        assert len(ports) == len(set(ports)), (profile, active)


@pytest.mark.inprocess
def test_compose_services_share_volumes_have_init_builds_and_gpus():
    doc = compose()
    services = doc["services"]
    assert {"server", "server-gpu", "train", "train-gpu"} <= set(services)
    for name, svc in services.items():
        assert svc.get("init") is True, name  # PID 1 forwards SIGTERM: drain / checkpoint, not a kill
        assert "build" in svc and (ROOT / "docker" / ".." / svc["build"]["dockerfile"]).is_file(), name
        assert "iama-models:/models" in svc["volumes"] and "iama-cache:/cache" in svc["volumes"], name
    for name in ("server-gpu", "train-gpu"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "Dockerfile.gpu" in services[name]["build"]["dockerfile"]
    for name in ("train", "train-gpu"):
        assert services[name]["build"]["args"] == {"IAMA_PROFILE": "run"}  # the trainer only where it trains
        assert "--resume" in services[name]["command"]
    assert services["server"]["environment"]["IAMA_PORT"] == "${IAMA_PORT:-8000}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "*.safetensors" in ignored


@pytest.mark.inprocess
def test_the_gpu_extra_pins_the_vllm_range_trl_supports():
    import tomllib

    gpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert gpu == ["vllm>=0.22,<0.32"]  # TRL 1.16: "supports vLLM versions from 0.22.0 to 0.31.0"


@pytest.mark.engine
@pytest.mark.tools
@pytest.mark.timeout(3600)
def test_image_install_and_entry_steps_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    # PIP_COMPILE=0: no bytecode for this throwaway venv (pip's default compiles ~24k files, a
    # fifth of the install's time); the image build keeps pip's default.
    env = {**os.environ, "IAMA_VENV": str(venv), "IAMA_EDITABLE": "0", "IAMA_TARGET": "cpu", "PIP_COMPILE": "0"}
    out = subprocess.run(
        ["bash", "scripts/install.sh", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
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
    # the server image's profile: no trainer stack inside it
    no_trainer = "import importlib.util as u; assert not u.find_spec('trl') and not u.find_spec('peft')"
    assert subprocess.run([str(bin_dir / "python"), "-c", no_trainer], env=run_env).returncode == 0
    # the playground's static files ship inside the installed package
    page = "from iama_server.playground import _asset; assert 'data-testid=\"run\"' in _asset('index.html')"
    assert subprocess.run([str(bin_dir / "python"), "-c", page], env=run_env, cwd=tmp_path).returncode == 0
