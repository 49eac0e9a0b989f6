"""Reward functions, registry, normalisation and weight validation."""

import math

import numpy as np
import pytest

from iama.rewards import (
    DEFAULT_REWARDS,
    RewardSet,
    RewardSpec,
    UnknownRewardError,
    WeightError,
    available_rewards,
    completion_text,
    create_reward,
    fit_stats,
    normalize,
    normalize_scores,
    reward_prompt,
    validate_weights,
    weighted_score,
    weighted_sum,
)

pytestmark = pytest.mark.inprocess

PROMPTS = ["How was your day?"] * 3


def test_registry_lists_builtins_and_rejects_unknown():
    names = available_rewards()
    for n in ("sentiment", "length", "conciseness", "readability", "no_profanity", "relevance"):
        assert names.get(n)
    with pytest.raises(UnknownRewardError, match=r"unknown reward 'nope'.*sentiment"):
        create_reward("nope")
    with pytest.raises(ValueError, match="bad parameters for reward 'length'"):
        create_reward("length", bogus=1)
    with pytest.raises(ValueError, match="max_length"):
        create_reward("length", max_length=0)


def test_sentiment_polarity():
    comps = ["I love it, wonderful and happy!", "It was a terrible, awful day.", "The table."]
    pos = create_reward("sentiment").score(PROMPTS, comps)
    neg = create_reward("negative_sentiment").score(PROMPTS, comps)
    assert pos[0] > 0.5 > 0 > pos[1]
    assert pos[2] == 0.0
    assert neg == pytest.approx(-pos)


def test_length_peaks_at_target_in_words_and_tokens(tiny_llama):
    r = create_reward("length", target=3, max_length=10)
    s = r.score(PROMPTS, ["one two three", "one", "one two three four five six seven"])
    assert s[0] == 0.0
    assert s[1] == pytest.approx(-(((1 - 3) / 10) ** 2))
    assert s[2] == pytest.approx(-(((7 - 3) / 10) ** 2))
    rt = create_reward("length", target=5, max_length=100, unit="tokens", tokenizer=str(tiny_llama))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    text = "The quick brown fox jumps"
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert rt.score(["p"], [text])[0] == pytest.approx(-(((n - 5) / 100) ** 2))
    with pytest.raises(ValueError, match="tokenizer"):
        create_reward("length", unit="tokens")


def test_conciseness_readability_profanity():
    c = create_reward("conciseness", scale=10).score(PROMPTS, ["", "a b c d e", " ".join(["w"] * 50)])
    assert c[0] == 1.0 and c[0] > c[1] > c[2] > 0
    rd = create_reward("readability").score(
        PROMPTS,
        [
            "The cat sat on the mat. It was fun.",
            "Notwithstanding multitudinous epistemological considerations, institutionalized "
            "phenomenological hermeneutics necessitates comprehensive reconceptualization.",
            "   ",
        ],
    )
    assert 0 <= rd[1] < rd[0] <= 1 and rd[2] == 0.0
    pr = create_reward("no_profanity").score(PROMPTS, ["Have a lovely day.", "fuck you, shit head", "ok"])
    assert pr[0] > 0.8 and pr[1] < 0.2


def test_relevance_prefers_on_topic_answers():
    r = create_reward("relevance")
    s = r.score(["What is the capital of France?"] * 2, ["Paris is the capital of France.", "I like pancakes."])
    assert s[0] > s[1] + 0.2


def test_relevance_encodes_each_distinct_prompt_once():
    from iama.rewards import rules

    st = rules._minilm(None)
    encoded: list[int] = []
    real = st.encode

    def counting(texts, **kw):
        encoded.append(len(texts))
        return real(texts, **kw)

    prompts = ["What is the capital of France?"] * 3 + ["Name a fruit."]
    comps = ["Paris.", "Pancakes.", "Lyon is in France.", "An apple."]
    r = create_reward("relevance")
    st.encode = counting
    try:
        together = r.score(prompts, comps)
    finally:
        st.encode = real
    assert encoded == [2, 4]  # the two distinct prompts, then the four completions
    alone = [r.score([p], [c])[0] for p, c in zip(prompts, comps, strict=True)]
    assert together == pytest.approx(alone, abs=1e-6)


def test_hf_reward_model_from_local_path(tiny_classifier):
    rm = create_reward(f"hf:{tiny_classifier}", label="POSITIVE", batch_size=2, pair=False)
    comps = ["good", "bad day", "the quick brown fox", "happy people"]
    s = rm.score(["q"] * 4, comps)
    assert s.shape == (4,) and np.all(np.isfinite(s))
    # batching does not change results and the label index is the POSITIVE logit
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    with torch.no_grad():
        ref = model(**tok(comps[:1], return_tensors="pt")).logits[0, 1].item()
    assert s[0] == pytest.approx(ref, abs=1e-4)
    paired = create_reward(f"hf:{tiny_classifier}", probability=True).score(["q"] * 4, comps)
    assert np.all((paired > 0) & (paired < 1))
    with pytest.raises(ValueError, match="label"):
        create_reward(f"hf:{tiny_classifier}", label="NEUTRAL")
    with pytest.raises(OSError):
        create_reward("hf:/nonexistent/reward-model")


def test_normalization_and_weighted_score():
    st = fit_stats([1.0, 2.0, 3.0])
    assert st.mean == 2.0 and st.std == pytest.approx(math.sqrt(2 / 3)) and st.count == 3
    assert fit_stats([5.0, 5.0]).std == 1.0
    assert normalize([2.0], st) == pytest.approx([0.0])
    with pytest.raises(ValueError):
        fit_stats([])
    scores = {"a": np.array([1.0, 3.0]), "b": np.array([10.0, 0.0])}
    w = validate_weights({"a": 1.0, "b": 0.5}, ["a", "b"])
    assert weighted_score(scores, w) == pytest.approx([6.0, 3.0])
    assert weighted_score(scores, w, {"a": st}) == pytest.approx([5 - 1 / st.std, 1 / st.std])
    normalized = normalize_scores(scores, {"a": st})
    assert normalized["a"] == pytest.approx([-1 / st.std, 1 / st.std]) and normalized["b"] == pytest.approx([10, 0])
    assert weighted_sum(normalized, w) == pytest.approx(weighted_score(scores, w, {"a": st}))
    # only the weighted rewards need a score: weighted_score ignores the rest
    assert weighted_score({**scores, "c": np.array([np.nan, np.nan])}, w) == pytest.approx([6.0, 3.0])


def test_the_prompt_a_reward_sees_is_the_last_user_turn():
    conv = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second"},
    ]
    assert reward_prompt(conv) == "second"
    assert reward_prompt("plain text") == "plain text"
    assert reward_prompt([{"role": "system", "content": "only"}]) == "only"
    assert reward_prompt([]) == ""
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    assert completion_text("text") == "text"


@pytest.mark.parametrize(
    ("weights", "field", "msg"),
    [
        ({"nope": 1.0}, "reward_weights.nope", "unknown reward"),
        ({"a": -1.0}, "reward_weights.a", ">= 0"),
        ({"a": float("nan")}, "reward_weights.a", "finite"),
        ({"a": "x"}, "reward_weights.a", "number"),
        ({"a": 0.0, "b": 0.0}, "reward_weights", "all be zero"),
        ({}, "reward_weights", "at least one"),
    ],
)
def test_weight_validation_names_the_field(weights, field, msg):
    with pytest.raises(WeightError, match=msg) as err:
        validate_weights(weights, ["a", "b"])
    assert err.value.field == field


def test_reward_set_with_named_instances_and_stats():
    rs = RewardSet({"short": {"type": "length", "target": 2, "max_length": 10}, "long": "length", "pos": "sentiment"})
    assert rs.specs["short"].params == {"target": 2, "max_length": 10}
    scores = rs.score(["p", "p"], ["a b", "a b c d e f"])
    assert scores["short"][0] == 0.0 and scores["short"][1] < 0
    rs2 = rs.with_stats({"short": fit_stats(scores["short"])})
    assert rs2.functions is rs.functions and "short" in rs2.stats
    combined = rs2.combine(scores, {"short": 1.0})
    assert combined == pytest.approx([1.0, -1.0])
    with pytest.raises(WeightError):
        rs.combine(scores, {"pos": -1})
    with pytest.raises(ValueError, match="reward 'x'"):
        RewardSet({"x": "does_not_exist"})
    assert RewardSpec.model_validate({"type": "length", "target": 3}).params == {"target": 3}
    assert set(RewardSet(DEFAULT_REWARDS).names) >= {"sentiment", "length", "no_profanity"}


def test_remote_tei_request_and_label_reading_on_a_recorded_exchange():
    """TEI's /predict shape (no TEI server installs here: vLLM's is tested live in
    test_remote_reward.py). Checks what is sent (pairs, left truncation) and which score is read."""
    import json as _json

    import httpx

    sent: list[dict] = []

    def tei(request: httpx.Request) -> httpx.Response:
        body = _json.loads(request.content)
        sent.append(body)
        answer = [[{"label": "NEG", "score": 0.25}, {"label": "POS", "score": 0.75}] for _ in body["inputs"]]
        return httpx.Response(200, json=answer)

    rm = create_reward("remote:tei.local:8080", api="tei", label="POS", probability=True, batch_size=2)
    rm._client = httpx.Client(transport=httpx.MockTransport(tei), base_url=rm.url)
    scores = rm.score(["q1", "q2", "q3"], ["a", "b", "c"])
    assert scores.tolist() == [0.75, 0.75, 0.75]
    assert [len(b["inputs"]) for b in sent] == [2, 1]  # batched
    assert sent[0]["inputs"][0] == ["q1", "a"] and sent[0]["truncation_direction"] == "Left"
    assert sent[0]["raw_scores"] is False
    assert rm.name == "remote:http://tei.local:8080"

    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "model is loading"})

    rm._client = httpx.Client(transport=httpx.MockTransport(failing), base_url=rm.url)
    with pytest.raises(RuntimeError, match="answered 503"):
        rm.score(["q"], ["a"])


def test_sentiment_rewards_read_one_scalar_so_the_probe_can_predict_them():
    """sentiment, negative_sentiment and sentiment_target all depend on a completion only through
    VADER's compound score: score == of_scalar(scalar), one shared scalar name."""
    from iama.rewards import ScalarReward
    from iama_eval.prediction import shared_scalar

    rs = RewardSet(
        {
            "pos": "sentiment",
            "neg": "negative_sentiment",
            "warm": {"type": "sentiment_target", "target": 0.8, "scale": 0.5},
            "curt": {"type": "sentiment_target", "target": -0.2, "scale": 0.5},
        }
    )
    texts = ["What a wonderful, lovely day!", "This is awful and I hate it.", "The train leaves at nine."]
    scores = rs.score(["p"] * 3, texts)
    for name in rs.names:
        fn = rs.functions[name]
        assert isinstance(fn, ScalarReward)
        assert fn.of_scalar(fn.scalar(texts)) == pytest.approx(scores[name])
    c = rs.functions["pos"].scalar(texts)
    assert c[0] > 0.5 > -0.5 > c[1] and scores["neg"] == pytest.approx(-scores["pos"])
    assert scores["warm"] == pytest.approx(-(((c - 0.8) / 0.5) ** 2))
    # two tones conflict without cancelling: their weighted sum still varies with the text
    assert np.ptp(scores["warm"] + scores["curt"]) > 0 and np.ptp(scores["pos"] + scores["neg"]) == 0
    assert shared_scalar(rs, ["warm", "curt"]) == shared_scalar(rs, ["pos", "neg"]) == "VADER compound"
    with pytest.raises(ValueError, match="target"):
        RewardSet({"x": {"type": "sentiment_target", "target": 2.0}})
