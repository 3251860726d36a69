"""Alert rules (docs/reference.md, "Alerts"): a YAML file of thresholds on sliding windows of
10-second panes.

A rule matches events (type, name fields, tag filters, a value filter), aggregates the matches of
the last `window` per group (`group_by` tags, always within one project), compares the result
with `threshold`, and moves an alert through `pending -> firing -> resolved`. The shape follows
Prometheus alerting rules (`for`, `keep_firing_for`, labels, annotations) and Sentry metric
alerts (a resolve threshold against flapping, a minimum sample size).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from schemas.errors import CosnapError
from schemas.event_types import EVENT_KINDS
from schemas.events import EventType, TagKey

PANE_S = 10  # the unit of alert windows: every window is a whole number of panes
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+)([smhd])$")


def _seconds(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 1h, 7d")
    if isinstance(value, int):
        return value
    found = _DURATION.match(str(value).strip())
    if found is None:
        raise ValueError(f"{value!r} is not a duration like 30s, 5m, 1h or 7d")
    return int(found[1]) * _UNITS[found[2]]


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[
    int,
    BeforeValidator(_seconds),
    Field(ge=0, description="seconds, or a string like 30s, 5m, 1h, 7d"),
    PlainSerializer(format_duration, return_type=str),
]
OneOrMany = str | list[str]
Aggregate = Literal["count", "sum", "avg", "min", "max", "p50", "p90", "p95", "p99", "rate", "ratio"]
Comparison = Literal[">", ">=", "<", "<="]
Severity = Literal["critical", "high", "medium", "low", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low", "info")


def _severity(value: Any) -> Any:
    # Rules files and alert records from before there were five severities say "warning".
    return "high" if value == "warning" else value


SeverityName = Annotated[
    Severity,
    BeforeValidator(_severity),
    WithJsonSchema(
        {"enum": [*SEVERITIES, "warning"], "type": "string", "description": "warning = high (older files)"}
    ),
]
# Where an alert goes (docs/reference.md, "Routing"): the receivers of the shipped Alertmanager
# configuration, sinks/notify/alertmanager/alertmanager.yml.
Channel = Literal[
    "slack-critical",
    "slack-high",
    "slack-monitoring",
    "email-oncall",
    "email-team",
    "email-security",
    "phone-oncall",
]
CHANNELS_BY_SEVERITY: dict[Severity, tuple[Channel, ...]] = {
    "critical": ("slack-critical", "email-oncall", "phone-oncall"),
    "high": ("slack-high",),
    "medium": ("slack-monitoring",),
    "low": ("email-team",),
    "info": (),
}
PAGING_CHANNEL: Channel = "phone-oncall"
# Labels that route an alert rather than name it: left out of its fingerprint (schemas/records.py).
ROUTING_LABELS = ("channels", "page")
AlertName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
# The event fields a rule may match on and group by, besides tags.
MATCH_FIELDS = ("name", "currency", "funnel", "step", "feature", "action", "metric", "unit", "source")


class ValueFilter(BaseModel):
    """Bounds on the event's value (performance) or amount (revenue)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


class Match(BaseModel):
    """Which events a rule looks at. Every given field must equal (or be one of) the listed values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: EventType
    name: OneOrMany | None = None
    currency: OneOrMany | None = None
    funnel: OneOrMany | None = None
    step: OneOrMany | None = None
    feature: OneOrMany | None = None
    action: OneOrMany | None = None
    metric: OneOrMany | None = None
    unit: OneOrMany | None = None
    source: OneOrMany | None = None
    tags: dict[TagKey, OneOrMany] = Field(default_factory=dict)
    value: ValueFilter | None = None


class Baseline(BaseModel):
    """Compare the window with the same window of the previous `days` days, as a fraction of their
    average: `value` becomes current / baseline (1.0 = as usual)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: int = Field(ge=1, le=28)


class ConversionStep(BaseModel):
    """A funnel step whose conversion the impact states: `step`'s events over `of`'s (the step
    before it) in the project, over the impact window against the window before it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    funnel: str = Field(min_length=1)
    step: str = Field(min_length=1)
    of: str = Field(min_length=1, description="the funnel step before `step`")


class Impact(BaseModel):
    """Business impact for the annotations: the project's revenue per minute over `revenue_window`
    (per currency), times `expected_duration` of an episode (the revenue at stake); the distinct
    users of the rule's events in its window; a funnel step's conversion against the window before.
    A critical alert whose revenue at stake exceeds `page_above` in a currency pages (label
    `page="true"`), when the rule's channels include phone-oncall."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    revenue_window: Duration = 3600
    expected_duration: Duration = 1800
    page_above: float = Field(default=1000, ge=0, description="revenue at stake that pages, per currency")
    conversion: ConversionStep | None = None


@dataclass(frozen=True, slots=True)
class BusinessImpact:
    """What an alert's impact is made of, as measured when its state changed."""

    revenue: dict[str, Decimal]  # per currency over the impact window
    users: int | None = None  # distinct users of the rule's events in its window; None: unknown
    users_capped: bool = False  # more than counted: the count is a lower bound
    conversion: tuple[float | None, float | None] | None = None  # (now, the window before) ratios

    def at_stake(self, impact: Impact) -> dict[str, float]:
        """Revenue at stake per currency: revenue per minute over the window x the expected episode."""
        return {
            currency: float(total) / impact.revenue_window * impact.expected_duration
            for currency, total in self.revenue.items()
        }

    def pages(self, impact: Impact) -> bool:
        """Whether the revenue at stake exceeds `page_above` in some currency."""
        return any(stake > impact.page_above for stake in self.at_stake(impact).values())

    def annotations(self, impact: Impact) -> dict[str, str]:
        """`impact` (one sentence) and its parts: `revenue_at_stake`, `users_affected`,
        `conversion_impact` (those measured)."""
        window, expected = impact.revenue_window, impact.expected_duration
        stakes = self.at_stake(impact)
        if stakes:
            per_minute = [
                f"{float(total) / window * 60:,.2f} {currency}/min, {stakes[currency]:,.2f} {currency}"
                f" over {format_duration(expected)}"
                for currency, total in sorted(self.revenue.items(), key=lambda item: -item[1])
            ]
            revenue = f"revenue at stake (from the last {format_duration(window)}): " + "; ".join(per_minute)
        else:
            revenue = f"no revenue in the last {format_duration(window)}"
        out = {"impact": revenue}
        if stakes:
            out["revenue_at_stake"] = "; ".join(
                f"{stake:.2f} {currency}" for currency, stake in sorted(stakes.items())
            )
        if self.users is not None:
            out["users_affected"] = f"{self.users}{'+' if self.users_capped else ''}"
            out["impact"] += f"; {out['users_affected']} users affected"
        if impact.conversion is not None and self.conversion is not None:
            step = impact.conversion
            now, before = self.conversion
            name = f"{step.funnel} {step.of} -> {step.step}"
            if now is None:
                text = f"{name}: no {step.of} in the last {format_duration(window)}"
            elif before is None:
                text = f"{name} {now:.1%} (no {step.of} in the {format_duration(window)} before)"
            else:
                change = f"{now / before - 1:+.0%}" if before else "n/a"
                text = f"{name} {now:.1%} against {before:.1%} the {format_duration(window)} before"
                text += f" ({change})"
            out["conversion_impact"] = text
            out["impact"] += f"; conversion {text}"
        return out


def routing_labels(
    severity: Severity, channels: tuple[Channel, ...], figures: BusinessImpact | None, impact: Impact | None
) -> dict[str, str]:
    """The labels Alertmanager routes on (docs/reference.md, "Routing"): `channels`, comma-separated,
    and `page="true"` when the alert is critical, may page (phone-oncall among its channels) and
    its revenue at stake exceeds `impact.page_above`."""
    labels = {"channels": ",".join(channels)} if channels else {}
    if (
        severity == "critical"
        and PAGING_CHANNEL in channels
        and figures is not None
        and impact is not None
        and figures.pages(impact)
    ):
        labels["page"] = "true"
    return labels


class Annotations(BaseModel):
    """Texts for the person on call. `summary` and `description` are formatted with the fields
    {value}, {threshold}, {window}, {count} and the group's labels, e.g. {provider}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    summary: str
    description: str = ""
    runbook_url: str = ""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: AlertName
    match: Match
    aggregate: Aggregate = "count"
    of: Match | None = Field(default=None, description="ratio only: the denominator's events")
    window: Duration
    op: Comparison
    threshold: float
    resolve_threshold: float | None = Field(
        default=None, description="firing ends only once the value is past this on the safe side"
    )
    for_: Duration = Field(default=0, alias="for", description="pending this long before firing")
    keep_firing_for: Duration = Field(default=0, description="resolve only after this long clear")
    min_samples: int = Field(
        default=0, ge=0, description="fewer matching events (the denominator, for ratio) is no data"
    )
    no_data: Literal["ok", "keep", "alerting"] = Field(
        default="ok",
        description="no data: the condition is false (ok), the state unchanged (keep), or true (alerting)",
    )
    baseline: Baseline | None = None
    group_by: list[str] = Field(default_factory=list, description="tag keys or event fields")
    severity: SeverityName = "high"
    channels: list[Channel] | None = Field(
        default=None, description="where it goes; by default the severity's (docs/reference.md, Routing)"
    )
    labels: dict[TagKey, str] = Field(default_factory=dict)
    annotations: Annotations
    impact: Impact | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.window < PANE_S or self.window % PANE_S:
            raise ValueError(f"window must be a positive multiple of {PANE_S}s")
        if (self.aggregate == "ratio") != (self.of is not None):
            raise ValueError("`of` (the denominator) is required for ratio, and only for ratio")
        if self.of is not None and self.of.type != self.match.type:
            raise ValueError("a ratio compares events of one type: `of.type` must equal `match.type`")
        if self.baseline is not None and (self.window > 86400 or self.aggregate not in ("count", "sum")):
            raise ValueError("a baseline compares counts or sums of windows of at most one day")
        if self.resolve_threshold is not None and _holds(self.op, self.resolve_threshold, self.threshold):
            raise ValueError("resolve_threshold must lie on the safe side of threshold")
        reserved = {"alertname", "severity", "project", *ROUTING_LABELS}
        if reserved & set(self.labels) or reserved & set(self.group_by):
            raise ValueError(f"labels and group_by may not redefine {sorted(reserved)}")
        return self

    def holds(self, value: float) -> bool:
        """Whether `value` meets the firing condition."""
        return _holds(self.op, value, self.threshold)

    def clear(self, value: float) -> bool:
        """Whether `value` is clear enough to end a firing alert."""
        limit = self.threshold if self.resolve_threshold is None else self.resolve_threshold
        return not _holds(self.op, value, limit) and not self.holds(value)

    def template_problems(self) -> list[str]:
        """Annotation templates that would not render: unknown fields or bad format specs."""
        sample: dict[str, Any] = {"value": 1.0, "threshold": self.threshold, "window": "5m", "count": 1}
        sample |= {key: "x" for key in ("alertname", "severity", "project", *self.group_by, *self.labels)}
        problems = []
        for name in ("summary", "description"):
            try:
                getattr(self.annotations, name).format_map(sample)
            except (KeyError, ValueError, IndexError) as exc:
                problems.append(f"{self.name}: annotation {name}: {exc!r}")
        return problems

    @property
    def delivery_channels(self) -> tuple[Channel, ...]:
        """The rule's channels, or its severity's."""
        return CHANNELS_BY_SEVERITY[self.severity] if self.channels is None else tuple(self.channels)

    @property
    def within_one_series_key(self) -> bool:
        """Whether every event the rule reads lies on one events partition when envelopes are
        keyed by series (project, type, name): `match` (and `of`) name one value of the type's
        first name field (a revenue name, funnel, feature or metric), the same, and the rule has
        no `impact` (which reads the project's revenue and funnels, on any partition)."""
        field = EVENT_KINDS[self.match.type].name[0]
        named = getattr(self.match, field)
        if not isinstance(named, str) or self.impact is not None:
            return False
        return self.of is None or getattr(self.of, field) == named

    @property
    def horizon(self) -> int:
        """How far back (seconds) the rule looks at event time."""
        return self.window + (self.baseline.days * 86400 if self.baseline else 0)


def _holds(op: Comparison, value: float, threshold: float) -> bool:
    if op == ">":
        return value > threshold
    if op == ">=":
        return value >= threshold
    if op == "<":
        return value < threshold
    return value <= threshold


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule]

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [rule.name for rule in self.rules]
        if len(names) != len(set(names)):
            raise ValueError("rule names must be unique")
        return self


AlertState = Literal["firing", "resolved"]


class ExpectedChange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: Duration = Field(description="time since the first value")
    state: AlertState


class RuleTest(BaseModel):
    """Given the rule's value at every `interval` (`_` = no data; `3x4` = 3 four times), the
    published state changes expected, in the spirit of `promtool test rules`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: AlertName
    interval: Duration = PANE_S
    values: str = Field(pattern=r"^\s*([-+0-9.eE]+|_)(x\d+)?(\s+([-+0-9.eE]+|_)(x\d+)?)*\s*$")
    expect: list[ExpectedChange]

    def series(self) -> list[float | None]:
        out: list[float | None] = []
        for item in self.values.split():
            value, _, times = item.partition("x")
            out.extend([None if value == "_" else float(value)] * int(times or 1))
        return out


class RuleTestFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule_file: str = Field(description="the rules file, relative to this file")
    tests: list[RuleTest] = Field(min_length=1)


class RulesError(CosnapError):
    """A rules file that cannot be read or does not validate."""


_M = TypeVar("_M", bound=BaseModel)
DEFAULT_RULES = Path(__file__).parent / "default-rules.yaml"


def _load(model: type[_M], path: Path) -> _M:
    try:
        return model.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise RulesError(f"{path}: {exc}") from exc


def load_rules(path: Path = DEFAULT_RULES) -> RuleFile:
    return _load(RuleFile, path)


def load_rule_tests(path: Path) -> tuple[RuleFile, RuleTestFile]:
    """A rule test file and the rules file it names."""
    tests = _load(RuleTestFile, path)
    rules = load_rules(path.parent / tests.rule_file)
    unknown = {test.rule for test in tests.tests} - {rule.name for rule in rules.rules}
    if unknown:
        raise RulesError(f"{path}: no such rules: {', '.join(sorted(unknown))}")
    return rules, tests
