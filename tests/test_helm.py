"""The Helm chart (deploy/helm/iama): ``helm lint --strict`` and ``helm template`` over the
defaults and every example values file, the output validated against Kubernetes' own schemas
(kubernetes-validate, strict: unknown fields are errors) and checked for what a cluster needs
and a schema cannot say: probes on /health with a start-up allowance, selectors that match
the pods, keys only from Secrets, GPUs and tensor parallel that agree, settings that exist."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "iama"
VALUES = [None, *sorted((CHART / "examples").glob("*.yaml"))]
K8S = "1.33.0"
CRDS = {"ServiceMonitor", "ScaledObject", "RayService"}  # no offline schema: checked by hand below


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> str:
    """Helm v4: on PATH, in the venv, or fetched as scripts/install.sh does (scripts/get_helm.py)."""
    for cand in (shutil.which("helm"), str(Path(sys.executable).parent / "helm")):
        if cand and Path(cand).exists():
            return cand
    dest = tmp_path_factory.mktemp("helm") / "helm"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "get_helm.py"), str(dest)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"helm is not installed and could not be fetched: {done.stderr.decode().strip()}")
    return str(dest)


def render(helm: str, values: Path | None, *sets: str) -> list[dict]:
    args = [helm, "template", "r", str(CHART)]
    if values is not None:
        args += ["-f", str(values)]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("values", VALUES, ids=lambda v: "defaults" if v is None else v.stem)
def test_the_chart_lints_renders_and_validates(helm, values):
    import kubernetes_validate

    lint = [helm, "lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    done = subprocess.run(lint, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    docs = render(helm, values)
    # the chart's test pod too: helm template renders hooks
    kinds = by_kind(docs)
    assert "Service" in kinds and "Pod" in kinds
    for d in docs:
        if d["kind"] in CRDS:
            continue
        kubernetes_validate.validate(d, K8S, strict=True)  # raises, naming the path, on any error
    check_workload(kinds, values)


def pod_specs(kinds: dict[str, list[dict]]) -> list[tuple[dict, dict]]:
    """(pod labels, pod spec) of every pod template: the Deployment's or the RayService's groups."""
    out = []
    for dep in kinds.get("Deployment", []):
        t = dep["spec"]["template"]
        out.append((t["metadata"]["labels"], t["spec"]))
    for rs in kinds.get("RayService", []):
        cluster = rs["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        out += [(g["template"]["metadata"]["labels"], g["template"]["spec"]) for g in groups]
    return out


def check_workload(kinds: dict[str, list[dict]], values: Path | None) -> None:
    from iama_server.settings import ServerSettings

    v = yaml.safe_load(values.read_text()) if values else {}
    ray = bool(v.get("ray", {}).get("enabled"))
    assert bool(kinds.get("RayService")) == ray and bool(kinds.get("Deployment")) != ray
    pods = pod_specs(kinds)
    (svc,) = kinds["Service"]
    serving = [labels for labels, _ in pods if matches(svc["spec"]["selector"], labels)]
    assert len(serving) == 1, "the Service selects exactly the serving pods (the Deployment's, or the Ray head)"
    settings = set(ServerSettings.model_fields)
    for labels, spec in pods:
        (c,) = spec["containers"]
        env = {e["name"]: e for e in c["env"]}
        for name in env:
            if name.startswith("IAMA_") and name != "IAMA_CACHE_DIR":
                assert name.removeprefix("IAMA_").lower() in settings, f"{name} is not an iama serve setting"
        keys = env.get("IAMA_API_KEYS")
        if v.get("apiKeys", {}).get("existingSecret"):
            assert keys["valueFrom"]["secretKeyRef"] == {"name": v["apiKeys"]["existingSecret"], "key": "api-keys"}
        assert keys is None or "value" not in keys, "API keys come from a Secret, never inline"
        head = labels.get("app.kubernetes.io/component") == "ray-head"  # the proxy and ingress: no engine
        gpus = 0 if head else v.get("gpu", {}).get("count", 0)
        limits = c["resources"].get("limits", {})
        assert int(limits.get("nvidia.com/gpu", 0)) == gpus
        tp = int(env["IAMA_TENSOR_PARALLEL_SIZE"]["value"])
        assert tp == 1 or tp == gpus, "tensor parallel uses the pod's GPUs"
        if tp > 1 and not head:
            assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"]), "vLLM's TP workers need /dev/shm"
    for dep in kinds.get("Deployment", []):
        spec = dep["spec"]
        pod = spec["template"]
        assert matches(spec["selector"]["matchLabels"], pod["metadata"]["labels"])
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        (c,) = pod["spec"]["containers"]
        start, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
        assert start["httpGet"]["path"] == ready["httpGet"]["path"] == "/health"
        assert start["periodSeconds"] * start["failureThreshold"] >= 600, "engines take minutes to load"
        assert "tcpSocket" in live, "liveness is the port: the process exits when its engine dies"
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        drain = float(next(e["value"] for e in c["env"] if e["name"] == "IAMA_GRACEFUL_SHUTDOWN_S"))
        assert grace > drain, "Kubernetes waits for the drain before SIGKILL"
        assert ("replicas" in spec) != bool(v.get("keda", {}).get("enabled")), "KEDA owns replicas when enabled"
    for pdb in kinds.get("PodDisruptionBudget", []):
        assert any(matches(pdb["spec"]["selector"]["matchLabels"], labels) for labels, _ in pods)
    for sm in kinds.get("ServiceMonitor", []):
        assert matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
        ports = {p["name"] for p in svc["spec"]["ports"]}
        assert [e["port"] for e in sm["spec"]["endpoints"]] == ["http"] and "http" in ports
        assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    for so in kinds.get("ScaledObject", []):
        (dep,) = kinds["Deployment"]
        assert so["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": dep["metadata"]["name"],
        }
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "prometheus" and "{{" not in trigger["metadata"]["query"]
        float(trigger["metadata"]["threshold"])
    for rs in kinds.get("RayService", []):
        serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
        (app,) = serve["applications"]
        module, _, attr = app["import_path"].partition(":")
        import importlib

        assert callable(getattr(importlib.import_module(module), attr)), app["import_path"]
        args = app["args"]
        assert ("autoscaling_config" in args) != ("num_replicas" in args)


def test_bad_values_fail_naming_the_field(helm):
    for sets, field in [
        (["server.maxBudget=0"], "/server/maxBudget"),
        (["service.type=Ingress"], "/service/type"),
        (["typo=1"], "typo"),
        (["apiKeys.keys={short}"], "/apiKeys/keys/0"),
    ]:
        args = [helm, "template", "r", str(CHART)] + [a for s in sets for a in ("--set", s)]
        done = subprocess.run(args, capture_output=True, text=True)
        assert done.returncode != 0 and field in done.stderr, (sets, done.stderr)


def test_keys_given_in_values_become_a_secret_not_an_env_value(helm):
    kinds = by_kind(render(helm, None, "apiKeys.keys={sk-aaaaaaaa,sk-bbbbbbbb}"))
    (secret,) = kinds["Secret"]
    assert secret["stringData"] == {"api-keys": "sk-aaaaaaaa,sk-bbbbbbbb"}
    (dep,) = kinds["Deployment"]
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["IAMA_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert "sk-aaaaaaaa" not in json.dumps(dep)


def test_the_settings_reach_the_server_as_it_parses_them(helm):
    """The env a pod gets, loaded by ServerSettings as iama serve would: values arrive intact."""
    from iama_server.settings import ServerSettings

    kinds = by_kind(render(helm, CHART / "examples" / "gpu.yaml"))
    env = kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"]
    plain = {e["name"].removeprefix("IAMA_").lower(): e["value"] for e in env if e["name"].startswith("IAMA_")}
    plain.pop("cache_dir")
    s = ServerSettings.model_validate(plain)
    assert s.model == "/models/length/model" and s.max_budget == 64 and s.served_model_name == "iama-length"
    assert s.host == "0.0.0.0" and s.gpu_memory_utilization == 0.85


def test_tenants_keys_file_from_a_secret_redis_and_usage_urls_and_adapters_reach_the_server(helm, monkeypatch):
    """The tenants example: the keys file in a Secret mounted where IAMA_KEYS_FILE points (and
    loadable by the server's own reader), Redis and the usage store from Secrets, adapters as a
    setting the server parses; no key's plaintext anywhere, only SHA-256s."""
    from iama_server.keys import KeysFile
    from iama_server.settings import ServerSettings

    kinds = by_kind(render(helm, CHART / "examples" / "tenants.yaml"))
    (keys_secret,) = [s for s in kinds["Secret"] if "keys.yaml" in s.get("stringData", {})]
    keys = KeysFile.model_validate(yaml.safe_load(keys_secret["stringData"]["keys.yaml"]))
    assert [k.name for k in keys.keys] == ["acme", "free-tier", "ops"] and keys.keys[1].priority == "low"
    pod = kinds["Deployment"][0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "keys")
    assert env["IAMA_KEYS_FILE"]["value"] == mount["mountPath"] + "/keys.yaml" and mount["readOnly"]
    assert (
        next(v for v in pod["volumes"] if v["name"] == "keys")["secret"]["secretName"]
        == keys_secret["metadata"]["name"]
    )
    assert env["IAMA_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "iama-redis", "key": "url"}
    assert env["IAMA_USAGE_DB"]["valueFrom"]["secretKeyRef"] == {"name": "iama-usage", "key": "url"}
    for name in [n for n in os.environ if n.startswith("IAMA_")]:
        monkeypatch.delenv(name)
    for e in container["env"]:  # as the pod's process sees them: IAMA_ADAPTERS is JSON
        if "value" in e and e["name"].removeprefix("IAMA_").lower() in ServerSettings.model_fields:
            monkeypatch.setenv(e["name"], e["value"])
    s = ServerSettings()
    assert s.adapters == {"length-short": "/models/length-short/model", "tone-warm": "/models/tone-warm/model"}
    assert str(s.keys_file) == "/etc/iama/keys/keys.yaml"
    default = {e["name"]: e for e in by_kind(render(helm, None))["Deployment"][0]["spec"]["template"]["spec"]
               ["containers"][0]["env"]}  # fmt: skip
    assert (
        default["IAMA_USAGE_DB"]["value"] == "sqlite:////cache/iama_usage.sqlite3" and "IAMA_KEYS_FILE" not in default
    )
