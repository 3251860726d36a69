"""schemathesis against the live OpenAPI document of the running ingest (`GET /openapi.json`),
with its checks (call_and_validate without a checks list runs them all; two are left out, below),
on data that matches the document and on data that does not (positive and negative generation)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline, make_pipeline
from tests.ingest.contract_strategies import examples, fuzz_settings

pytestmark = [pytest.mark.kafka]


@pytest.fixture(scope="module")
def ingest(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    running = make_pipeline(kafka, tmp_path_factory.mktemp("openapi"))
    running.env |= {"COSNAP_RATE_LIMIT_EVENTS_PER_S": "0"}
    running.start("ingest")
    yield running
    running.stop()


# Every check but two, which hold the API to rules its contract does not have:
# - positive_data_acceptance wants every event the document allows accepted, and the contract has
#   rules JSON Schema cannot state (a timestamp within 30 days of now, a conversion's user_id or
#   anonymous_id, an amount's nine decimals). That what the contract accepts is accepted is
#   test_contract_fuzz.py's (its valid events are drawn from the same schemas).
# - negative_data_rejection wants a 4xx for any body the document does not allow, and a batch
#   with invalid items is answered 202 for its valid ones (README: a bad item never costs its
#   neighbours); the rejections are checked against the response schema here, and item by item
#   in test_contract_fuzz.py.
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"enabled": False},
            "negative_data_rejection": {"enabled": False},
        }
    }
)


# Cases per operation: the events API most (its items have thousands more in-process, in
# test_contract_fuzz.py); each other door's bodies have a property test of their own beside this
# one (test_segment.py, test_guide_metrics.py, test_sentry_hooks.py), and the guide's second path
# is the same handler. Each case is a real request to the running ingest: this file was the
# suite's costliest in CPU (~58 CPU-s with twice these budgets).
BUDGETS = (
    {"POST /v1/events": 200, "POST /v1/compat/analytics/metrics": 25}
    | {
        f"POST /v1/{door}": 50
        for door in ("track", "page", "screen", "identify", "group", "alias", "batch", "import")
    }
    | {"POST /api/analytics/metrics": 50, "POST /v1/integrations/sentry/{project}": 50}
)


def fuzz(ingest: Pipeline, operation: Any, mode: GenerationMode, budget: int) -> int:
    """Run `budget` generated cases of one operation through every check; return how many ran."""
    tried = 0

    @fuzz_settings(budget)
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        nonlocal tried
        tried += 1
        case.call_and_validate(
            base_url=ingest.ingest_url, headers={"Authorization": f"Bearer {ingest.write_key}"}
        )

    call()
    return tried


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_operation_with_every_check(ingest: Pipeline, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{ingest.ingest_url}/openapi.json", config=CONFIG)
    tried = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # GET /health and the others take no input that could be made invalid
        tried[operation.label] = fuzz(ingest, operation, mode, BUDGETS.get(operation.label, 20))
    assert tried["POST /v1/events"] >= examples(BUDGETS["POST /v1/events"]) // 2, tried
    assert set(BUDGETS) <= set(tried), tried  # no door left out of the document
