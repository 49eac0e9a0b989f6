"""Property-based fuzzing of the published OpenAPI schema (schemathesis) against the real app
in-process with the fake engine: no answer may be a 5xx, and every answer must match what the
schema documents (status code, content type, body shape), bad input included.

Bounded: a fixed number of examples per operation, derandomised, so its cost and its verdict
do not depend on the machine.
"""

from __future__ import annotations

import pytest
import schemathesis
from fake_engine import FakeEngine
from hypothesis import HealthCheck, Phase, settings
from in_process import API_KEY
from in_process import settings as server_settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from iama_server.app import create_app

pytestmark = pytest.mark.inprocess

APP = create_app(server_settings(request_timeout_s=30), engine=FakeEngine())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
# Valid-by-schema bodies and bodies that break it: both must get a documented, non-5xx answer.
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def _wait_until_ready() -> None:
    from schemathesis.python import asgi

    with asgi.get_client(APP) as client:
        for _ in range(3000):
            if client.get("http://testserver/health").status_code == 200:
                return
            import time

            time.sleep(0.01)
    raise AssertionError("the app never became ready")


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_every_answer_matches_the_schema(case):
    _wait_until_ready()
    case.call_and_validate(headers=HEADERS, checks=CHECKS)


def test_the_schema_documents_the_real_400_shape_and_no_422():
    spec = APP.openapi()
    for path, ops in spec["paths"].items():
        for op in ops.values():
            assert "422" not in op["responses"], path
    align = spec["paths"]["/v1/align"]["post"]["responses"]
    assert align["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    error = spec["components"]["schemas"]["ErrorBody"]
    assert set(error["properties"]) == {"message", "type", "param", "code"}
