// Buffering, batching and retry behaviour against a local node:http server that answers with
// scripted statuses. Nothing here talks to the real ingest API (see ingest.test.mjs).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { CosnapMetricsError, createClient } from "../cosnap-metrics.mjs";

const MODULE_URL = new URL("../cosnap-metrics.mjs", import.meta.url).href;
const WRITE_KEY = "wk_test_0123456789";
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/**
 * A local stand-in for the ingest API. `script` lists the responses of the first requests in
 * order ({status, headers, body}); after it runs out, every request gets 202 accepting all.
 */
async function scriptedServer(script = [], { port = 0 } = {}) {
  const requests = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    let raw = "";
    req.setEncoding("utf8");
    req.on("data", (chunk) => (raw += chunk));
    req.on("end", () => {
      const body = JSON.parse(raw);
      requests.push({ at: Date.now(), method: req.method, path: req.url, headers: req.headers, body });
      const step = script[requests.length - 1] ?? {
        status: 202,
        body: { accepted: body.events.length, rejected: [] },
      };
      res.writeHead(step.status, { "Content-Type": "application/json", ...(step.headers ?? {}) });
      res.end(JSON.stringify(step.body ?? {}));
      for (const waiter of waiters.splice(0)) waiter();
    });
  });
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    port: server.address().port,
    requests,
    /** Resolve once `n` requests arrived; fail after `timeoutMs`. */
    async waitFor(n, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (requests.length < n) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`expected ${n} requests, got ${requests.length}`);
        await Promise.race([new Promise((resolve) => waiters.push(resolve)), sleep(left)]);
      }
      return requests;
    },
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A client with long timers (so only the behaviour under test sends) and recorded callbacks. */
function recordingClient(url, options = {}) {
  const errors = [];
  const results = [];
  const client = createClient({
    url,
    writeKey: WRITE_KEY,
    flushIntervalMs: 60000,
    flushAt: 1000,
    onError: (error) => errors.push(error),
    onResult: (result) => results.push(result),
    ...options,
  });
  return { client, errors, results };
}

/** Poll `check` until it is truthy; fail after `timeoutMs`. */
async function until(check, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not true within ${timeoutMs} ms: ${check}`);
    await sleep(10);
  }
}

const ids = (request) => request.body.events.map((e) => e.event_id);

describe("event shape", () => {
  test("the four calls send the documented wire fields", async (t) => {
    const server = await scriptedServer();
    t.after(() => server.close());
    const { client, errors } = recordingClient(server.url, {
      source: "backend",
      environment: "production",
      release: "2.3.1",
    });
    const at = new Date(Date.now() - 60000);
    const revenueId = client.trackRevenue("subscription.renewal", "9.99", "USD", {
      userId: "u1",
      sessionId: "s1",
      tags: { plan: "pro", seats: 3 },
      timestamp: at,
    });
    client.trackConversionStep("onboarding", "photo_uploaded", 2, { anonymousId: "a1" });
    client.trackConversionStep("onboarding", "signed_up", { userId: "u1" });
    client.trackFeatureUsage("ai_effect.anime", "applied", { userId: "u1" });
    client.trackPerformance("api.latency", 123.4);
    client.trackPerformance("page.load", 2.5, "s", { severity: "warning", tags: { route: "/home" } });
    assert.equal(await client.flush(), 0);

    const [request] = await server.waitFor(1);
    assert.equal(server.requests.length, 1, "tracked in one tick, sent in one batch");
    assert.equal(request.method, "POST");
    assert.equal(request.path, "/v1/events");
    assert.equal(request.headers.authorization, `Bearer ${WRITE_KEY}`);
    assert.equal(request.headers["content-type"], "application/json");
    assert.match(request.body.sent_at, ISO);
    assert.deepEqual(Object.keys(request.body).sort(), ["events", "sent_at"]);

    const [revenue, step, stepNoIndex, feature, latency, load] = request.body.events;
    const base = { source: "backend", environment: "production", release: "2.3.1" };
    assert.equal(revenue.event_id, revenueId);
    assert.deepEqual(revenue, {
      type: "revenue",
      name: "subscription.renewal",
      amount: "9.99",
      currency: "USD",
      event_id: revenueId,
      timestamp: at.toISOString(),
      ...base,
      user_id: "u1",
      session_id: "s1",
      tags: { plan: "pro", seats: "3" },
    });
    assert.deepEqual(
      { ...step, event_id: undefined, timestamp: undefined },
      {
        type: "conversion",
        funnel: "onboarding",
        step: "photo_uploaded",
        step_index: 2,
        anonymous_id: "a1",
        ...base,
        event_id: undefined,
        timestamp: undefined,
      },
    );
    assert.equal(stepNoIndex.step_index, undefined);
    assert.equal(stepNoIndex.user_id, "u1");
    assert.equal(feature.feature, "ai_effect.anime");
    assert.equal(feature.action, "applied");
    assert.equal(latency.unit, "ms");
    assert.equal(latency.value, 123.4);
    assert.equal(latency.tags, undefined);
    assert.deepEqual(load.tags, { route: "/home", severity: "warning" });
    for (const event of request.body.events) {
      assert.match(event.event_id, UUID_V4);
      assert.match(event.timestamp, ISO);
    }
    assert.equal(new Set(ids(request)).size, 6);
    assert.deepEqual(errors, []);
    assert.deepEqual(client.stats, {
      tracked: 6,
      accepted: 6,
      rejected: 0,
      refused: 0,
      dropped: 0,
      retries: 0,
      requests: 1,
      beaconed: 0,
      buffered: 0,
    });
    await client.close();
  });

  test("amounts are sent as decimal strings; NaN and Infinity are refused at the call", async () => {
    const sent = [];
    const client = createClient({
      url: "http://metrics.invalid",
      writeKey: WRITE_KEY,
      flushAt: 1000,
      fetch: async (_url, init) => {
        sent.push(...JSON.parse(init.body).events);
        return new Response(JSON.stringify({ accepted: 1, rejected: [] }), { status: 202 });
      },
    });
    client.trackRevenue("credits.purchase", 4.99, "EUR");
    client.trackRevenue("credits.purchase", "0.10", "EUR");
    client.trackRevenue("credits.purchase", 1500, "JPY");
    client.trackRevenue("credits.purchase", 12345678901234567890n, "JPY");
    await client.flush();
    assert.deepEqual(
      sent.map((e) => e.amount),
      ["4.99", "0.10", "1500", "12345678901234567890"],
    );
    assert.throws(() => client.trackRevenue("x", Number.NaN, "USD"), RangeError);
    assert.throws(() => client.trackRevenue("x", Number.POSITIVE_INFINITY, "USD"), RangeError);
    assert.throws(() => client.trackRevenue("x", "", "USD"), TypeError);
    assert.throws(() => client.trackRevenue("x", { value: 1 }, "USD"), TypeError);
    assert.throws(() => client.trackPerformance("x", Number.NaN), RangeError);
    assert.throws(() => client.trackPerformance("x", "12"), RangeError);
    assert.throws(() => client.trackPerformance("x", 1, "u".repeat(33)), TypeError); // units are 1-32 characters
    assert.throws(() => client.trackFeatureUsage("x", "y", { user_id: "u1" }), /unknown common field "user_id"/);
    assert.throws(() => client.trackFeatureUsage("x", "y", { timestamp: "yesterday" }), /timestamp/);
    assert.equal(client.stats.tracked, 4, "a refused call tracks nothing");
    await client.close();
  });

  test("fetch is called unbound, as a browser's window.fetch requires", async () => {
    let calls = 0;
    const client = createClient({
      url: "http://metrics.invalid",
      writeKey: WRITE_KEY,
      fetch: function strictFetch(_url, init) {
        // What WebIDL does for window.fetch: any other `this` is an "Illegal invocation".
        if (this !== undefined && this !== globalThis) throw new TypeError("Illegal invocation");
        calls += 1;
        const n = JSON.parse(init.body).events.length;
        return Promise.resolve(new Response(JSON.stringify({ accepted: n, rejected: [] }), { status: 202 }));
      },
    });
    client.trackFeatureUsage("share", "clicked");
    assert.equal(await client.flush(), 0);
    assert.deepEqual([calls, client.stats.accepted], [1, 1]);
    await client.close();
  });

  test("createClient needs a url, a write key and a fetch", () => {
    assert.throws(() => createClient({ writeKey: WRITE_KEY }), /url is required/);
    assert.throws(() => createClient({ url: "http://x" }), /writeKey is required/);
    assert.throws(() => createClient({ url: "http://x", writeKey: WRITE_KEY, fetch: null }), /fetch/);
    assert.throws(() => createClient({ url: "http://x", writeKey: WRITE_KEY, flushAt: 0 }), /flushAt/);
  });
});

describe("when events are sent", () => {
  test("revenue is sent at once", async (t) => {
    const server = await scriptedServer();
    t.after(() => server.close());
    const { client } = recordingClient(server.url);
    const id = client.trackRevenue("subscription.started", "1500", "JPY", { userId: "u1" });
    const [request] = await server.waitFor(1, 2000);
    assert.deepEqual(ids(request), [id]);
    await client.close();
  });

  test("critical performance is sent at once, other severities wait", async (t) => {
    const server = await scriptedServer();
    t.after(() => server.close());
    const { client } = recordingClient(server.url);
    const warning = client.trackPerformance("ai.provider.latency", 900, "ms", { severity: "warning" });
    await sleep(200);
    assert.equal(server.requests.length, 0);
    const critical = client.trackPerformance("ai.provider.latency", 30000, "ms", { severity: "critical" });
    const [request] = await server.waitFor(1, 2000);
    assert.deepEqual(ids(request), [warning, critical]);
    assert.equal(request.body.events[1].tags.severity, "critical");
    await client.close();
  });

  test("reaching flushAt sends the batch", async (t) => {
    const server = await scriptedServer();
    t.after(() => server.close());
    const { client } = recordingClient(server.url, { flushAt: 3 });
    client.trackFeatureUsage("share", "clicked");
    client.trackFeatureUsage("share", "clicked");
    await sleep(200);
    assert.equal(server.requests.length, 0);
    client.trackFeatureUsage("share", "clicked");
    const [request] = await server.waitFor(1, 2000);
    assert.equal(request.body.events.length, 3);
    await client.close();
  });

  test("the interval sends what is buffered", async (t) => {
    const server = await scriptedServer();
    t.after(() => server.close());
    const { client } = recordingClient(server.url, { flushIntervalMs: 100 });
    const id = client.trackFeatureUsage("share", "clicked");
    const [request] = await server.waitFor(1, 2000);
    assert.deepEqual(ids(request), [id]);
    await client.close();
  });

  test("batches hold at most maxBatch events", async (t) => {
    const server = await scriptedServer();
    t.after(() => server.close());
    const { client } = recordingClient(server.url, { maxBatch: 2 });
    for (let i = 0; i < 5; i++) client.trackFeatureUsage("share", "clicked");
    assert.equal(await client.flush(), 0);
    assert.deepEqual(
      server.requests.map((r) => r.body.events.length),
      [2, 2, 1],
    );
    await client.close();
  });

  test("keepalive only for bodies under the browsers' 64 KiB cap", async () => {
    const inits = [];
    const client = createClient({
      url: "http://metrics.invalid/",
      writeKey: WRITE_KEY,
      flushAt: 1000,
      fetch: async (url, init) => {
        assert.equal(url, "http://metrics.invalid/v1/events");
        inits.push(init);
        const n = JSON.parse(init.body).events.length;
        return new Response(JSON.stringify({ accepted: n, rejected: [] }), { status: 202 });
      },
    });
    client.trackFeatureUsage("share", "clicked");
    await client.flush();
    const bigTags = Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`k${i}`, "x".repeat(200)]));
    for (let i = 0; i < 20; i++) client.trackFeatureUsage("share", "clicked", { tags: bigTags });
    await client.flush();
    assert.equal(inits.length, 2);
    assert.equal(inits[0].keepalive, true);
    assert.ok(Buffer.byteLength(inits[1].body) > 64 * 1024);
    assert.equal(inits[1].keepalive, false);
    await client.close();
  });
});

describe("responses", () => {
  test("503 with Retry-After: the same events are retried no sooner than asked", async (t) => {
    const server = await scriptedServer([{ status: 503, headers: { "Retry-After": "1" }, body: { detail: "Kafka" } }]);
    t.after(() => server.close());
    const { client, errors, results } = recordingClient(server.url);
    for (let i = 0; i < 3; i++) client.trackFeatureUsage("share", "clicked", { userId: `u${i}` });
    assert.equal(await client.flush(), 3, "a retryable failure puts the events back");
    assert.equal(client.stats.retries, 1);
    const [first, second] = await server.waitFor(2, 5000);
    assert.deepEqual(ids(second), ids(first));
    assert.deepEqual(second.body.events, first.body.events, "the events themselves are unchanged");
    assert.ok(second.at - first.at >= 990, `retried after ${second.at - first.at} ms`);
    await until(() => results.length === 2);
    assert.deepEqual(
      results.map((r) => r.status),
      [503, 202],
    );
    assert.ok(results[0].retryInMs >= 1000);
    assert.deepEqual(
      errors.map((e) => e.kind),
      ["retry"],
    );
    assert.ok(errors[0] instanceof CosnapMetricsError);
    assert.equal(errors[0].status, 503);
    await until(() => client.stats.accepted === 3);
    assert.equal(client.stats.buffered, 0);
    await client.close();
  });

  test("429 without Retry-After backs off exponentially, keeping event_ids", async (t) => {
    const server = await scriptedServer([{ status: 429 }, { status: 429 }, { status: 500 }]);
    t.after(() => server.close());
    const { client, results } = recordingClient(server.url, { retryBaseMs: 100 });
    client.trackFeatureUsage("share", "clicked");
    client.trackFeatureUsage("share", "clicked");
    await client.flush();
    const requests = await server.waitFor(4, 5000);
    const gaps = requests.slice(1).map((r, i) => r.at - requests[i].at);
    // Jittered within [half, full] of 100, 200, 400 ms.
    assert.ok(gaps[0] >= 45 && gaps[0] < 1000, `gaps ${gaps}`);
    assert.ok(gaps[1] >= 95 && gaps[1] < 1000, `gaps ${gaps}`);
    assert.ok(gaps[2] >= 195 && gaps[2] < 1500, `gaps ${gaps}`);
    for (const request of requests) assert.deepEqual(ids(request), ids(requests[0]));
    await until(() => results.length === 4);
    assert.deepEqual(
      results.map((r) => r.status),
      [429, 429, 500, 202],
    );
    assert.ok(results[1].retryInMs >= 100 && results[1].retryInMs <= 200);
    await client.close();
  });

  test("a network error re-buffers the events and the retry delivers them", async () => {
    const probe = await scriptedServer();
    const { port } = probe;
    await probe.close(); // nothing listens on the port now
    const { client, results } = recordingClient(`http://127.0.0.1:${port}`, { retryBaseMs: 300 });
    const id = client.trackFeatureUsage("share", "clicked");
    assert.equal(await client.flush(), 1);
    assert.equal(results[0].status, 0);
    assert.ok(results[0].error instanceof Error);
    const server = await scriptedServer([], { port });
    try {
      const [request] = await server.waitFor(1, 5000);
      assert.deepEqual(ids(request), [id]);
    } finally {
      await client.close();
      await server.close();
    }
  });

  for (const status of [400, 401, 403, 413, 415]) {
    test(`${status} drops the request, reports it and does not retry`, async (t) => {
      const server = await scriptedServer([{ status, body: { detail: `refused with ${status}` } }]);
      t.after(() => server.close());
      const { client, errors, results } = recordingClient(server.url, { retryBaseMs: 50 });
      client.trackFeatureUsage("share", "clicked");
      client.trackFeatureUsage("share", "clicked");
      assert.equal(await client.flush(), 0);
      await sleep(300);
      assert.equal(server.requests.length, 1);
      assert.deepEqual(
        errors.map((e) => [e.kind, e.status, e.reason, e.events.length]),
        [["refused", status, `refused with ${status}`, 2]],
      );
      assert.equal(results[0].detail, `refused with ${status}`);
      assert.equal(client.stats.refused, 2);
      assert.equal(client.stats.retries, 0);
      await client.close();
    });
  }

  test("202 with rejected items reports each one and retries nothing", async (t) => {
    const reason = "currency: Value error, currency must be an ISO 4217 code such as USD";
    const server = await scriptedServer([{ status: 202, body: { accepted: 1, rejected: [{ index: 1, reason }] } }]);
    t.after(() => server.close());
    const { client, errors, results } = recordingClient(server.url, { retryBaseMs: 50 });
    client.trackFeatureUsage("share", "clicked");
    const bad = client.trackRevenue("credits.purchase", "1", "usd");
    await client.flush();
    await sleep(200);
    assert.equal(server.requests.length, 1);
    assert.deepEqual(
      errors.map((e) => [e.kind, e.reason, e.event.event_id]),
      [["rejected", reason, bad]],
    );
    assert.deepEqual(results[0].rejected, [{ index: 1, reason, eventId: bad }]);
    assert.deepEqual(
      [client.stats.accepted, client.stats.rejected, client.stats.buffered],
      [1, 1, 0],
    );
    await client.close();
  });

  test("400 rejecting every item counts rejections, not a refused request", async (t) => {
    const body = { accepted: 0, rejected: [{ index: 0, reason: "timestamp too old" }] };
    const server = await scriptedServer([{ status: 400, body }]);
    t.after(() => server.close());
    const { client, errors } = recordingClient(server.url);
    client.trackFeatureUsage("share", "clicked", { timestamp: new Date("2000-01-01T00:00:00Z") });
    await client.flush();
    assert.deepEqual(
      errors.map((e) => e.kind),
      ["rejected"],
    );
    assert.deepEqual([client.stats.rejected, client.stats.refused], [1, 0]);
    await client.close();
  });

  test("a throwing callback does not break the client", async (t) => {
    const server = await scriptedServer([{ status: 503 }]);
    t.after(() => server.close());
    const client = createClient({
      url: server.url,
      writeKey: WRITE_KEY,
      flushAt: 1000,
      retryBaseMs: 50,
      onError: () => {
        throw new Error("logger broke");
      },
      onResult: () => {
        throw new Error("metrics broke");
      },
    });
    client.trackFeatureUsage("share", "clicked");
    await client.flush();
    await until(() => client.stats.accepted === 1, 2000);
    await client.close();
  });
});

describe("buffer and close", () => {
  test("a full buffer drops the oldest events and reports the count once", async (t) => {
    const server = await scriptedServer();
    t.after(() => server.close());
    const { client, errors } = recordingClient(server.url, { maxBuffer: 5 });
    for (let i = 0; i < 8; i++) client.trackFeatureUsage("share", "clicked", { tags: { i: String(i) } });
    assert.deepEqual([client.stats.buffered, client.stats.dropped], [5, 3]);
    await client.flush();
    const [request] = server.requests;
    assert.deepEqual(
      request.body.events.map((e) => e.tags.i),
      ["3", "4", "5", "6", "7"],
    );
    assert.deepEqual(
      errors.map((e) => [e.kind, e.count]),
      [["dropped", 3]],
    );
    await client.close();
  });

  test("tracking never blocks: it returns before any request is made", async (t) => {
    const server = await scriptedServer([{ status: 503, headers: { "Retry-After": "30" } }]);
    t.after(() => server.close());
    const { client, results } = recordingClient(server.url, { flushAt: 1 });
    const started = performance.now();
    for (let i = 0; i < 1000; i++) client.trackRevenue("credits.purchase", "1.00", "USD");
    assert.ok(performance.now() - started < 1000);
    assert.equal(server.requests.length, 0, "sending happens after the calls return");
    await until(() => results.length === 1);
    assert.equal(results[0].eventIds.length, 500, "maxBatch");
    assert.equal(client.stats.buffered, 1000, "back in the buffer, waiting for Retry-After");
    await client.close({ timeoutMs: 0 });
  });

  test("close() waits out Retry-After, delivers, then refuses new events", async (t) => {
    const server = await scriptedServer([{ status: 503, headers: { "Retry-After": "1" } }]);
    t.after(() => server.close());
    const { client, errors } = recordingClient(server.url);
    const id = client.trackFeatureUsage("share", "clicked");
    const started = Date.now();
    const stats = await client.close();
    assert.ok(Date.now() - started >= 990);
    assert.deepEqual(server.requests.map(ids), [[id], [id]]);
    assert.equal(stats.accepted, 1);
    assert.equal(stats.buffered, 0);
    assert.equal(client.trackFeatureUsage("share", "clicked"), null);
    assert.equal(client.stats.dropped, 1);
    assert.deepEqual(
      errors.map((e) => e.kind),
      ["retry", "dropped"],
    );
    assert.equal(client.close(), client.close(), "close is idempotent");
  });

  test("close() gives up after timeoutMs and counts what it could not deliver", async (t) => {
    const server = await scriptedServer([{ status: 503, headers: { "Retry-After": "5" } }]);
    t.after(() => server.close());
    const { client, errors } = recordingClient(server.url);
    client.trackFeatureUsage("share", "clicked");
    client.trackFeatureUsage("share", "clicked");
    const started = Date.now();
    const stats = await client.close({ timeoutMs: 500 });
    assert.ok(Date.now() - started < 2000);
    assert.deepEqual([stats.dropped, stats.buffered, stats.accepted], [2, 0, 0]);
    assert.deepEqual(
      errors.map((e) => [e.kind, e.count]),
      [
        ["retry", undefined],
        ["dropped", 2],
      ],
    );
  });
});

describe("Node", () => {
  // From a file: `node -e` would expose the built-in modules (crypto among them) as globals.
  const runChild = (flags, code) => {
    const dir = mkdtempSync(join(tmpdir(), "cosnap-sdk-"));
    const script = join(dir, "child.mjs");
    writeFileSync(script, code);
    try {
      return spawnSync(process.execPath, [...flags, script], { encoding: "utf8", timeout: 10000 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };

  test("the flush timer does not keep the process alive", () => {
    const started = Date.now();
    const child = runChild(
      [],
      `import { createClient } from ${JSON.stringify(MODULE_URL)};
       const client = createClient({ url: "http://127.0.0.1:9", writeKey: "k", flushIntervalMs: 60000 });
       client.trackFeatureUsage("share", "clicked");
       console.log("tracked");`,
    );
    assert.equal(child.error, undefined, "the child process did not exit by itself");
    assert.equal(child.status, 0, child.stderr);
    assert.equal(child.stdout.trim(), "tracked");
    assert.ok(Date.now() - started < 5000);
  });

  test("event ids are v4 UUIDs even without global crypto (as on Node 18)", () => {
    const child = runChild(
      ["--no-experimental-global-webcrypto"],
      `import { createClient } from ${JSON.stringify(MODULE_URL)};
       const client = createClient({ url: "http://127.0.0.1:9", writeKey: "k" });
       console.log(typeof globalThis.crypto, client.trackFeatureUsage("share", "clicked"));`,
    );
    assert.equal(child.status, 0, child.stderr);
    const [cryptoType, id] = child.stdout.trim().split(" ");
    assert.equal(cryptoType, "undefined");
    assert.match(id, UUID_V4);
  });
});
