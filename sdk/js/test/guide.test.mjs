// The monitoring guide's calls (`client.businessMetrics`) and Sentry breadcrumbs, against a
// recording fetch: what each call sends, its defaults, metadata as tags within the API's limits,
// which calls are sent at once, and the breadcrumb per event. The same calls against the real
// ingest API are in guide-ingest.test.mjs.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { createClient } from "../cosnap-metrics.mjs";

let clients = [];

afterEach(async () => {
  await Promise.all(clients.map((client) => client.close()));
  clients = [];
  delete globalThis.Sentry;
});

/** A client whose requests are recorded (each a list of events) and answered 202. */
function recordingClient(options = {}) {
  const requests = [];
  const client = createClient({
    url: "https://metrics.example.com",
    writeKey: "wk_guide_0123456789",
    flushIntervalMs: 60000,
    flushAt: 1000,
    beaconOnHide: false,
    fetch: async (_url, init) => {
      const { events } = JSON.parse(init.body);
      requests.push(events);
      return new Response(JSON.stringify({ accepted: events.length, rejected: [] }), { status: 202 });
    },
    ...options,
  });
  clients.push(client);
  return { client, requests };
}

/** A stand-in for Sentry's SDK that keeps every breadcrumb. */
function recordingSentry() {
  const breadcrumbs = [];
  return { breadcrumbs, addBreadcrumb: (breadcrumb) => breadcrumbs.push(breadcrumb) };
}

test("the guide's four calls send the pipeline's four events with the guide's defaults", async () => {
  const { client, requests } = recordingClient();
  const metrics = client.businessMetrics;
  metrics.trackConversionStep("photo_uploaded", "u1", { source_page: "editor" });
  metrics.trackConversionStep("signed_up", "u1", { funnel: "onboarding" });
  metrics.trackFeatureUsage("ai_effect.anime", "applied", "u1", { plan: "pro" });
  metrics.trackPerformanceMetric("api.latency", 123.4);
  metrics.trackPerformanceMetric("render.rate", 58, "fps");
  metrics.trackRevenueEvent("subscription", 9.99);
  await client.flush();
  const events = requests.flat();
  const pick = (event, ...keys) => Object.fromEntries(keys.map((key) => [key, event[key]]));
  assert.deepEqual(
    events.map((e) => pick(e, "type", "funnel", "step", "user_id", "tags")),
    [
      { type: "conversion", funnel: "default", step: "photo_uploaded", user_id: "u1", tags: { source_page: "editor" } },
      { type: "conversion", funnel: "onboarding", step: "signed_up", user_id: "u1", tags: undefined },
      { type: "feature", funnel: undefined, step: undefined, user_id: "u1", tags: { plan: "pro" } },
      { type: "performance", funnel: undefined, step: undefined, user_id: undefined, tags: undefined },
      { type: "performance", funnel: undefined, step: undefined, user_id: undefined, tags: undefined },
      { type: "revenue", funnel: undefined, step: undefined, user_id: undefined, tags: undefined },
    ],
  );
  assert.deepEqual(pick(events[2], "feature", "action"), { feature: "ai_effect.anime", action: "applied" });
  assert.deepEqual(pick(events[3], "metric", "value", "unit"), { metric: "api.latency", value: 123.4, unit: "ms" });
  assert.equal(events[4].unit, "fps");
  assert.deepEqual(pick(events[5], "name", "amount", "currency"), { name: "subscription", amount: "9.99", currency: "USD" });
});

test("revenue is sent at once, and so is an event whose metadata.severity is critical", async () => {
  const { client, requests } = recordingClient();
  const metrics = client.businessMetrics;
  metrics.trackFeatureUsage("share", "clicked", "u1");
  metrics.trackConversionStep("signed_up", "u1");
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(requests.length, 0, "ordinary events wait for a batch");
  metrics.trackRevenueEvent("subscription", "4.99", "EUR");
  await client.flush(); // waits for the drain the revenue started
  assert.deepEqual(
    requests.map((events) => events.map((e) => e.type)),
    [["feature", "conversion", "revenue"]],
  );
  for (const critical of [
    () => metrics.trackFeatureUsage("payment", "failed", "u1", { severity: "critical" }),
    () => metrics.trackConversionStep("checkout_failed", "u1", { severity: "critical" }),
    () => metrics.trackPerformanceMetric("ai.provider.latency", 9000, "ms", { severity: "critical", provider: "x" }),
  ]) {
    const before = requests.length;
    critical();
    await waitUntil(() => requests.length === before + 1);
  }
  const performance = requests.at(-1)[0];
  assert.deepEqual(performance.tags, { provider: "x", severity: "critical" });
});

test("metadata is kept as tags within the API's limits; the rest is left out", async () => {
  const { client, requests } = recordingClient();
  const metadata = { plan: "pro", credits: 12, trial: false, nested: { a: 1 }, list: [1], none: null };
  Object.assign(metadata, { "bad key": "x", long: "x".repeat(201) });
  for (let i = 0; i < 40; i++) metadata[`k${i}`] = `v${i}`;
  client.businessMetrics.trackFeatureUsage("share", "clicked", undefined, metadata);
  await client.flush();
  const [[event]] = requests;
  assert.equal(Object.keys(event.tags).length, 32);
  assert.deepEqual([event.tags.plan, event.tags.credits, event.tags.trial], ["pro", "12", "false"]);
  for (const left of ["nested", "list", "none", "bad key", "long", "k29"]) assert.equal(event.tags[left], undefined);
  assert.equal(event.user_id, undefined);
});

test("the guide's calls throw as the calls they stand for", () => {
  const { client } = recordingClient();
  const metrics = client.businessMetrics;
  assert.throws(() => metrics.trackRevenueEvent("subscription", Number.NaN), RangeError);
  assert.throws(() => metrics.trackPerformanceMetric("m", Number.POSITIVE_INFINITY), RangeError);
  assert.throws(() => metrics.trackPerformanceMetric("m", 1, ""), TypeError);
  assert.throws(() => metrics.trackPerformanceMetric("m", 1, "u".repeat(33)), TypeError);
  assert.throws(() => metrics.trackPerformanceMetric("m", 1, 5), TypeError);
  assert.equal(client.stats.tracked, 0);
});

test("a breadcrumb per tracked event goes to the Sentry in the options", async () => {
  const sentry = recordingSentry();
  const { client } = recordingClient({ sentry });
  const ids = [
    client.businessMetrics.trackRevenueEvent("subscription", "9.99"),
    client.businessMetrics.trackPerformanceMetric("api.latency", 5000, "ms", { severity: "critical" }),
    client.businessMetrics.trackConversionStep("signed_up", "u1", { funnel: "onboarding" }),
    client.trackFeatureUsage("share", "clicked"),
  ];
  await client.flush();
  assert.deepEqual(
    sentry.breadcrumbs.map((b) => [b.category, b.level, b.message, b.data.event_id]),
    [
      ["business-metrics", "info", "revenue subscription", ids[0]],
      ["business-metrics", "error", "performance api.latency", ids[1]],
      ["business-metrics", "info", "conversion onboarding/signed_up", ids[2]],
      ["business-metrics", "info", "feature share", ids[3]],
    ],
  );
  assert.deepEqual(sentry.breadcrumbs[0].data, {
    event_id: ids[0],
    type: "revenue",
    name: "subscription",
    amount: "9.99",
    currency: "USD",
  });
});

test("without a Sentry in the options the global one is used; false turns breadcrumbs off", async () => {
  globalThis.Sentry = recordingSentry();
  const { client } = recordingClient();
  client.businessMetrics.trackFeatureUsage("share", "clicked", "u1");
  assert.equal(globalThis.Sentry.breadcrumbs.length, 1);
  const { client: quiet } = recordingClient({ sentry: false });
  quiet.businessMetrics.trackFeatureUsage("share", "clicked", "u1");
  assert.equal(globalThis.Sentry.breadcrumbs.length, 1);
});

test("a Sentry that throws never breaks tracking", async () => {
  const { client, requests } = recordingClient({
    sentry: {
      addBreadcrumb() {
        throw new Error("sentry is broken");
      },
    },
  });
  const id = client.businessMetrics.trackRevenueEvent("subscription", "9.99");
  await client.flush();
  assert.deepEqual(
    requests.flat().map((e) => e.event_id),
    [id],
  );
});

async function waitUntil(check, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    assert.ok(Date.now() < deadline, "timed out");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
