"""vLLM's load generator, guidellm, against ``iama serve`` and against vLLM's own server.

The same sweep (guidellm's ``sweep`` profile: synchronous, then throughput at a concurrency
cap, then constant rates between the two) with the same synthetic data, on the same model,
dtype and engine settings, one server at a time (2 cores cannot host two engines fairly).
Plain generation through ``/v1/chat/completions`` streamed, which is what guidellm sends: the
comparison is the serving overhead of iama's request path (validation, admission, streaming)
over vLLM's own, not alignment.

guidellm lives in its own virtual environment (it pins its own dependencies), made on first
use under ``runs/guidellm/venv``.

    .venv/bin/python benchmarks/guidellm_sweep.py            # writes benchmarks/results/guidellm/
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

GUIDELLM_VERSION = "0.8.1"
STATS = {
    "requests_per_second": "req_per_s",
    "request_latency": "latency_s",
    "time_to_first_token_ms": "ttft_ms",
    "inter_token_latency_ms": "itl_ms",
    "output_tokens_per_second": "output_tok_per_s",
}


def guidellm_bin(venv: Path) -> Path:
    exe = venv / "bin" / "guidellm"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, f"guidellm=={GUIDELLM_VERSION}"], check=True)
    return exe


def run_guidellm(exe: Path, url: str, tokenizer: str, out: Path, args: argparse.Namespace, api_key: str) -> None:
    backend = f"kind=openai_http,target={url},api_key={api_key}"
    cmd = [
        str(exe),
        "run",
        "--backend",
        backend,
        "--profile",
        f"kind=sweep,sweep_size={args.sweep_size},max_concurrency={args.max_concurrency}",
        "--constraint",
        f"kind=max_duration,seconds={args.seconds}",
        "--data",
        f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},output_tokens={args.output_tokens}",
        "--tokenizer",
        f"kind=huggingface_auto,model={tokenizer}",
        "--output",
        f"kind=json,path={out}",
        "--disable-console-interactive",
    ]
    print(" ".join(cmd).replace(api_key, "KEY"), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def summarise(report: dict) -> list[dict]:
    """One row per strategy: rate, throughput, latency, TTFT, ITL (mean and p95), errors."""
    rows = []
    for b in report["benchmarks"]:
        strategy = b["config"]["strategy"]
        m = b["metrics"]
        row = {
            "strategy": strategy["type_"],
            "target_rate": strategy.get("rate"),
            "max_concurrency": strategy.get("max_concurrency"),
            "successful": int(m["request_totals"]["successful"]),
            "errored": int(m["request_totals"]["errored"]),
        }
        for key, name in STATS.items():
            s = m[key]["successful"]
            row[f"{name}_mean"] = s["mean"]
            row[f"{name}_p95"] = s["percentiles"]["p95"]
        rows.append(row)
    return rows


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for (server, rows), color in zip(summary["servers"].items(), ("C0", "C1"), strict=False):
        paced = sorted((r for r in rows if r["strategy"] != "throughput"), key=lambda r: r["req_per_s_mean"])
        burst = [r for r in rows if r["strategy"] == "throughput"]
        for ax, key in ((axes[0], "latency_s_p95"), (axes[1], "ttft_ms_p95")):
            ax.plot([r["req_per_s_mean"] for r in paced], [r[key] for r in paced], "o-", color=color, label=server)
            label = f"{server}: throughput (≤ {burst[0]['max_concurrency']} in flight)" if burst else None
            ax.plot([r["req_per_s_mean"] for r in burst], [r[key] for r in burst], "*", ms=12, color=color, label=label)
    axes[0].set(xlabel="requests/s (achieved)", ylabel="p95 request latency (s)")
    axes[1].set(xlabel="requests/s (achieved)", ylabel="p95 time to first token (ms)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(summary["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from server_latency import start_vllm_server
    from servers import start_bench_server

    from iama.models import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "guidellm")
    ap.add_argument("--venv", type=Path, default=ROOT / "runs" / "guidellm" / "venv")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--sweep-size", type=int, default=5)
    ap.add_argument("--max-concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=30, help="per strategy")
    ap.add_argument("--plot-only", action="store_true", help="redraw sweep.png from summary.json")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads((args.out / "summary.json").read_text()), args.out / "sweep.png")
        return

    exe = guidellm_bin(args.venv)
    model = resolve_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    key = "bench-key"
    servers = {}
    for name in ("iama serve", "vllm serve"):
        if name == "iama serve":
            env = {"IAMA_API_KEYS": key, "IAMA_MAX_CONCURRENT_REQUESTS": str(args.max_concurrency * 4)}
            srv = start_bench_server(args.model, "bench-guidellm", env)
        else:
            srv = start_vllm_server(model)
        raw = args.out / f"{name.split()[0]}.json"
        try:
            run_guidellm(exe, srv.url, model, raw, args, key)
        finally:
            srv.stop()
        report = json.loads(raw.read_text())
        servers[name] = summarise(report)
        with raw.open("rb") as f, gzip.open(raw.with_suffix(".json.gz"), "wb") as g:
            shutil.copyfileobj(f, g)  # guidellm's whole report, every request, compressed
        raw.unlink()
    summary = {
        "title": (
            f"guidellm {GUIDELLM_VERSION} sweep, synthetic {args.prompt_tokens}+{args.output_tokens} tokens, "
            f"{args.seconds} s per strategy, max concurrency {args.max_concurrency}"
        ),
        "model": str(args.model),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "servers": servers,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    import csv

    with (args.out / "summary.csv").open("w", newline="") as f:
        fields = ["server", *servers["iama serve"][0].keys()]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for server, rows in servers.items():
            for r in rows:
                w.writerow({"server": server, **r})
    plot(summary, args.out / "sweep.png")
    print(json.dumps(summary["servers"], indent=1))


if __name__ == "__main__":
    main()
