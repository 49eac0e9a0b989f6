"""``remote:<url>``: a reward model served by its own engine, scored over HTTP.

A reward model in the API process competes with vLLM for the GPU and for the process's one
Python thread; served by an engine made for it, it gets its own memory share, continuous
batching and prefix caching (partial texts of early rejection share their prefixes). Two
scoring servers are spoken:

* ``api: vllm`` (default): vLLM's pooling runner, ``vllm serve RM --runner pooling``, endpoint
  ``/classify``. ``format: text`` sends each candidate as one input (``pair`` false: the
  completion alone; else the prompt, a blank line and the completion), batched ``batch_size``
  per request; ``format: chat`` sends each candidate as a conversation (the prompt's turns plus
  the completion as the assistant's) and the server applies the RM's own chat template, one
  request per candidate on one kept-alive connection.
* ``api: tei``: Hugging Face text-embeddings-inference, endpoint ``/predict`` (text pairs when
  ``pair``), batched.

Long inputs are truncated on the **left** to ``max_length`` tokens (vLLM's
``truncation_side: left``, TEI's ``truncation_direction: Left``): the end of a long answer, the
part a reward model judges last, is always scored; the start of the prompt goes first.
``probability`` reads the label's probability (the model's activation), else its raw logit.
A server that is down, slow or answering errors fails the scoring with one line naming it (the
server's warm-up then fails start-up the same way).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from iama._arrays import FloatArray
from iama.rewards.base import register_prefix
from iama.rewards.conversation import Prompt, as_conversation, flatten


class RemoteRewardError(RuntimeError):
    """The scoring server could not be used: unreachable, too slow, or it answered an error."""


@dataclass
class RemoteRewardModel:
    url: str
    api: Literal["vllm", "tei"] = "vllm"
    model: str | None = None  # vLLM: the served model name; default: the server's first model
    label: int | str | None = None  # vLLM: an index (default the last label); TEI: an index or a name
    pair: bool = True
    format: Literal["text", "chat"] = "text"
    probability: bool = False
    batch_size: int = 64
    max_length: int = 512
    timeout_s: float = 30.0
    api_key: str | None = None
    name: str = field(init=False)
    description: str = field(init=False)
    conversational: bool = field(default=True, init=False)  # RewardSet passes chat turns
    judges_partial_text: bool = field(default=True, init=False)
    _client: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            self.url = f"http://{self.url}"
        self.name = f"remote:{self.url}"
        self.description = f"reward model served by a scoring server ({self.api}) at {self.url}"
        if self.api not in ("vllm", "tei"):
            raise ValueError(f"api must be 'vllm' or 'tei', got {self.api!r}")
        if self.format not in ("text", "chat"):
            raise ValueError(f"format must be 'text' or 'chat', got {self.format!r}")
        if self.format == "chat" and self.api != "vllm":
            raise ValueError("format 'chat' needs api 'vllm' (the server applies the RM's chat template)")
        if self.api == "vllm" and isinstance(self.label, str):
            raise ValueError("with api 'vllm' give label as an index (vLLM's /classify returns no label names)")
        if self.batch_size < 1 or self.max_length < 1 or self.timeout_s <= 0:
            raise ValueError("batch_size and max_length must be >= 1 and timeout_s > 0")

    @property
    def params(self) -> dict[str, Any]:
        return {
            "api": self.api,
            "model": self.model,
            "label": self.label,
            "pair": self.pair,
            "format": self.format,
            "probability": self.probability,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "timeout_s": self.timeout_s,
        }

    # ------------------------------------------------------------------ HTTP
    def _http(self) -> Any:
        import httpx

        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.Client(base_url=self.url, timeout=self.timeout_s, headers=headers)
        return self._client

    def post(self, path: str, body: dict[str, Any]) -> Any:
        import httpx

        where = f"{self.url}{path}"
        try:
            r = self._http().request("POST", path, json=body)
        except httpx.TimeoutException:
            raise RemoteRewardError(f"scoring server {where} did not answer within {self.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise RemoteRewardError(f"scoring server {where} is unreachable: {exc}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("error", {}).get("message") or r.text
            except (ValueError, AttributeError):
                detail = r.text
            raise RemoteRewardError(f"scoring server {where} answered {r.status_code}: {str(detail)[:300]}")
        return r.json()

    def served_model(self) -> str:
        if self.model is None:
            import httpx

            try:
                models = self._http().get("/v1/models").json()["data"]
                self.model = str(models[0]["id"])
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                raise RemoteRewardError(f"scoring server {self.url}/v1/models: no model to use ({exc})") from None
        return self.model

    # ------------------------------------------------------------------ scoring
    def _text(self, prompt: Prompt, completion: str) -> str:
        return f"{flatten(prompt)}\n\n{completion}" if self.pair else completion

    def _pick(self, values: Sequence[float], labels: Sequence[str] | None = None) -> float:
        if self.label is None:
            return float(values[-1])
        if isinstance(self.label, int):
            return float(values[self.label])
        assert labels is not None
        lower = [x.lower() for x in labels]
        if self.label.lower() not in lower:
            raise RemoteRewardError(f"label {self.label!r} not among the server's labels {list(labels)}")
        return float(values[lower.index(self.label.lower())])

    def _vllm(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        common = {
            "model": self.served_model(),
            "truncate_prompt_tokens": self.max_length,
            "truncation_side": "left",
            "use_activation": self.probability,
        }
        if self.format == "chat":
            out = []
            for p, c in zip(prompts, completions, strict=True):
                messages = [*as_conversation(p), {"role": "assistant", "content": c}]
                (item,) = self.post("/classify", {**common, "messages": messages})["data"]
                out.append(self._pick(item["probs"]))
            return out
        out = []
        for s in range(0, len(completions), self.batch_size):
            texts = [
                self._text(p, c)
                for p, c in zip(prompts[s : s + self.batch_size], completions[s : s + self.batch_size], strict=True)
            ]
            data = sorted(self.post("/classify", {**common, "input": texts})["data"], key=lambda d: d["index"])
            out += [self._pick(d["probs"]) for d in data]
        return out

    def _tei(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        out = []
        for s in range(0, len(completions), self.batch_size):
            ps, cs = prompts[s : s + self.batch_size], completions[s : s + self.batch_size]
            inputs: list[Any] = [[flatten(p), c] for p, c in zip(ps, cs, strict=True)] if self.pair else list(cs)
            body = {
                "inputs": inputs,
                "truncate": True,
                "truncation_direction": "Left",
                "raw_scores": not self.probability,
            }
            for preds in self.post("/predict", body):
                by_label = sorted(preds, key=lambda x: str(x["label"]))  # TEI sorts by score: fix an order
                labels = [str(x["label"]) for x in by_label]
                out.append(self._pick([float(x["score"]) for x in by_label], labels))
        return out

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> FloatArray:
        if len(prompts) != len(completions):
            raise ValueError("need one prompt per completion")
        if not completions:
            return np.zeros(0)
        with self._lock:  # one httpx client, shared by the server's scoring thread and warm-up
            values = self._vllm(prompts, completions) if self.api == "vllm" else self._tei(prompts, completions)
        return np.asarray(values, dtype=np.float64)


@register_prefix("remote")
def _remote_factory(url: str, **params: Any) -> RemoteRewardModel:
    return RemoteRewardModel(url=url, **params)
