"""Majority vote (iama.voting): extraction and the plurality rule, pure."""

import math

import pytest

from iama.voting import json_path_answers, plurality, regex_answers, scalar_answers

pytestmark = pytest.mark.inprocess


def test_the_most_frequent_answer_wins_and_its_best_candidate_is_returned():
    answers = ["4", "5", "4", None, "7"]
    v = plurality(answers, [0.1, 0.9, 0.3, 2.0, 0.5])
    assert (v.chosen, v.answer, v.counts) == (2, "4", {"4": 2.0, "5": 1.0, "7": 1.0})
    # a tie between answers goes to the one whose best candidate scores higher
    v = plurality(["a", "b", "a", "b"], [0.0, 0.2, 0.1, 0.0])
    assert (v.chosen, v.answer) == (1, "b")
    # weighted votes: one candidate with most of the weight outvotes two
    v = plurality(["a", "b", "a"], [0.0, 0.0, 0.0], weights=[0.1, 0.8, 0.1])
    assert v.answer == "b" and v.counts == {"b": 0.8, "a": pytest.approx(0.2)}
    # a candidate that may not be chosen (NaN score) does not vote
    assert plurality(["a", "b", "b"], [0.0, math.nan, math.nan]).answer == "a"
    # no answer at all: the best score, and the response says no answer
    v = plurality([None, None], [0.2, 0.5])
    assert (v.chosen, v.answer, v.counts) == (1, None, {})
    with pytest.raises(ValueError, match="one per candidate"):
        plurality(["a"], [0.0, 1.0])


def test_answers_come_from_a_regex_a_json_path_or_a_scalar():
    texts = ["The answer is 42.", "I'd say 41 or 42", "no idea"]
    assert regex_answers(texts, r"\d+") == ["42", "41", None]
    assert regex_answers(texts, r"answer is (\d+)") == ["42", None, None]
    js = ['{"a": {"b": [1, "x"]}}', '{"a": {"b": [2]}}', "not json", '{"a": 3}']
    assert json_path_answers(js, "a.b.1") == ["x", None, None, None]
    assert json_path_answers(js, "a.b") == ['[1, "x"]', "[2]", None, None]
    assert scalar_answers([42.0, 42, math.nan, 0.5]) == ["42", "42", None, "0.5"]
    # a client's pattern that backtracks exponentially gives no answer instead of holding a worker
    assert regex_answers(["a" * 5000 + "!"], r"(\w+\s?)+$", timeout_s=0.05) == [None]
