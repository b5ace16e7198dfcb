"""Schemathesis over the app's own OpenAPI schema: every operation, valid and invalid
inputs generated from the schema, as a merchant with objects in the mirror (so that
authenticated paths get past the auth check); no answer may be a server error.

Bounded for CI (a few dozen examples per operation and mode, SQLite only). More:
CHAINBILL_SCHEMATHESIS_EXAMPLES=500."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from sqlalchemy import Engine

from tests.api.conftest import bearer
from tests.offchain.indexer.helpers import Mirror

EXAMPLES = int(os.environ.get("CHAINBILL_SCHEMATHESIS_EXAMPLES", "25"))


def test_no_operation_answers_with_a_server_error(
    client: TestClient,
    engine: Engine,
    mirror: Mirror,
    merchant_key: str,
    issue: Callable[..., bytes],
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("one database is enough to explore the schema (CI budget)")
    issue()
    subscribe(create_plan())
    mirror.sync()
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    auth = bearer(merchant_key)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def explore(case: Any) -> None:
                response = case.call(headers=auth)
                case.validate_response(response, checks=[not_a_server_error])

            try:
                explore()
            except Unsatisfiable:
                continue  # no invalid input to make: the operation takes no parameters
            except (AssertionError, FailureGroup) as exc:
                failures.append(
                    f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}"
                )
    assert operations >= 10, "the schema lists the gateway's operations"
    assert not failures, "\n\n".join(failures)
