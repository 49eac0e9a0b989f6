"""``remote:<url>`` rewards against a real second process: vLLM's pooling server serving the tiny
sequence classifier. Its scores equal the in-process ``hf:`` reward's on the same model; long
inputs lose their start, never their end; a server that is down is one clear error; the
alignment server scores with it."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from in_process import serve

from iama.rewards import create_reward
from iama.rewards.remote import RemoteRewardError

pytestmark = pytest.mark.engine
TEXTS = ["I love this wonderful day", "awful and sad", "the quick brown fox", "ok", "Best of N sampling picks"]


@pytest.fixture(scope="module")
def pooling_server(tiny_classifier, tmp_path_factory):
    from servers import free_port, spawn_until_healthy

    port = free_port()
    log = tmp_path_factory.mktemp("pooling") / "vllm.log"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_classifier),
        "--runner",
        "pooling",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
    ]
    srv = spawn_until_healthy(cmd, port, log, {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}, 600)
    yield srv
    srv.stop()


def hf(tiny_classifier, **kw):
    return create_reward(f"hf:{tiny_classifier}", dtype="float32", **kw)


def test_remote_scores_equal_the_in_process_model(pooling_server, tiny_classifier):
    prompts = ["q"] * len(TEXTS)
    for probability in (True, False):
        remote = create_reward(
            f"remote:{pooling_server.url}", pair=False, label=1, probability=probability, batch_size=2
        )
        local = hf(tiny_classifier, pair=False, label="POSITIVE", probability=probability)
        assert remote.score(prompts, TEXTS) == pytest.approx(local.score(prompts, TEXTS), abs=1e-4)
    chat = create_reward(f"remote:{pooling_server.url}", format="chat", label=1, probability=True)
    conv = [[{"role": "user", "content": "How was it?"}]] * 2
    got = chat.score(conv, TEXTS[:2])
    assert got.shape == (2,) and 0 < got.min() and got.max() < 1
    assert chat.params["format"] == "chat" and "api_key" not in chat.params


def test_long_inputs_lose_their_start_never_their_end(pooling_server, tiny_classifier):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier, dtype=torch.float32).eval()
    long = "the quick brown fox " * 50 + "and then an awful sad ending"
    ids = tok(long)["input_ids"]
    with torch.no_grad():
        tail = torch.softmax(model(torch.tensor([ids[-6:]])).logits[0], -1)[1].item()
        head = torch.softmax(model(torch.tensor([ids[:6]])).logits[0], -1)[1].item()
    remote = create_reward(f"remote:{pooling_server.url}", pair=False, label=1, probability=True, max_length=6)
    (got,) = remote.score(["q"], [long])
    assert got == pytest.approx(tail, abs=1e-4) and abs(got - head) > 1e-4


def test_a_server_that_is_down_is_one_clear_error():
    from servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    remote = create_reward(f"remote:{url}", model="m", pair=False, timeout_s=5)
    with pytest.raises(RemoteRewardError, match="unreachable"):
        remote.score(["q"], ["text"])
    with pytest.raises(ValueError, match="index"):
        create_reward(f"remote:{url}", label="POSITIVE")


async def test_the_alignment_server_scores_with_a_remote_reward(pooling_server):
    rm = {"type": f"remote:{pooling_server.url}", "pair": False, "label": 1, "probability": True}
    async with serve(rewards={"rm": rm}) as s:
        rewards = (await s.client.get("/v1/rewards")).json()["data"]
        assert next(r for r in rewards if r["name"] == "rm")["ready"]
        body = {"prompt": "Hi", "reward_weights": {"rm": 1}, "budget": 4, "max_tokens": 16, "return_candidates": True}
        d = (await s.client.post("/v1/align", json=body)).json()
        texts = [c["text"] for c in d["candidates"]]
        direct = create_reward(rm["type"], pair=False, label=1, probability=True).score(["Hi"] * 4, texts)
        assert [c["scores"]["rm"]["raw"] for c in d["candidates"]] == pytest.approx(list(direct), abs=1e-5)


async def test_start_up_fails_naming_a_remote_reward_that_is_down():
    from servers import free_port

    rm = {"type": f"remote:http://127.0.0.1:{free_port()}", "model": "m", "pair": False, "timeout_s": 5}
    async with serve(rewards={"rm": rm}, wait_ready=False) as s:
        for _ in range(2000):
            h = await s.client.get("/health")
            if h.json()["status"] == "failed":
                break
            await asyncio.sleep(0.01)  # the app's start-up runs meanwhile; the ceiling only catches a hang
        assert h.status_code == 503 and h.json()["status"] == "failed"
        assert "rm" in h.json()["detail"] and "unreachable" in h.json()["detail"]
