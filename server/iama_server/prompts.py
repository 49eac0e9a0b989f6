"""A request's prompt as the engine and the rewards see it: token ids (a chat template applied to
messages, or the raw text, or ids given as such) and the prompt rewards score against (the
conversation, or the text). Every 4xx about a prompt is raised here, naming the field."""

from __future__ import annotations

from iama.rewards import Prompt
from iama_server.engine import GenerationEngine
from iama_server.errors import APIError, ErrorCode
from iama_server.schemas import ChatMessage
from iama_server.settings import ServerSettings


class PromptEncoder:
    def __init__(self, engine: GenerationEngine, settings: ServerSettings) -> None:
        self.engine, self.settings = engine, settings

    def encode_ids(self, ids: list[int]) -> tuple[list[int], Prompt]:
        """A prompt given as token ids (evaluation harnesses send these): checked against the
        vocabulary; rewards see its decoded text."""
        vocab = self.engine.vocab_size
        bad = next((t for t in ids if t >= vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the model's vocabulary (size {vocab})", "prompt")
        self.check_length(len(ids), "prompt")
        return list(ids), self.engine.decode(ids)

    def check_length(self, n: int, param: str) -> None:
        if n > self.settings.max_prompt_tokens:
            raise APIError(
                400,
                f"{param} is {n} tokens; the limit is {self.settings.max_prompt_tokens}",
                param,
                ErrorCode.PROMPT_TOO_LONG,
            )

    def encode(self, prompt: str | None, messages: list[ChatMessage] | None, raw: bool) -> tuple[list[int], Prompt]:
        """Token ids, and the prompt as rewards see it (the conversation, or the prompt)."""
        text: Prompt
        if messages is not None:
            if not self.engine.has_chat_template():
                raise APIError(400, "this model has no chat template; send 'prompt'", "messages")
            msgs = [{"role": m.role, "content": m.content} for m in messages]
            ids, text, param = self.engine.encode_chat(msgs), msgs, "messages"
        else:
            assert prompt is not None  # the schemas require exactly one of prompt / messages
            if not prompt:
                raise APIError(400, "prompt must not be empty", "prompt")
            if raw or not self.engine.has_chat_template():
                ids = self.engine.encode_text(prompt)
            else:
                ids = self.engine.encode_chat([{"role": "user", "content": prompt}])
            text, param = prompt, "prompt"
        self.check_length(len(ids), param)
        return ids, text
