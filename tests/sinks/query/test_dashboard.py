"""The embedded dashboard in headless Chromium: known events and late events posted through the
pipeline, the numbers read off the page, alerts appearing without a reload, and a screenshot kept
as an artifact (test-artifacts/dashboard.png)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline
from tests.sinks.query.dashboard_data import (
    alert_records,
    expected_panels,
    firing_rows,
    format_delay,
    late_rows,
    post_traffic,
    produce_alerts,
)

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Debian's Chromium through its chromedriver (`make test` installs both): nothing is
    downloaded, so Selenium Manager never runs."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("needs Debian's chromium and chromium-driver: run `make browser` (as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    yield driver
    driver.quit()


def amount(value: Decimal) -> str:
    """A decimal as the page prints it: grouped digits, no trailing zeros, cents when any."""
    whole, _, fraction = f"{value:f}".partition(".")
    fraction = fraction.rstrip("0")
    fraction = fraction + "0" if len(fraction) == 1 else fraction
    return f"{int(whole):,}" + (f".{fraction}" if fraction else "")


def number(value: float) -> str:
    return format(round(value, 2), "f").rstrip("0").rstrip(".")


def percent(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def texts(driver: WebDriver, testids: list[str]) -> dict[str, str]:
    found = {}
    for testid in testids:
        elements = driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
        found[testid] = elements[0].text if elements else "<missing>"
    return found


def wait_texts(driver: WebDriver, want: dict[str, str], timeout: float = 90) -> None:
    """Until every element shows its text (the page refreshes itself every 5 s; its reads are
    slow on a machine busy with other tests: one run needed more than 30 s)."""
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: texts(d, list(want)) == want)
    except Exception:
        got = texts(driver, list(want))
        raise AssertionError({k: (got[k], v) for k, v in want.items() if got[k] != v}) from None


def test_dashboard_shows_the_posted_numbers(
    pipeline: Pipeline, kafka: KafkaBroker, browser: WebDriver, tmp_path: Path
) -> None:
    rules = tmp_path / "no-rules.yaml"
    rules.write_text("rules: []\n")  # the only alerts on the page are the ones this test sends
    pipeline.env["COSNAP_RULES_FILE"] = str(rules)
    pipeline.start("sink", "streams", "ingest")
    traffic = post_traffic(pipeline)

    # The page needs no token, and answers only host names of this machine.
    data = httpx.get(f"{pipeline.query_url}/dashboard/data")
    assert data.status_code == 200
    late = late_rows(traffic, datetime.now(UTC), "cosnap-test")
    expected = expected_panels(traffic.now, traffic.events, [], late)
    late_panel = data.json()["panels"]["late_events"]
    assert late_panel["rows"] == late, late_panel  # the delays within their bounds
    assert (
        httpx.get(f"{pipeline.query_url}/dashboard", headers={"Host": "attacker.example"}).status_code == 403
    )

    browser.get(f"{pipeline.query_url}/dashboard")
    want = {"status": "live", "alerts-count": "0", "alerts-none": "No alerts firing"}
    for currency, revenue, payments, payers in expected["revenue_by_currency"]:
        want |= {
            f"revenue-total-{currency}": amount(revenue),
            f"revenue-payments-{currency}": str(payments),
            f"revenue-payers-{currency}": str(payers),
        }
    for funnel, step, _, users, conversion, step_conversion in expected["funnels"]:
        want |= {
            f"funnel-{funnel}-{step}-users": str(users),
            f"funnel-{funnel}-{step}-conversion": percent(conversion),
            f"funnel-{funnel}-{step}-step-conversion": percent(step_conversion),
        }
    for feature, action, uses, users in expected["top_features"]:
        want |= {
            f"feature-{feature}-{action}-uses": str(uses),
            f"feature-{feature}-{action}-users": str(users),
        }
    for metric, unit, samples, p95, top in expected["latency_p95"]:
        want |= {
            f"latency-{metric}-{unit}-samples": str(samples),
            f"latency-{metric}-{unit}-p95": number(p95),
            f"latency-{metric}-{unit}-max": number(top),
        }
    delays = {row[0]: row[4:] for row in late_panel["rows"]}  # as the page got them
    for project, events, counted, share, _, _ in expected["late_events"]:
        p50, top = delays[project]
        want |= {
            f"late-{project}-events": str(events),
            f"late-{project}-counted": str(counted),
            f"late-{project}-share": percent(share),
            f"late-{project}-p50": format_delay(p50),
            f"late-{project}-max": format_delay(top),
        }
    wait_texts(browser, want)
    assert want["late-cosnap-test-max"] == "26.0 h"  # the revenue event sent a day and two hours late
    # Spot checks of the formatting; the two-hour-old USD event is out of the range.
    assert (want["revenue-total-USD"], want["revenue-total-EUR"]) == ("79.97", "1,239.49")
    assert want["latency-api.latency-ms-p95"] == "195"

    cells = browser.find_elements(By.CSS_SELECTOR, '[data-testid="revenue-minute"]')
    shown = {
        (
            datetime.fromisoformat(c.get_attribute("data-minute") or ""),
            c.get_attribute("data-currency"),
        ): c.text
        for c in cells
    }
    assert shown == {
        (minute, currency): amount(value) for minute, currency, value in expected["revenue_per_minute"]
    }
    steps = [
        e.text
        for e in browser.find_elements(By.CSS_SELECTOR, '[data-funnel="onboarding"] tbody td:first-child')
    ]
    assert steps == ["app_opened", "signed_up", "photo_uploaded", "subscribed"]

    # Alert state changes arrive on the topic; the open page shows the firing ones by itself.
    alerts = alert_records(datetime.now(UTC), "cosnap-test")
    produce_alerts(kafka.bootstrap, pipeline.topics.alerts, alerts)
    firing = firing_rows(alerts)
    wait_texts(browser, {"alerts-count": str(len(firing))})
    shown_alerts = [
        (
            e.get_attribute("data-fingerprint"),
            e.find_element(By.CSS_SELECTOR, '[data-testid="alert-value"]').text,
        )
        for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="alert"]')
    ]
    assert shown_alerts == [(row[0], number(row[5])) for row in firing] == [("a1", "4"), ("a2", "25")]
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="alerts-none"]')

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    print(f"dashboard screenshot: {screenshot}")
