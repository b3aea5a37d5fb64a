"""The OpenAPI description and the API agree. schemathesis makes requests from the
description, valid ones and invalid ones, and sends them to the app in-process (its
ASGI transport; an admin token; the simulator as the provider). Every answer is
checked: no 5xx, a documented status, content type, headers and body; a valid request
is not refused, an invalid one is not accepted.

A longer run: `COMPOUND_FUZZ_EXAMPLES=1000 ./dev test tests/test_openapi_fuzz.py`
(docs/deploy.md, "Fuzzing the API")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction
from schemathesis.core.result import Err, Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance

from compound.api.app import create_app
from compound.core.settings import Settings
from compound.store.db import create_all, make_engine
from compound.store.users import create_token

# Per operation and mode. The suite's run is the same every time (derandomized); a
# longer run asked for by COMPOUND_FUZZ_EXAMPLES draws new examples each time.
EXAMPLES = int(os.environ.get("COMPOUND_FUZZ_EXAMPLES", "10"))
DERANDOMIZE = "COMPOUND_FUZZ_EXAMPLES" not in os.environ



@pytest.fixture
def fuzzed(sim_settings: Settings, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    engine = make_engine(url)
    create_all(engine)
    token = create_token(engine, "fuzzer", ["admin"])[1]
    engine.dispose()
    # rate limit off: the fuzzer submits faster than any person
    app = create_app(sim_settings.model_copy(update={
        "database_url": url, "rate_limit_per_minute": 0, "executor_process": False}))
    try:
        yield app, token
    finally:
        asgi.shutdown_lifespans()  # the app's lifespan, which schemathesis started


def _plan_refused(case: schemathesis.Case[Any], response: Any) -> bool:
    """A plan that fits the description but is not a DAG the planner accepts (an index
    out of range, a cycle, too many subtasks): the documented 422 `plan_invalid`,
    which JSON Schema cannot express."""
    if response.status_code != 422 or not isinstance(case.body, dict) or "plan" not in case.body:
        return False
    return bool(response.json()["error"]["code"] == "plan_invalid")


def _mutates_auth(case: schemathesis.Case[Any]) -> bool:
    """Is the Authorization header what a negative case made invalid (left out, say)?"""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    if getattr(data, "parameter", None) in ("Authorization", "authorization"):
        return True
    for mutation in getattr(data, "mutations", None) or ():
        if mutation.parameter_location.value == "header" and "authorization" in str(mutation.to_dict()).lower():
            return True
    return False


def test_the_api_answers_what_its_description_says(fuzzed: tuple[Any, str]) -> None:
    app, token = fuzzed
    auth = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), [result.err() for result in results if isinstance(result, Err)]
    fuzzed_paths = {op.path for op in operations}
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/costs", "/v1/tasks/{task_id}/events", "/task/compound",
            "/v1/chat/completions", "/v1/models/{model}", "/a2a"} <= fuzzed_paths
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
                      suppress_health_check=list(HealthCheck))
            def check(case: schemathesis.Case[Any]) -> None:
                # the token, unless the invalid part of the request is the Authorization header itself
                response = case.call(headers=None if _mutates_auth(case) else auth)
                excluded: list[CheckFunction] = [positive_data_acceptance] if _plan_refused(case, response) else []
                case.validate_response(response, excluded_checks=excluded, headers=auth)

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid: an operation without inputs
                pass
            except (AssertionError, BaseExceptionGroup) as exc:
                failures.append(f"{op.label} ({mode}): {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
