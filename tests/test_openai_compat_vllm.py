"""The OpenAI completeness features on real vLLM (the tiny model), through the official SDK and
EleutherAI's lm-eval harness: what only a real engine can show (its log-probs equal the
model's own, its structured outputs give valid JSON, a harness's scores equal lm-eval's
``hf`` backend on the same model and data)."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
from conftest import API_KEY
from exposition import metric
from tiny_models import MANY_STOPS

pytestmark = pytest.mark.engine
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(tiny_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key=API_KEY, timeout=600)


@pytest.fixture(scope="module")
def model_name(tiny_server) -> str:
    return httpx.get(f"{tiny_server.url}/health").json()["model"]


def hf_token_logprobs(model_dir, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t ≥ 1 under transformers' forward pass, in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]


def test_echoed_prompt_logprobs_equal_the_models_own(client, model_name, tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    prompt = "The quick brown fox jumps over the lazy dog"
    ids = tok(prompt)["input_ids"]
    r = client.completions.create(
        model=model_name, prompt=ids, max_tokens=1, logprobs=1, echo=True, temperature=0, seed=0
    )
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
    expected = hf_token_logprobs(tiny_llama, ids)
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(expected, abs=2e-3)
    assert "".join(lp.tokens[: len(ids)]) == prompt
    assert r.choices[0].text.startswith(prompt)
    # the generated (greedy) token is the top-1 alternative at its position
    last_top = lp.top_logprobs[-1]
    assert lp.token_logprobs[-1] == pytest.approx(max(last_top.values()), abs=1e-6)

    same = client.completions.create(
        model=model_name, prompt=prompt, max_tokens=1, logprobs=1, echo=True, temperature=0
    )
    assert same.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs[:1] + lp.token_logprobs[1:])


def test_token_prompts_and_text_prompts_give_the_same_completion(client, model_name, tiny_llama):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_llama)("Best of N sampling picks")["input_ids"]
    as_ids = client.completions.create(model=model_name, prompt=ids, max_tokens=8, temperature=0)
    as_text = client.completions.create(
        model=model_name, prompt="Best of N sampling picks", max_tokens=8, temperature=0
    )
    assert as_ids.choices[0].text == as_text.choices[0].text
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=model_name, prompt=[10**6], max_tokens=2)
    assert err.value.body["param"] == "prompt"


def test_chat_logprobs_of_the_chosen_candidate(client, model_name):
    r = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=8,
        seed=3,
        logprobs=True,
        top_logprobs=2,
        extra_body={"best_of": 4, "reward_weights": {"short": 1}},
    )
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= 8
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert t.top_logprobs[0].logprob >= t.logprob - 1e-6


def test_a_stop_string_stays_in_the_text_the_rewards_score_when_asked(tiny_server, tiny_llama):
    """``include_stop_str_in_output`` (vLLM's): a candidate that ended at a stop string keeps
    it, as a model trained with stop tokens saw its answers; the same draws otherwise."""
    body = {"prompt": "hi", "reward_weights": {"short": 1}, "budget": 8, "max_tokens": 24, "seed": 5,
            "stop": ["e", "a"], "return_candidates": True}  # fmt: skip
    cut = httpx.post(f"{tiny_server.url}/v1/align", json=body, headers=AUTH, timeout=600).json()["candidates"]
    body["include_stop_str_in_output"] = True
    kept = httpx.post(f"{tiny_server.url}/v1/align", json=body, headers=AUTH, timeout=600).json()["candidates"]
    ended = 0
    for a, b in zip(cut, kept, strict=True):
        assert "e" not in a["text"] and "a" not in a["text"]
        if b["text"] != a["text"]:
            ended += 1
            assert b["text"][:-1] == a["text"] and b["text"][-1] in "ea" and b["finish_reason"] == "stop"
    assert ended >= 1  # the random model's byte-level text holds e or a within 24 tokens
    # stop_token_ids: the tokens themselves (as `sampling.stop` trained), kept in the text when asked
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = sorted({i for t in MANY_STOPS for i in tok.encode(t, add_special_tokens=False)})
    del body["stop"]
    body["stop_token_ids"] = ids
    kept = httpx.post(f"{tiny_server.url}/v1/align", json=body, headers=AUTH, timeout=600).json()["candidates"]
    stopped = [c for c in kept if c["finish_reason"] == "stop" and c["text"]]
    assert stopped and all(c["text"][-1] in "".join(MANY_STOPS) for c in stopped)


def test_a_vote_on_the_real_engine_returns_the_plurality_answers_best_candidate(tiny_server):
    import re
    from collections import Counter

    body = {"prompt": "hi", "reward_weights": {"short": 1}, "budget": 8, "max_tokens": 12, "seed": 3,
            "algorithm": "vote", "vote": {"regex": "[a-e]"}, "return_candidates": True}  # fmt: skip
    d = httpx.post(f"{tiny_server.url}/v1/align", json=body, headers=AUTH, timeout=600).json()
    answers = [m.group(0) if (m := re.search("[a-e]", c["text"])) else None for c in d["candidates"]]
    counts = Counter(a for a in answers if a is not None)
    assert d["vote"]["counts"] == {a: float(n) for a, n in counts.items()}
    top = max(counts.values())
    assert counts[d["vote"]["answer"]] == top
    mine = [c for c, a in zip(d["candidates"], answers, strict=True) if a == d["vote"]["answer"]]
    assert d["weighted_score"] == max(c["weighted_score"] for c in mine) and d["text"] in [c["text"] for c in mine]


def _valid(text: str, schema: dict) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def test_json_schema_makes_every_candidate_valid_json(client, model_name, tiny_server):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    body = {
        "prompt": "Answer in JSON",
        "reward_weights": {"short": 1},
        "budget": 4,
        "max_tokens": 128,
        "seed": 1,
        "response_format": fmt,
        "return_candidates": True,
    }
    d = httpx.post(f"{tiny_server.url}/v1/align", json=body, headers=AUTH, timeout=600).json()
    for c in d["candidates"]:
        if c["finish_reason"] == "stop":  # a random model may still run into max_tokens in whitespace
            v = json.loads(c["text"])
            assert set(v) == {"ok", "n"} and isinstance(v["ok"], bool) and 0 <= v["n"] <= 9
    assert any(c["finish_reason"] == "stop" for c in d["candidates"])
    # the chosen one is among those that parse and finished, whatever the rewards say of the rest
    valid = [c for c in d["candidates"] if c["finish_reason"] == "stop" and _valid(c["text"], schema)]
    assert d["eligible"] == len(valid) > 0 and d["weighted_score"] == max(c["weighted_score"] for c in valid)
    assert d["chosen_index"] in [c["index"] for c in valid]

    r = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "JSON please"}],
        max_tokens=64,
        seed=2,
        response_format={"type": "json_object"},
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)

    with pytest.raises(openai.BadRequestError) as err:
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
        client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "x"}], response_format=bad
        )
    assert err.value.body["param"] == "response_format"
    assert httpx.get(f"{tiny_server.url}/health").status_code == 200


# ------------------------------------------------------------------ lm-eval

MC_DOCS = [
    {
        "question": "The quick brown fox",
        "choices": [" jumps", " over the lazy dog near the river", " sad"],
        "answer": 0,
    },
    {"question": "I love this wonderful", "choices": [" day", " sunny day and the happy people"], "answer": 1},
    {
        "question": "Best of N sampling",
        "choices": [" picks the highest", " is", " aligns language models"],
        "answer": 2,
    },
    {"question": "Numbers like 1 2 3", "choices": [" 4", " 4 5 6 7 8 9 10 and punctuation"], "answer": 0},
    {"question": "Please explain how a", "choices": [" transformer attends", " fox"], "answer": 1},
    {"question": "Write a short answer.", "choices": [" Keep it concise and clear.", " No."], "answer": 0},
]
GEN_DOCS = [
    {"question": "Q: The quick brown fox\nA:", "answer": " jumps"},
    {"question": "Q: Reinforcement learning from\nA:", "answer": " human feedback"},
    {"question": "Q: Write a short\nA:", "answer": " answer"},
]


def _write_tasks(d) -> None:
    (d / "mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in MC_DOCS))
    (d / "gen.jsonl").write_text("".join(json.dumps(x) + "\n" for x in GEN_DOCS))
    (d / "iama_mc.yaml").write_text(
        "task: iama_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    (d / "iama_gen.yaml").write_text(
        "task: iama_gen\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'gen.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n  temperature: 0\n'
        "metric_list:\n  - metric: exact_match\n"
    )


def _evaluate(model: str, model_args: str, task_dir) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=["iama_mc", "iama_gen"],
        task_manager=TaskManager(include_path=str(task_dir)),
        batch_size=1,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )


def _loglikelihoods(results: dict) -> list[list[float]]:
    return [[float(r[0]) for r in s["filtered_resps"]] for s in results["samples"]["iama_mc"]]


def _generations(results: dict) -> list[str]:
    return [s["filtered_resps"][0] for s in results["samples"]["iama_gen"]]


@pytest.mark.tools
def test_lm_eval_against_the_server_matches_its_hf_backend(tiny_server, model_name, tiny_llama, tmp_path, monkeypatch):
    """lm-eval's ``local-completions`` (token-id and text prompts) against the live server:
    its log-likelihood task gives the same per-choice log-likelihoods and accuracy as lm-eval's
    own ``hf`` backend on the same model and data, and its generate-until task the same text."""
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # what local-completions sends as its bearer token
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _write_tasks(tmp_path)
    hf = _evaluate("hf", f"pretrained={tiny_llama},dtype=float32,device=cpu", tmp_path)
    served_calls = 'iama_requests_total{endpoint="/v1/completions",status="200"}'
    for tokenized in (True, False):
        before = metric(httpx.get(f"{tiny_server.url}/metrics").text, served_calls, missing=0)
        args = (
            f"base_url={tiny_server.url}/v1/completions,model={model_name},tokenizer={tiny_llama},"
            f"tokenizer_backend=huggingface,tokenized_requests={tokenized},num_concurrent=1,max_retries=1"
        )
        served = _evaluate("local-completions", args, tmp_path)
        calls = metric(httpx.get(f"{tiny_server.url}/metrics").text, served_calls, missing=0) - before
        assert calls == sum(len(d["choices"]) for d in MC_DOCS) + len(GEN_DOCS)  # every request went to the server
        for score in ("acc,none", "acc_norm,none"):
            assert served["results"]["iama_mc"][score] == hf["results"]["iama_mc"][score], (tokenized, score)
        got, want = _loglikelihoods(served), _loglikelihoods(hf)
        assert len(got) == len(MC_DOCS)
        for g, w in zip(got, want, strict=True):
            assert g == pytest.approx(w, abs=5e-3) and all(math.isfinite(x) for x in g)
        assert _generations(served) == _generations(hf), tokenized
        assert served["results"]["iama_gen"]["exact_match,none"] == hf["results"]["iama_gen"]["exact_match,none"]
