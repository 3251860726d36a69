"""`cosnap-metrics demo`: realistic Cosnap AI traffic posted to the ingest API.

Subscriptions and renewals in several currencies, credit packs, the onboarding and checkout
funnels, AI-effect usage, and latencies of the API, pages, payments and the AI provider, with
the occasional failure (as tags: status, category, provider), at a steady rate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from cosnap_metrics.progress import ProgressLine

PRICES = {  # plan -> currency -> price
    "monthly": {"USD": "9.99", "EUR": "9.99", "GBP": "8.99", "JPY": "1500", "BRL": "49.90"},
    "yearly": {"USD": "59.99", "EUR": "59.99", "GBP": "49.99", "JPY": "9000", "BRL": "299.90"},
}
CURRENCY_WEIGHTS = {"USD": 50, "EUR": 25, "GBP": 10, "JPY": 8, "BRL": 7}
CREDIT_PACKS = {"USD": "4.99", "EUR": "4.99", "GBP": "3.99", "JPY": "800", "BRL": "24.90"}
ONBOARDING = ["app_opened", "signed_up", "photo_uploaded", "effect_applied", "subscribed"]
ONBOARDING_KEEP = [1.0, 0.6, 0.75, 0.8, 0.12]
CHECKOUT = ["paywall_viewed", "checkout_started", "payment_submitted", "payment_succeeded"]
CHECKOUT_KEEP = [1.0, 0.35, 0.8, 0.96]
FUNNELS = {"onboarding": (ONBOARDING, ONBOARDING_KEEP), "checkout": (CHECKOUT, CHECKOUT_KEEP)}
EFFECTS = ["anime", "cartoon", "vintage", "oil_painting", "cyberpunk", "watercolor", "pixar", "sketch"]
ROUTES = ["/api/effects/apply", "/api/photos/upload", "/api/auth/login", "/api/subscriptions", "/api/feed"]


@dataclass
class CosnapTraffic:
    """Draws one realistic event at a time; `rng` makes a run reproducible."""

    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))  # simulated runs replace it
    # Users part-way through a funnel: user -> (funnel, index of the step they reached).
    journeys: dict[str, tuple[str, int]] = field(default_factory=dict)

    def _common(self, user: str, source: str) -> dict[str, Any]:
        return {
            "event_id": f"{self.rng.getrandbits(128):032x}",
            "timestamp": self.clock().isoformat(timespec="milliseconds"),
            "user_id": user,
            "session_id": f"s-{user}-{self.rng.randint(1, 3)}",
            "source": source,
            "environment": "production",
            "release": "cosnap@3.4.1",
        }

    def event(self) -> dict[str, Any]:
        rng = self.rng
        user = f"u{rng.randint(1, 20000)}"
        kind = rng.choices(["revenue", "conversion", "feature", "performance"], [3, 17, 30, 50])[0]
        if kind == "revenue":
            currency = rng.choices(list(CURRENCY_WEIGHTS), list(CURRENCY_WEIGHTS.values()))[0]
            name, amount, plan = rng.choice(
                [
                    ("subscription.started", PRICES["monthly"][currency], "monthly"),
                    ("subscription.renewal", PRICES["monthly"][currency], "monthly"),
                    ("subscription.renewal", PRICES["yearly"][currency], "yearly"),
                    ("credits.purchase", CREDIT_PACKS[currency], "credits"),
                ]
            )
            return self._common(user, "backend") | {
                "type": "revenue", "name": name, "amount": amount, "currency": currency,
                "tags": {"plan": plan, "store": rng.choice(["app_store", "play", "web"])},
            }  # fmt: skip
        if kind == "conversion":
            return self._conversion()
        if kind == "feature":
            feature, action = rng.choice(
                [(f"ai_effect.{rng.choice(EFFECTS)}", "applied")] * 6
                + [(f"ai_effect.{rng.choice(EFFECTS)}", "previewed")] * 3
                + [("share", "clicked"), ("download", "clicked"), ("gallery", "opened")]
            )
            return self._common(user, "frontend") | {"type": "feature", "feature": feature, "action": action}
        return self._performance(user)

    def _conversion(self) -> dict[str, Any]:
        """The next step of some user's journey, so funnels convert as real ones do."""
        rng = self.rng
        if not self.journeys or rng.random() < 0.35:
            funnel = rng.choice(["onboarding", "checkout"])
            user, index = f"u{rng.randint(1, 10**9)}", 0
        else:
            user = rng.choice(list(self.journeys))
            funnel, index = self.journeys.pop(user)
            index += 1
        steps, keep = FUNNELS[funnel]
        if index + 1 < len(steps) and rng.random() < keep[index + 1]:
            self.journeys[user] = (funnel, index)
        return self._common(user, "frontend") | {
            "type": "conversion", "funnel": funnel, "step": steps[index], "step_index": index,
        }  # fmt: skip

    def _performance(self, user: str) -> dict[str, Any]:
        rng = self.rng
        metric = rng.choices(
            ["api.latency", "ai.provider.latency", "page.load", "payment.latency"], [60, 20, 15, 5]
        )[0]
        tags: dict[str, str]
        if metric == "api.latency":
            route = rng.choice(ROUTES)
            status = rng.choices(["200", "500", "401"], [9899, 100, 1])[0]
            value = rng.lognormvariate(4.7, 0.5)
            tags = {"route": route, "status": status}
            if status == "401":
                tags["category"] = "auth"
        elif metric == "ai.provider.latency":
            failed = rng.random() < 0.001
            value = rng.lognormvariate(7.7, 0.35)
            tags = {"provider": rng.choice(["replicate", "stability"]), "status": "error" if failed else "ok"}
        elif metric == "payment.latency":
            failed = rng.random() < 0.0002
            value = rng.lognormvariate(6.5, 0.3)
            tags = {
                "provider": "stripe",
                "category": "payment",
                "status": "failed" if failed else "succeeded",
            }
        else:
            value = rng.lognormvariate(7.0, 0.4)
            tags = {"page": rng.choice(["/", "/effects", "/paywall", "/gallery"])}
        source = "frontend" if metric == "page.load" else "backend"
        return self._common(user, source) | {
            "type": "performance", "metric": metric, "value": round(value, 1), "unit": "ms", "tags": tags,
        }  # fmt: skip


def run_demo(
    url: str,
    write_key: str,
    minutes: float,
    rate: float,
    *,
    speed: float = 1.0,
    seed: int | None = None,
    batch: int = 50,
) -> int:
    """Post `rate` events per (simulated) second for `minutes` of simulated time, with a progress
    line on stderr; return 0 if every request was accepted.

    With `speed` above 1 the traffic of `minutes` is compressed into minutes / speed of wall
    time: event times run `speed` times faster than the clock, from minutes ago up to now (never
    ahead of it), and bodies carry no `sent_at` (clock-skew correction would undo the simulated
    times). `seed` makes the traffic reproducible.
    """
    total_seconds = minutes * 60 / speed
    started_wall = time.monotonic()
    simulated_start = datetime.now(UTC) - timedelta(seconds=minutes * 60 - total_seconds)

    def simulated_now() -> datetime:
        # A post slower than planned (a busy machine) would carry the simulated clock past the
        # real one: event times ahead of now, which make the now of everyone else late.
        simulated = simulated_start + timedelta(seconds=(time.monotonic() - started_wall) * speed)
        return min(simulated, datetime.now(UTC))

    traffic = CosnapTraffic(random.Random(seed))
    if speed != 1.0:
        traffic.clock = simulated_now
    sent = accepted = failed = 0
    progress = ProgressLine("demo")
    clock = "s" if speed == 1.0 else "s simulated"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {write_key}"}, timeout=30) as client:
        # Every planned event is sent: on a machine too busy to keep the pace, the run ends late
        # rather than short.
        planned = int(minutes * 60 * rate)
        while sent < planned:
            elapsed = time.monotonic() - started_wall
            due = min(int(elapsed * rate * speed), planned) - sent
            while due > 0:
                size = min(batch, due)
                body: dict[str, Any] = {"events": [traffic.event() for _ in range(size)]}
                if speed == 1.0:
                    body["sent_at"] = datetime.now(UTC).isoformat()
                response = client.post("/v1/events", json=body)
                sent += size
                due -= size
                if response.status_code == 202:
                    accepted += response.json()["accepted"]
                else:
                    failed += size
            progress.update(
                f"{elapsed * speed:6.0f}{clock}  sent {sent}  accepted {accepted}  failed {failed}",
                min(elapsed / total_seconds, 1.0),
            )
            if sent < planned:
                time.sleep(0.05)
    progress.finish(f"{minutes * 60:.0f}{clock}  sent {sent}  accepted {accepted}  failed {failed}")
    return 0 if failed == 0 else 1
