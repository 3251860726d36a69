// The monitoring guide's scenario through `client.businessMetrics`, against the REAL ingest API
// (COSNAP_INGEST_URL and COSNAP_WRITE_KEY; tests/sdk/test_js_sdk.py sets them and counts the
// rows in ClickHouse; skipped without them): a conversion step is tracked and waits, a revenue
// event is sent at once and takes it along, a critical event is sent at once too.
//
// Exactly 4 events reach the API from this file: one of each type.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient } from "../cosnap-metrics.mjs";

const url = process.env.COSNAP_INGEST_URL;
const writeKey = process.env.COSNAP_WRITE_KEY;
const skip = url && writeKey ? false : "COSNAP_INGEST_URL and COSNAP_WRITE_KEY are not set";

async function waitUntil(check, what, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test("the guide's scenario: the conversion step waits, revenue and critical events go at once", { skip }, async () => {
  const results = [];
  const errors = [];
  const breadcrumbs = [];
  const client = createClient({
    url,
    writeKey,
    flushAt: 1000,
    flushIntervalMs: 600000, // only revenue, critical events and close() send
    source: "frontend",
    onResult: (result) => results.push(result),
    onError: (error) => errors.push(error.message),
    sentry: { addBreadcrumb: (breadcrumb) => breadcrumbs.push(breadcrumb) },
  });
  const metrics = client.businessMetrics;
  const step = metrics.trackConversionStep("signup_completed", "guide-user", { funnel: "onboarding" });
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(results.length, 0, "a conversion step waits for a batch");

  const revenue = metrics.trackRevenueEvent("subscription", 9.99, undefined, { plan: "pro" });
  await waitUntil(() => results.length === 1, "the revenue's request");
  assert.equal(results[0].status, 202, results[0].detail);
  assert.deepEqual(results[0].eventIds, [step, revenue]);
  assert.equal(results[0].accepted, 2);

  const critical = metrics.trackFeatureUsage("payment", "failed", "guide-user", { severity: "critical" });
  await waitUntil(() => results.length === 2, "the critical event's request");
  assert.deepEqual([results[1].status, results[1].eventIds], [202, [critical]]);

  const measured = metrics.trackPerformanceMetric("render.rate", 58.5, "fps", { screen: "editor" });
  const stats = await client.close();
  assert.deepEqual(errors, []);
  assert.deepEqual(
    results.map((r) => [r.status, r.rejected.length]),
    [
      [202, 0],
      [202, 0],
      [202, 0],
    ],
  );
  assert.deepEqual(results[2].eventIds, [measured]);
  assert.deepEqual([stats.tracked, stats.accepted], [4, 4]);
  assert.deepEqual(
    breadcrumbs.map((b) => b.data.event_id),
    [step, revenue, critical, measured],
  );
});
