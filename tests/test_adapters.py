"""IAMA adapters on one base: a request's ``model`` picks a LoRA adapter, and with it the rewards,
normalisation statistics and default weights of that adapter's ``iama.json``.

In-process (``FakeEngine``: a request through an adapter gets the candidates in reverse order,
so the answer shows which model generated): routing on both surfaces, ``/v1/models`` and
``/v1/rewards?model=``, a key's ``models`` over adapter names, admin load and unload at run
time (a 403 for other keys, 400s naming the field), an unload that waits for the request still
running through the adapter (held by construction), start-up refusals, ``--model`` naming an
adapter.

On vLLM (one module-scoped server, the tiny Llama): an adapter trained by ``iama train`` with
``lora: {merge: false}`` is served beside its base (``--adapter``); greedy output through it is
its merged checkpoint's greedy output from transformers, token for token (exact equality of the
tokens, shown through log-probs: ``_same_greedy_tokens``), and differs from the base's; its own
reward is used; admin load and unload at run time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fake_engine import CANDIDATES
from in_process import API_KEY, REWARDS, serve, until

from iama.rewards import RewardSet
from iama_server.adapters import VLLM_LORA_RANKS, AdapterError
from iama_server.errors import ErrorCode
from iama_server.keys import hash_key

ALIGN = {"prompt": "How was your day?", "budget": 4, "max_tokens": 32, "return_candidates": True}
WARM_REWARDS = {  # what the adapter "warm" was meta-aligned for: a reward the base does not serve
    "warmth": {"type": "sentiment", "stats": {"mean": 0.5, "std": 2.0}},
    "short": {"type": "length", "target": 3, "max_length": 20, "unit": "words"},
}
USER_KEY = "sk-user-not-admin"


def adapter_dir(
    path: Path, base: str = "fake-model", rank: int = 4, rewards: dict[str, Any] | None = None, weights: Any = None
) -> Path:
    """What ``iama train`` with ``lora.merge: false`` writes, as far as the server reads it."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "base_model_name_or_path": base, "r": rank, "lora_alpha": 2 * rank}
    (path / "adapter_config.json").write_text(json.dumps(config))
    card: dict[str, Any] = {"base_model": base, "rewards": rewards or WARM_REWARDS}
    card["objective"] = {"tasks": [{"weights": weights or {"warmth": 1.0}}]}
    (path / "iama.json").write_text(json.dumps(card))
    return path


@pytest.fixture
def warm(tmp_path: Path) -> Path:
    return adapter_dir(tmp_path / "warm")


def keys_file(tmp_path: Path) -> Path:
    entries = [
        {"name": "ops", "sha256": hash_key(API_KEY), "admin": True},
        {"name": "user", "sha256": hash_key(USER_KEY), "models": ["warm"]},
    ]
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


def error(r: httpx.Response) -> dict[str, Any]:
    return r.json()["error"]


# ---------------------------------------------------------------------- in-process
@pytest.mark.inprocess
async def test_a_requests_model_picks_the_adapter_with_its_rewards_stats_and_default_weights(warm):
    async with serve(adapters={"warm": str(warm)}) as s:
        r = await s.client.post("/v1/align", json={**ALIGN, "model": "warm", "reward_weights": {"warmth": 1.0}})
        assert r.status_code == 200, r.text
        d = r.json()
        sampling = s.engine.calls[-1][1]
        assert sampling.adapter is not None and sampling.adapter.name == "warm"
        assert sampling.adapter.path == str(warm.resolve())
        assert d["model"] == "warm"
        assert [c["text"] for c in d["candidates"]] == CANDIDATES[::-1][:4]  # the fake's adapter output
        raw = RewardSet({"warmth": "sentiment"}).score([ALIGN["prompt"]] * 4, CANDIDATES[::-1][:4])["warmth"]
        for c, x in zip(d["candidates"], raw, strict=True):  # normalised with the adapter's card's statistics
            assert c["scores"]["warmth"] == pytest.approx({"raw": x, "normalized": (x - 0.5) / 2.0})

        # Without `model` the base answers, with its own rewards: the adapter's is unknown there.
        r = await s.client.post("/v1/align", json={**ALIGN, "reward_weights": {"warmth": 1.0}})
        assert r.status_code == 400 and error(r)["code"] == ErrorCode.INVALID_REWARD_WEIGHTS
        assert error(r)["param"] == "reward_weights.warmth"
        r = await s.client.post("/v1/align", json={**ALIGN, "reward_weights": {"sentiment": 1.0}})
        assert r.status_code == 200 and r.json()["model"] == "fake"
        assert s.engine.calls[-1][1].adapter is None

        # No weights: the adapter's card's (its first task's), not the base's (it has none).
        r = await s.client.post("/v1/align", json={**ALIGN, "model": "warm"})
        assert r.status_code == 200 and r.json()["reward_weights"] == {"warmth": 1.0}
        r = await s.client.post("/v1/align", json=ALIGN)
        assert r.status_code == 400 and error(r)["param"] == "reward_weights"

        r = await s.client.post("/v1/align", json={**ALIGN, "model": "cold", "reward_weights": {"warmth": 1.0}})
        assert r.status_code == 404 and error(r)["code"] == ErrorCode.MODEL_NOT_FOUND
        assert "'warm'" in error(r)["message"]


@pytest.mark.inprocess
async def test_the_openai_routes_and_the_judge_run_through_the_requested_adapter(warm):
    async with serve(adapters={"warm": str(warm)}) as s:
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
        r = await s.client.post("/v1/chat/completions", json={**chat, "model": "warm"})
        assert r.status_code == 200 and r.json()["model"] == "warm"
        assert r.json()["choices"][0]["message"]["content"] == " ".join(CANDIDATES[-1].split()[:8])
        r = await s.client.post("/v1/completions", json={"prompt": "Hi", "model": "warm", "stream": True})
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert chunks and {c["model"] for c in chunks} == {"warm"}
        assert s.engine.calls[-1][1].adapter.name == "warm"
        # A rubric is judged through the adapter the answers came from.
        body = {**chat, "model": "warm", "best_of": 2, "rubrics": {"kind": "numbers"}, "reward_weights": {"kind": 1}}
        r = await s.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert s.engine.judged_with[-1] is not None and s.engine.judged_with[-1].name == "warm"


@pytest.mark.inprocess
async def test_models_lists_the_base_and_each_adapter_and_rewards_follow_the_model(warm):
    async with serve(adapters={"warm": str(warm)}) as s:
        data = (await s.client.get("/v1/models")).json()["data"]
        assert [(m["id"], m["parent"]) for m in data] == [("fake", None), ("warm", "fake")]
        assert data[1]["root"] == str(warm.resolve())
        listing = (await s.client.get("/v1/rewards", params={"model": "warm"})).json()
        normalization = {x["name"]: x["normalization"] for x in listing["data"]}
        # Its card's rewards, and the server config's `rewards` on top (as for the base's card).
        assert set(normalization) == {"warmth", *REWARDS}
        assert normalization["warmth"] == {"mean": 0.5, "std": 2.0, "count": 0}
        assert all(x["ready"] for x in listing["data"])
        assert listing["default_reward_weights"] == {"warmth": 1.0}
        assert listing["meta_aligned_for"]["base_model"] == "fake-model"
        base = (await s.client.get("/v1/rewards")).json()
        assert "warmth" not in {x["name"] for x in base["data"]} and "sentiment" in {x["name"] for x in base["data"]}
        r = await s.client.get("/v1/rewards", params={"model": "cold"})
        assert r.status_code == 404 and error(r)["param"] == "model"


@pytest.mark.inprocess
async def test_a_keys_models_list_names_adapters_as_it_names_models(tmp_path, warm):
    async with serve(adapters={"warm": str(warm)}, api_keys=[], keys_file=keys_file(tmp_path)) as s:
        user = {"Authorization": f"Bearer {USER_KEY}"}
        weights = {"reward_weights": {"warmth": 1.0}}
        r = await s.client.post("/v1/align", json={**ALIGN, **weights, "model": "warm"}, headers=user)
        assert r.status_code == 200, r.text
        r = await s.client.post("/v1/align", json={**ALIGN, "reward_weights": {"sentiment": 1.0}}, headers=user)
        assert r.status_code == 403 and error(r)["code"] == ErrorCode.MODEL_NOT_ALLOWED
        assert "'fake'" in error(r)["message"]
        chat = {"messages": [{"role": "user", "content": "Hi"}], "model": "fake"}
        r = await s.client.post("/v1/chat/completions", json=chat, headers=user)
        assert r.status_code == 403 and error(r)["param"] == "model"


@pytest.mark.inprocess
async def test_an_admin_loads_and_unloads_an_adapter_at_run_time(tmp_path, warm):
    async with serve(enable_lora=True) as s:
        assert (await s.client.get("/v1/models")).json()["data"][1:] == []
        r = await s.client.post("/v1/adapters", json={"name": "warm", "path": str(warm)})
        assert r.status_code == 200, r.text
        assert r.json() | {"created": 0} == {
            "id": "warm", "object": "model", "created": 0, "owned_by": "iama", "root": str(warm.resolve()),
            "parent": "fake",
        }  # fmt: skip
        assert set(s.engine.adapters) == {"warm"}
        assert {"warmth", "short"} <= s.state.lifecycle.ready_rewards  # warmed before it was listed
        assert [m["id"] for m in (await s.client.get("/v1/models")).json()["data"]] == ["fake", "warm"]
        r = await s.client.post("/v1/align", json={**ALIGN, "model": "warm"})
        assert r.status_code == 200 and r.json()["model"] == "warm"
        loaded = s.engine.adapters["warm"]

        r = await s.client.delete("/v1/adapters/warm")
        assert r.status_code == 200 and r.json() == {"id": "warm", "object": "model", "deleted": True}
        assert s.engine.removed == [loaded] and not s.engine.adapters
        r = await s.client.post("/v1/align", json={**ALIGN, "model": "warm"})
        assert r.status_code == 404 and error(r)["code"] == ErrorCode.MODEL_NOT_FOUND
        assert [m["id"] for m in (await s.client.get("/v1/models")).json()["data"]] == ["fake"]

        # Loaded again under the same name: a new engine id (vLLM's caches never mix the two).
        assert (await s.client.post("/v1/adapters", json={"name": "warm", "path": str(warm)})).status_code == 200
        assert s.engine.adapters["warm"].id != loaded.id
        r = await s.client.delete("/v1/adapters/cold")
        assert r.status_code == 404 and error(r)["param"] == "name"
        r = await s.client.delete("/v1/adapters/fake")
        assert r.status_code == 400 and error(r)["param"] == "name"


@pytest.mark.inprocess
async def test_adapters_are_loaded_and_unloaded_by_admin_keys_only(tmp_path, warm):
    async with serve(enable_lora=True, adapters={"warm": str(warm)}, api_keys=[], keys_file=keys_file(tmp_path)) as s:
        user = {"Authorization": f"Bearer {USER_KEY}"}
        r = await s.client.post("/v1/adapters", json={"name": "other", "path": str(warm)}, headers=user)
        assert r.status_code == 403 and error(r)["code"] == ErrorCode.ADMIN_ONLY
        r = await s.client.delete("/v1/adapters/warm", headers=user)
        assert r.status_code == 403 and error(r)["code"] == ErrorCode.ADMIN_ONLY
        assert set(s.engine.adapters) == {"warm"} and not s.engine.removed
        assert (await s.client.delete("/v1/adapters/warm")).status_code == 200  # the admin key (ops)


def _full_model(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


@pytest.mark.inprocess
@pytest.mark.parametrize(
    ("make", "param", "says"),
    [
        (lambda d, w: {"name": "a", "path": str(d / "missing")}, "path", "does not exist"),
        (lambda d, w: {"name": "a", "path": str(_full_model(d / "full"))}, "path", "is a full model, not an adapter"),
        (lambda d, w: {"name": "a", "path": str(adapter_dir(d / "x", base="other"))}, "path", "was trained on 'other'"),
        (lambda d, w: {"name": "a", "path": str(adapter_dir(d / "x", rank=64))}, "path", "over this engine's max_lora"),
        (lambda d, w: {"name": "warm", "path": str(w)}, "name", "is taken"),
        (lambda d, w: {"name": "fake", "path": str(w)}, "name", "is taken"),
        (lambda d, w: {"name": "fake-model", "path": str(w)}, "name", "is taken"),
        (lambda d, w: {"name": "a/b", "path": str(w)}, "name", "pattern"),
        (lambda d, w: {"name": "a", "path": str(w), "lora": 1}, "lora", "Extra inputs"),
    ],
    ids=["missing", "full-model", "wrong-base", "rank", "taken", "base-name", "base-alias", "bad-name", "extra"],
)
async def test_a_bad_adapter_is_a_400_naming_the_field(tmp_path, warm, make, param, says):
    async with serve(adapters={"warm": str(warm)}) as s:
        r = await s.client.post("/v1/adapters", json=make(tmp_path, warm))
        assert r.status_code == 400, r.text
        assert error(r)["param"] == param and says in error(r)["message"]
        assert set(s.engine.adapters) == {"warm"}


@pytest.mark.inprocess
async def test_loading_needs_an_engine_started_with_lora(warm):
    async with serve() as s:  # no adapters, enable_lora unset: off
        r = await s.client.post("/v1/adapters", json={"name": "warm", "path": str(warm)})
        assert r.status_code == 400 and "enable_lora" in error(r)["message"]
        assert s.state.lora is None and not s.engine.adapters


@pytest.mark.inprocess
async def test_unloading_waits_for_the_request_running_through_the_adapter(warm):
    async with serve(adapters={"warm": str(warm)}) as s:
        s.engine.hold()
        running = asyncio.create_task(s.client.post("/v1/align", json={**ALIGN, "model": "warm"}))
        await until(lambda: s.engine.running, "the request through the adapter to be generating")
        unloading = asyncio.create_task(s.client.delete("/v1/adapters/warm"))
        await until(lambda: s.state.models.adapters == [], "the adapter to be out of the routing table")
        # New requests are refused at once; the running one keeps its adapter in the engine.
        r = await s.client.post("/v1/align", json={**ALIGN, "model": "warm"})
        assert r.status_code == 404
        await asyncio.sleep(0.05)  # let the DELETE run as far as it would
        assert not unloading.done() and "warm" in s.engine.adapters and not running.done()
        s.engine.release()
        r = await running
        assert r.status_code == 200 and r.json()["model"] == "warm"
        assert (await unloading).status_code == 200
        assert not s.engine.adapters and [a.name for a in s.engine.removed] == ["warm"]


@pytest.mark.inprocess
async def test_an_adapter_given_as_model_is_served_on_its_base_as_the_default(tmp_path):
    run = tmp_path / "runs" / "tone"
    model = adapter_dir(run / "model")
    (run / "run.json").write_text("{}")
    async with serve(model=str(model), served_model_name=None) as s:
        assert (await s.client.get("/health")).json() == {"status": "ok", "model": "tone"}
        data = (await s.client.get("/v1/models")).json()["data"]
        assert [(m["id"], m["parent"]) for m in data] == [("fake-model", None), ("tone", "fake-model")]
        r = await s.client.post("/v1/align", json=ALIGN)  # the card's default weights
        assert r.status_code == 200 and r.json()["model"] == "tone"
        assert s.engine.calls[-1][1].adapter.name == "tone"
        r = await s.client.post("/v1/align", json={**ALIGN, "model": "fake-model", "reward_weights": {"sentiment": 1}})
        assert r.status_code == 200 and s.engine.calls[-1][1].adapter is None


@pytest.mark.inprocess
async def test_an_adapter_that_does_not_fit_is_refused_at_start_up_naming_it(tmp_path, warm):
    other = adapter_dir(tmp_path / "other", base="/models/another-base")
    with pytest.raises(AdapterError, match=r"was trained on '/models/another-base'; this server's base is"):
        async with serve(adapters={"warm": str(warm), "other": str(other)}):
            pass
    with pytest.raises(ValueError, match=r"adapters \['warm'\] need enable_lora"):  # a settings error (exit 2)
        async with serve(adapters={"warm": str(warm)}, enable_lora=False):
            pass
    with pytest.raises(AdapterError, match=r"serving adapter\(s\) \['warm'\] needs enable_lora"):
        async with serve(model=str(warm), enable_lora=False):
            pass
    with pytest.raises(AdapterError, match="over max_lora_rank 8"):
        async with serve(adapters={"big": str(adapter_dir(tmp_path / "big", rank=16))}, max_lora_rank=8):
            pass


@pytest.mark.inprocess
def test_an_adapters_base_matches_by_resolved_path_else_by_name(tmp_path):
    from iama_server.adapters import same_base

    base = tmp_path / "models" / "SmolLM2"
    base.mkdir(parents=True)
    (tmp_path / "link").symlink_to(base)
    assert same_base(str(tmp_path / "link"), str(base), [])  # one directory, two spellings
    (tmp_path / "copy" / "SmolLM2").mkdir(parents=True)
    assert not same_base(str(tmp_path / "copy" / "SmolLM2"), str(base), [])  # a copy is another model
    assert same_base("HuggingFaceTB/SmolLM2", str(base), [])  # a hub id, against the directory's name
    assert same_base("/elsewhere/SmolLM2", "HuggingFaceTB/SmolLM2", [])  # trained on another machine's copy
    assert same_base("org/tuned-base", "/srv/model", ["tuned-base"])  # against a name it is served under
    assert not same_base("org/Other", str(base), ["SmolLM2"])


@pytest.mark.inprocess
def test_lora_limits_follow_the_adapters():
    from iama_server.adapters import lora_limits

    assert lora_limits([4, 16], None, None) == lora_limits([16], 2, 16)
    limits = lora_limits([4, 12, 20], None, None)
    assert (limits.max_loras, limits.max_lora_rank, limits.max_cpu_loras) == (3, 32, 3)
    assert lora_limits([], None, None).max_loras == 1 and lora_limits([], None, None).max_lora_rank == 16
    assert lora_limits([4, 4, 4], 1, None).max_cpu_loras == 3  # every adapter stays in memory
    assert VLLM_LORA_RANKS[0] == 1 and list(VLLM_LORA_RANKS) == sorted(VLLM_LORA_RANKS)


@pytest.mark.inprocess
def test_serve_refuses_a_malformed_adapter_flag_in_one_line():
    from servers import IAMA

    out = subprocess.run([IAMA, "serve", "--adapter", "no-path"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "iama serve: --adapter: expected NAME=PATH, got 'no-path'"


# ---------------------------------------------------------------------- on vLLM
ADMIN_KEY = "sk-engine-admin"
PROMPTS = ["How was your day?", "Write a short answer.", "The quick brown fox", "Numbers like 1 2 3"]
GREEDY = {"temperature": 0.0, "max_tokens": 8}  # one candidate (no best_of): the budget is 1


def run_iama(*args: str) -> subprocess.CompletedProcess[str]:
    from servers import IAMA

    return subprocess.run([IAMA, *args], capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory, tiny_llama) -> tuple[Path, Path]:
    """Two GRPO steps of ``iama train`` with an unmerged LoRA (the adapter directory), and the
    same adapter merged by ``iama merge-lora``. The learning rate is large (0.2, constant) so
    that two steps move the tiny model's greedy output; its reward ``brief`` is one the
    server's base does not serve."""
    tmp = tmp_path_factory.mktemp("adapter-run")
    cfg = {
        "model": str(tiny_llama),
        "output_dir": str(tmp / "tuned"),
        "rewards": {"brief": {"type": "length", "target": 5, "max_length": 20, "unit": "tokens"}},
        "objective": {"type": "linear", "tasks": [{"weights": {"brief": 1.0}, "algorithm": "bon", "n": 4}]},
        "normalization": {"prompts": 2, "samples_per_prompt": 4},
        "group_size": 4,
        "prompts_per_step": 2,
        "steps": 2,
        "max_completion_length": 12,
        "learning_rate": 0.2,
        "lr_scheduler_type": "constant",
        "beta": 0.0,
        "kl_control": {"type": "fixed"},
        "lora": {"enabled": True, "r": 4, "alpha": 8, "merge": False},
        "sampling": {"stop": ["a", "e", "i", "o", "u", "."]},  # lengths vary: the advantages are not all 0
    }
    (tmp / "train.yaml").write_text(yaml.safe_dump(cfg))
    out = run_iama("train", str(tmp / "train.yaml"))
    assert out.returncode == 0, out.stderr[-3000:]
    adapter = tmp / "tuned" / "model"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    out = run_iama("merge-lora", str(adapter), str(tmp / "merged"))
    assert out.returncode == 0, out.stderr[-3000:]
    return adapter, tmp / "merged"


@pytest.fixture(scope="module")
def adapter_server(tmp_path_factory, tiny_llama, trained_adapter):
    """``iama serve --model BASE --adapter tuned=ADAPTER``: one engine for the module's tests."""
    from servers import start_server

    adapter, _ = trained_adapter
    d = tmp_path_factory.mktemp("adapter-server")
    keys = [
        {"name": "ops", "sha256": hash_key(ADMIN_KEY), "admin": True},
        {"name": "user", "sha256": hash_key(USER_KEY)},
    ]
    (d / "keys.yaml").write_text(yaml.safe_dump({"keys": keys}))
    config = {
        "dtype": "float32",
        "max_budget": 4,
        "max_tokens": 512,
        "max_prompt_tokens": 64,
        "max_concurrent_requests": 4,
        "default_rewards": False,
        "rewards": {"short": {"type": "length", "target": 5, "max_length": 50}},
        "keys_file": str(d / "keys.yaml"),
    }
    (d / "server.yaml").write_text(yaml.safe_dump(config))
    srv = start_server(
        str(tiny_llama), d, env={"IAMA_CONFIG_FILE": str(d / "server.yaml")}, args=["--adapter", f"tuned={adapter}"]
    )
    yield srv
    srv.stop()


def _post(srv: Any, path: str, body: dict[str, Any], key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.post(f"{srv.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)


def _greedy(srv: Any, model: str | None, prompt: str | list[int]) -> tuple[str, list[float]]:
    """The server's greedy answer (temperature 0, budget 1) through ``model`` (None: the base):
    its text and each token's log-prob."""
    body = {"prompt": prompt, **GREEDY, "logprobs": 0} | ({"model": model} if model else {})
    r = _post(srv, "/v1/completions", body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return choice["text"], choice["logprobs"]["token_logprobs"]


def _read_back(srv: Any, model: str | None, ids: list[int]) -> list[float]:
    """The log-prob the server gives each of ``ids`` after the ones before it, through
    ``model`` (``echo``: the prompt's own log-probs; the first token has none)."""
    body = {"prompt": ids, "echo": True, "max_tokens": 1, "logprobs": 0, "temperature": 0.0}
    r = _post(srv, "/v1/completions", body | ({"model": model} if model else {}))
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]["token_logprobs"][1 : len(ids)]


def _transformers_greedy(model_dir: Path, tokenizer_dir: Path, prompt: str) -> tuple[list[int], list[int], str]:
    """Prompt ids (as the server encodes a raw prompt), greedy ids and their text from HF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=GREEDY["max_tokens"], do_sample=False, pad_token_id=tok.pad_token_id)
    greedy = new[0, ids.shape[1] :].tolist()
    return ids[0].tolist(), greedy, tok.decode(greedy, skip_special_tokens=True)


def _same_greedy_tokens(srv: Any, model: str | None, model_dir: Path, tokenizer_dir: Path, prompt: str) -> None:
    """The server's greedy tokens through ``model`` are transformers' greedy tokens of
    ``model_dir``, token for token. The API returns no token ids, so the server reads HF's
    tokens back through the same model: at every position HF's token has the log-prob of the
    server's own greedy token there, i.e. it is the argmax (a different token would score
    lower there, the prefix being the same up to the first difference); the tolerance, 1e-4
    nats, covers prefill against decode arithmetic only. The texts agree too, but for U+FFFD,
    which vLLM holds back while a byte-level token leaves UTF-8 incomplete."""
    prompt_ids, hf_ids, hf_text = _transformers_greedy(model_dir, tokenizer_dir, prompt)
    text, logprobs = _greedy(srv, model, prompt)
    assert len(logprobs) == len(hf_ids)
    read_back = _read_back(srv, model, prompt_ids + hf_ids)[-len(hf_ids) :]
    assert read_back == pytest.approx(logprobs, abs=1e-4), (prompt, hf_ids)
    assert text.replace("\ufffd", "") == hf_text.replace("\ufffd", "")


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_greedy_output_through_the_adapter_is_its_merged_checkpoints_and_not_the_bases(
    adapter_server, trained_adapter, tiny_llama
):
    _, merged = trained_adapter
    for prompt in PROMPTS:
        _same_greedy_tokens(adapter_server, "tuned", merged, tiny_llama, prompt)
        _same_greedy_tokens(adapter_server, None, tiny_llama, tiny_llama, prompt)  # the check itself is sound
    through_adapter = [_greedy(adapter_server, "tuned", p) for p in PROMPTS]
    assert through_adapter != [_greedy(adapter_server, None, p) for p in PROMPTS]


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_models_lists_the_base_and_its_adapter(adapter_server, trained_adapter, tiny_llama):
    adapter, _ = trained_adapter
    auth = {"Authorization": f"Bearer {USER_KEY}"}
    data = httpx.get(f"{adapter_server.url}/v1/models", headers=auth, timeout=60).json()["data"]
    assert [(m["id"], m["parent"], m["root"]) for m in data] == [
        (str(tiny_llama), None, str(tiny_llama.resolve())),
        ("tuned", str(tiny_llama), str(adapter.resolve())),
    ]


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_the_adapters_own_reward_and_statistics_are_used_with_its_model_only(adapter_server, trained_adapter):
    from iama.modelcard import load_model_card

    adapter, _ = trained_adapter
    stats = load_model_card(adapter).rewards["brief"].stats
    assert stats is not None and stats.count == 8
    body = {"prompt": "How was your day?", "budget": 2, "max_tokens": 8, "reward_weights": {"brief": 1.0}}
    r = _post(adapter_server, "/v1/align", {**body, "model": "tuned", "return_candidates": True})
    assert r.status_code == 200, r.text
    for c in r.json()["candidates"]:
        score = c["scores"]["brief"]
        assert score["normalized"] == pytest.approx((score["raw"] - stats.mean) / stats.std)
    r = _post(adapter_server, "/v1/align", body)
    assert r.status_code == 400 and error(r)["param"] == "reward_weights.brief"
    listed = httpx.get(
        f"{adapter_server.url}/v1/rewards", params={"model": "tuned"}, headers={"Authorization": f"Bearer {USER_KEY}"}
    ).json()
    assert {x["name"] for x in listed["data"]} == {"brief", "short"} and listed["default_reward_weights"] == {
        "brief": 1.0
    }


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_an_admin_loads_and_unloads_an_adapter_at_run_time_and_a_running_request_finishes(
    adapter_server, trained_adapter
):
    """Loaded again under a second name, the adapter answers as the first. Unloaded while a long
    generation runs through it (running in vLLM before the DELETE is sent: vLLM's unfinished
    count), the DELETE answers only once that generation has finished (the count is 0 again
    when it answers), and the generation is whole; then the name is gone."""
    import threading
    import time

    from exposition import metric

    adapter, _ = trained_adapter
    srv = adapter_server
    r = _post(srv, "/v1/adapters", {"name": "again", "path": str(adapter)}, key=USER_KEY)
    assert r.status_code == 403 and error(r)["code"] == ErrorCode.ADMIN_ONLY
    r = _post(srv, "/v1/adapters", {"name": "again", "path": str(adapter)})
    assert r.status_code == 200 and r.json()["parent"] is not None, r.text
    assert [_greedy(srv, "again", p) for p in PROMPTS] == [_greedy(srv, "tuned", p) for p in PROMPTS]

    def unfinished() -> float:
        return metric(httpx.get(f"{srv.url}/metrics", timeout=30).text, "iama_engine_unfinished_requests")

    done: dict[str, httpx.Response] = {}

    def long_request() -> None:
        body = {"prompt": "Count:", "model": "again", "max_tokens": 512, "ignore_eos": True, "temperature": 1.0}
        done["response"] = _post(srv, "/v1/completions", body)

    runner = threading.Thread(target=long_request)
    runner.start()
    deadline = time.monotonic() + 120
    while unfinished() < 1:
        assert time.monotonic() < deadline and runner.is_alive(), "the long generation never started"
        time.sleep(0.01)
    deleted = httpx.delete(
        f"{srv.url}/v1/adapters/again", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=300
    )
    assert unfinished() == 0  # it waited for the generation
    runner.join(300)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    r = done["response"]
    assert r.status_code == 200 and r.json()["model"] == "again", r.text
    assert r.json()["usage"]["completion_tokens"] == 512  # whole, through the adapter
    body = {"prompt": "Hi", "budget": 1, "max_tokens": 8, "reward_weights": {"brief": 1.0}}
    r = _post(srv, "/v1/align", {**body, "model": "again"})
    assert r.status_code == 404 and error(r)["code"] == ErrorCode.MODEL_NOT_FOUND
    assert _post(srv, "/v1/align", {**body, "model": "tuned"}).status_code == 200


@pytest.mark.engine
def test_vllms_lora_ranks_are_the_ones_the_server_rounds_up_to():
    import typing

    from vllm.config.lora import MaxLoRARanks

    assert typing.get_args(MaxLoRARanks) == VLLM_LORA_RANKS
