"""The Segment mapping file (schemas/segment.py): the default loads and says what the reference
says; names match in the pipeline's spelling; a file that maps one event twice, names no letter
or has an unknown currency is refused with its reason; the ingest reads the file it is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.segment import SegmentMappingError, load_segment_mapping, segment_name


@pytest.mark.parametrize(
    ("sent", "name"),
    [
        ("Order Completed", "order_completed"),
        ("order completed", "order_completed"),
        ("  Style  Selected! ", "style_selected"),
        ("api.latency/p99", "api.latency/p99"),
        ("Commande passée", "commande_pass_e"),
        ("--!!", ""),
    ],
)
def test_segment_names_are_written_as_the_pipelines(sent: str, name: str) -> None:
    assert segment_name(sent) == name


def test_the_default_mapping() -> None:
    mapping = load_segment_mapping()
    assert mapping.source == "segment"
    assert mapping.revenue.properties == ["revenue", "total"]
    assert mapping.revenue.default_currency == "USD"
    assert mapping.funnels["checkout"][0] == "Checkout Started"
    assert mapping.funnels["checkout"][-1] == "Order Completed"
    assert "Payment Info Entered" in mapping.funnels["checkout"]
    assert (mapping.feature.track_action, mapping.feature.page_action) == ("tracked", "viewed")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("funnels: {a: [Signed Up], b: [signed up]}", "is also in funnel a"),
        ("performance: [{event: '!!', metric: m, property: p, unit: ms}]", "has no letter or digit"),
        ("revenue: {default_currency: XYZ}", "is not an ISO 4217 code"),
        ("colour: blue", "Extra inputs are not permitted"),
        ("funnels: [", "while parsing"),
    ],
)
def test_a_bad_mapping_is_refused_with_its_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text(text)
    with pytest.raises(SegmentMappingError, match="mapping.yaml") as refused:
        load_segment_mapping(path)
    assert reason in str(refused.value)
