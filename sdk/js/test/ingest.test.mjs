// Against the REAL ingest API: set COSNAP_INGEST_URL and COSNAP_WRITE_KEY (tests/sdk/test_js_sdk.py
// does, on a pipeline of its own, and then counts the rows in ClickHouse). Skipped without them.
//
// Exactly SENT_BY_CLIENT + 1 events reach the API from this file; the pytest asserts that count.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient } from "../cosnap-metrics.mjs";

const url = process.env.COSNAP_INGEST_URL;
const writeKey = process.env.COSNAP_WRITE_KEY;
const skip = url && writeKey ? false : "COSNAP_INGEST_URL and COSNAP_WRITE_KEY are not set";
const PER_TYPE = 10;
const SENT_BY_CLIENT = 4 * PER_TYPE;

test(`${SENT_BY_CLIENT} events of the four types are accepted with 202 and no rejection`, { skip }, async () => {
  const results = [];
  const errors = [];
  const client = createClient({
    url,
    writeKey,
    flushAt: 8,
    source: "backend",
    environment: "test",
    release: "sdk-js-test",
    onResult: (result) => results.push(result),
    onError: (error) => errors.push(error),
  });
  const sent = [];
  for (let i = 0; i < PER_TYPE; i++) {
    const common = { userId: `u${i}`, sessionId: `s${i % 3}`, tags: { suite: "sdk-js" } };
    // Half the amounts as strings, half as numbers: 5 × 9.99 + 5 × 4.99 = 74.90 USD.
    sent.push(client.trackRevenue("subscription.renewal", i % 2 ? "9.99" : 4.99, "USD", common));
    sent.push(client.trackConversionStep("onboarding", ["app_opened", "signed_up"][i % 2], i % 2, common));
    sent.push(client.trackFeatureUsage("ai_effect.anime", "applied", common));
    const severity = i === PER_TYPE - 1 ? "critical" : "info";
    sent.push(client.trackPerformance("api.latency", 100 + i * 1.5, "ms", { ...common, severity }));
  }
  const stats = await client.close();

  assert.deepEqual(
    errors.map((e) => e.message),
    [],
  );
  assert.ok(results.length >= 1);
  for (const result of results) {
    assert.equal(result.status, 202, `request ${result.requestId}: ${result.detail ?? ""}`);
    assert.deepEqual(result.rejected, []);
    assert.equal(result.accepted, result.eventIds.length);
  }
  assert.deepEqual(
    results.flatMap((r) => r.eventIds).sort(),
    [...sent].sort(),
  );
  assert.deepEqual(
    { ...stats, requests: undefined },
    {
      tracked: SENT_BY_CLIENT,
      accepted: SENT_BY_CLIENT,
      rejected: 0,
      refused: 0,
      dropped: 0,
      retries: 0,
      requests: undefined,
      beaconed: 0,
      buffered: 0,
    },
  );
});

test("a beacon body (text/plain, api_key inside, no headers) is accepted with 202", { skip }, async () => {
  // What a browser's sendBeacon does, done with the real fetch: POST the Blob, no custom headers.
  const responses = [];
  const page = new EventTarget();
  const saved = {
    addEventListener: globalThis.addEventListener,
    removeEventListener: globalThis.removeEventListener,
    navigator: Object.getOwnPropertyDescriptor(globalThis, "navigator"),
  };
  globalThis.addEventListener = page.addEventListener.bind(page);
  globalThis.removeEventListener = page.removeEventListener.bind(page);
  Object.defineProperty(globalThis, "navigator", {
    configurable: true,
    value: {
      sendBeacon(beaconUrl, data) {
        responses.push(fetch(beaconUrl, { method: "POST", body: data, keepalive: true }));
        return true;
      },
    },
  });
  try {
    const client = createClient({
      url,
      writeKey,
      flushIntervalMs: 60000,
      source: "frontend",
      fetch: () => assert.fail("the beacon path must not use fetch with headers"),
    });
    const id = client.trackFeatureUsage("sdk.beacon", "sent", { anonymousId: "anon-beacon" });
    page.dispatchEvent(new Event("pagehide"));
    assert.equal(responses.length, 1);
    const response = await responses[0];
    const body = await response.json();
    assert.equal(response.status, 202, JSON.stringify(body));
    assert.deepEqual(body, { accepted: 1, rejected: [] });
    const stats = await client.close();
    assert.deepEqual([stats.beaconed, stats.requests, stats.buffered], [1, 0, 0]);
    assert.match(id, /^[0-9a-f-]{36}$/);
  } finally {
    globalThis.addEventListener = saved.addEventListener;
    globalThis.removeEventListener = saved.removeEventListener;
    if (saved.navigator) Object.defineProperty(globalThis, "navigator", saved.navigator);
    else delete globalThis.navigator;
  }
});
