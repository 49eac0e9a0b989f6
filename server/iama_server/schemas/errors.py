"""The error body every failure leaves as (OpenAI's shape). Declarative only: the one place that
builds it is ``iama_server.errors``."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
