"""One definition of each API call: method, path, validated body and the response model.

Both clients build their requests here, so :class:`~iama_client.Client` and
:class:`~iama_client.AsyncClient` differ only in how they send a :class:`Call`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter, ValidationError

from iama_client.models import (
    AdapterDeleted,
    AlignParams,
    AlignResponse,
    ChatCompletion,
    ChatParams,
    MessagesLike,
    ModelInfo,
    ModelList,
    RewardsList,
    UsageGroup,
    UsageReport,
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
    params: dict[str, str] | None = None  # the query string; None values are left out


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


MODELS: Call[ModelList] = Call("GET", "/v1/models", None, ModelList)


def rewards(model: str | None) -> Call[RewardsList]:
    return Call("GET", "/v1/rewards", None, RewardsList, _query(model=model))


def load_adapter(name: str, path: str) -> Call[ModelInfo]:
    return Call("POST", "/v1/adapters", {"name": name, "path": path}, ModelInfo)


def unload_adapter(name: str) -> Call[AdapterDeleted]:
    # quoted whole: a name with "/" must not reach another route
    return Call("DELETE", f"/v1/adapters/{quote(name, safe='')}", None, AdapterDeleted)


def usage(
    key: str | None, since: datetime | str | None, until: datetime | str | None, group_by: UsageGroup | None
) -> Call[UsageReport]:
    return Call(
        "GET",
        "/v1/usage",
        None,
        UsageReport,
        _query(key=key, since=_instant(since, "since"), until=_instant(until, "until"), group_by=group_by),
    )


def _instant(value: datetime | str | None, name: str) -> str | None:
    """ISO 8601 for the server. A naive ``datetime`` is refused here, as the server would refuse
    it: guessing a zone would shift every total by the client's UTC offset."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError(f"usage(): argument {name!r}: give a time zone (e.g. datetime.now(timezone.utc))")
        return value.isoformat()
    return value


def _query(**params: str | None) -> dict[str, str] | None:
    given = {k: v for k, v in params.items() if v is not None}
    return given or None
