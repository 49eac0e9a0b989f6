"""Typed sync and async client for the IAMA alignment server."""

from iama_client.client import AsyncClient, Client
from iama_client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    IAMAError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ServerTimeoutError,
    ServiceUnavailableError,
)
from iama_client.models import (
    AlignResponse,
    Candidate,
    ChatCompletion,
    ChatMessage,
    Health,
    ModelList,
    RewardScore,
    RewardsList,
    Usage,
)

__version__ = "0.1.0"
__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AlignResponse",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Candidate",
    "ChatCompletion",
    "ChatMessage",
    "Client",
    "Health",
    "IAMAError",
    "InternalServerError",
    "ModelList",
    "NotFoundError",
    "RateLimitError",
    "RewardScore",
    "RewardsList",
    "ServerTimeoutError",
    "ServiceUnavailableError",
    "Usage",
]
