"""One definition of each API call: method, path, validated body and the response model.

Both clients build their requests here, so :class:`~iama_client.Client` and
:class:`~iama_client.AsyncClient` differ only in how they send a :class:`Call`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from iama_client.models import (
    AlignParams,
    AlignResponse,
    ChatCompletion,
    ChatParams,
    MessagesLike,
    ModelList,
    RewardsList,
)

R = TypeVar("R", bound=BaseModel)

_ALIGN = TypeAdapter(AlignParams)
_CHAT = TypeAdapter(ChatParams)


@dataclass(frozen=True)
class Call(Generic[R]):
    method: str
    path: str
    body: dict[str, Any] | None
    response: type[R]


def _body(adapter: TypeAdapter[Any], params: dict[str, Any], call: str) -> dict[str, Any]:
    """The JSON body for ``params``, or a ``TypeError`` naming the bad argument (as Python's own
    would) before anything goes over the wire."""
    try:
        return adapter.dump_python(adapter.validate_python(params), mode="json", exclude_none=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        raise TypeError(f"{call}(): argument {name!r}: {err['msg']}") from None


def align(prompt: str | None, params: AlignParams) -> Call[AlignResponse]:
    body = _body(_ALIGN, dict(params), "align")
    if prompt is not None:
        body["prompt"] = prompt
    return Call("POST", "/v1/align", body, AlignResponse)


def chat(messages: MessagesLike, params: ChatParams, stream: bool = False) -> Call[ChatCompletion]:
    body = _body(_CHAT, dict(params), "chat")
    body["messages"] = _body(_ALIGN, {"messages": messages}, "chat")["messages"]
    if stream:
        body["stream"] = True
    return Call("POST", "/v1/chat/completions", body, ChatCompletion)


REWARDS: Call[RewardsList] = Call("GET", "/v1/rewards", None, RewardsList)
MODELS: Call[ModelList] = Call("GET", "/v1/models", None, ModelList)
