"""The OpenAPI document states the rules the server enforces that JSON Schema can express, so a
client (or a fuzzer) that follows the schema is not refused: lengths, and rules across fields.
Each body below is refused by the server; the schema must refuse it too, and accept its fix."""

from __future__ import annotations

import jsonschema
import pytest
from fake_engine import FakeEngine
from in_process import settings

from iama_server.app import create_app

pytestmark = pytest.mark.inprocess

SPEC = create_app(settings(), engine=FakeEngine()).openapi()


def _validator(component: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_inline_refs(SPEC["components"]["schemas"][component]))


def _inline_refs(node: object) -> object:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(SPEC["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
        return {k: _inline_refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v) for v in node]
    return node


MSG = [{"role": "user", "content": "hi"}]
CASES = [  # (component, refused body, its fix)
    ("AlignRequest", {"messages": []}, {"messages": MSG}),
    ("AlignRequest", {"prompt": "a", "messages": MSG}, {"prompt": "a"}),
    ("AlignRequest", {}, {"prompt": "a"}),
    ("AlignRequest", {"prompt": ""}, {"prompt": "a"}),
    ("AlignRequest", {"prompt": "a", "target_score": 1.0}, {"prompt": "a", "budget": "auto", "target_score": 1.0}),
    ("AlignRequest", {"prompt": "a", "budget": "auto"}, {"prompt": "a", "budget": "auto", "target_score": 1.0}),
    (
        "AlignRequest",
        {"prompt": "a", "budget": "auto", "target_score": 1.0, "early_rejection": {}},
        {"prompt": "a", "budget": 4, "early_rejection": {}},
    ),
    ("CompletionRequest", {"prompt": []}, {"prompt": ["a"]}),
    ("CompletionRequest", {"prompt": [""]}, {"prompt": "a"}),
    ("CompletionRequest", {"prompt": ["a", "b"], "stream": True}, {"prompt": ["a", "b"]}),
    ("CompletionRequest", {"prompt": "a", "max_budget": 4}, {"prompt": "a", "best_of": "auto", "target_score": 0.5}),
    (
        "ChatCompletionRequest",
        {"messages": MSG, "top_logprobs": 2},
        {"messages": MSG, "top_logprobs": 2, "logprobs": True},
    ),
    ("ChatCompletionRequest", {"messages": MSG, "n": 2, "stream": True}, {"messages": MSG, "stream": True}),
    ("ResponseFormat", {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"schema": {}}}),
    ("ResponseFormat", {"type": "text", "json_schema": {"schema": {}}}, {"type": "text"}),
]


@pytest.mark.parametrize(("component", "refused", "fixed"), CASES)
def test_the_schema_refuses_what_the_server_refuses(component, refused, fixed):
    validator = _validator(component)
    assert not validator.is_valid(refused), refused
    assert validator.is_valid(fixed), list(validator.iter_errors(fixed))


def test_unsupported_openai_fields_are_declared_once_and_refused_by_name():
    from iama_server.schemas import UNSUPPORTED

    assert {"tools", "logit_bias", "service_tier"} <= set(UNSUPPORTED) and len(UNSUPPORTED) == len(set(UNSUPPORTED))
    chat = SPEC["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert all("not supported" in chat[name]["description"] for name in UNSUPPORTED)


def test_the_schema_accepts_what_the_server_accepts():
    """Bodies the server takes, including OpenAI's text parts for a message's content and the
    four prompt shapes, validate against the document."""
    from iama_server.schemas import ChatCompletionRequest, CompletionRequest

    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "logprobs": True}
    prompts = [{"prompt": p} for p in ("a", ["a", "b"], [1, 2], [[1, 2], "b"])]
    for model, body in [(ChatCompletionRequest, parts), *((CompletionRequest, p) for p in prompts)]:
        model.model_validate(body)  # the server accepts it
        validator = _validator(model.__name__)
        assert validator.is_valid(body), list(validator.iter_errors(body))
