// The browser path: when the page is hidden or unloaded, the buffer goes out through
// navigator.sendBeacon as text/plain with the write key in the body. `document`, the window's
// events and `navigator` are stand-ins installed on globalThis (this file runs in its own process).
import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

import { createClient } from "../cosnap-metrics.mjs";

const URL_BASE = "https://metrics.example.com";
const WRITE_KEY = "wk_beacon_0123456789";
const BEACON_LIMIT = 64 * 1024;

class FakeDocument extends EventTarget {
  visibilityState = "visible";
}

const page = new EventTarget(); // the window: `pagehide` fires on it
globalThis.addEventListener = page.addEventListener.bind(page);
globalThis.removeEventListener = page.removeEventListener.bind(page);
const document = new FakeDocument();
globalThis.document = document;

let beacons; // [{url, data}]
let acceptBeacon; // what sendBeacon answers: true = queued
let fetches; // requests that went through fetch instead
let clients;

function setNavigator(value) {
  Object.defineProperty(globalThis, "navigator", { value, configurable: true, writable: true });
}

beforeEach(() => {
  beacons = [];
  fetches = [];
  clients = [];
  acceptBeacon = () => true;
  document.visibilityState = "visible";
  setNavigator({
    sendBeacon(url, data) {
      beacons.push({ url, data });
      return acceptBeacon(data);
    },
  });
});

afterEach(async () => {
  await Promise.all(clients.map((client) => client.close()));
});

function newClient(options = {}) {
  const client = createClient({
    url: URL_BASE,
    writeKey: WRITE_KEY,
    flushIntervalMs: 60000,
    flushAt: 1000,
    fetch: async (url, init) => {
      fetches.push({ url, init });
      const n = JSON.parse(init.body).events.length;
      return new Response(JSON.stringify({ accepted: n, rejected: [] }), { status: 202 });
    },
    ...options,
  });
  clients.push(client);
  return client;
}

function hide() {
  document.visibilityState = "hidden";
  document.dispatchEvent(new Event("visibilitychange"));
}

async function beaconBody({ data }) {
  return JSON.parse(await data.text());
}

test("hiding the page sends the buffer as a text/plain beacon with api_key", async () => {
  const client = newClient({ source: "frontend" });
  const sent = [
    client.trackFeatureUsage("ai_effect.anime", "applied", { anonymousId: "a1" }),
    client.trackConversionStep("onboarding", "photo_uploaded", 2, { anonymousId: "a1" }),
    client.trackPerformance("page.load", 1.2, "s"),
  ];
  hide();
  assert.equal(beacons.length, 1);
  const [beacon] = beacons;
  assert.equal(beacon.url, `${URL_BASE}/v1/events`);
  assert.ok(beacon.data instanceof Blob);
  assert.equal(beacon.data.type, "text/plain");
  const body = await beaconBody(beacon);
  assert.equal(body.api_key, WRITE_KEY);
  assert.match(body.sent_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.deepEqual(
    body.events.map((e) => e.event_id),
    sent,
  );
  assert.deepEqual(
    body.events.map((e) => [e.type, e.source]),
    [
      ["feature", "frontend"],
      ["conversion", "frontend"],
      ["performance", "frontend"],
    ],
  );
  assert.deepEqual([client.stats.beaconed, client.stats.buffered], [3, 0]);
  assert.equal(fetches.length, 0);
});

test("becoming visible sends nothing; pagehide sends too", () => {
  const client = newClient();
  client.trackFeatureUsage("share", "clicked");
  document.dispatchEvent(new Event("visibilitychange"));
  assert.equal(beacons.length, 0);
  page.dispatchEvent(new Event("pagehide"));
  assert.equal(beacons.length, 1);
  assert.equal(client.stats.buffered, 0);
});

test("a beacon the browser refuses leaves its events buffered for fetch", async () => {
  acceptBeacon = () => false;
  const client = newClient();
  const id = client.trackFeatureUsage("share", "clicked");
  hide();
  assert.equal(beacons.length, 1);
  assert.deepEqual([client.stats.beaconed, client.stats.buffered], [0, 1]);
  await client.flush();
  assert.deepEqual(
    JSON.parse(fetches[0].init.body).events.map((e) => e.event_id),
    [id],
  );
});

test("a large buffer is split into beacons under the 64 KiB cap, in order", async () => {
  const client = newClient();
  const tags = Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`k${i}`, "x".repeat(200)]));
  const sent = [];
  for (let i = 0; i < 40; i++) sent.push(client.trackFeatureUsage("share", "clicked", { tags }));
  hide();
  assert.ok(beacons.length > 1);
  const received = [];
  for (const beacon of beacons) {
    assert.ok(beacon.data.size <= BEACON_LIMIT, `beacon of ${beacon.data.size} bytes`);
    received.push(...(await beaconBody(beacon)).events.map((e) => e.event_id));
  }
  assert.deepEqual(received, sent);
});

test("without sendBeacon the buffer goes out by keepalive fetch", async () => {
  setNavigator({});
  const client = newClient();
  client.trackFeatureUsage("share", "clicked");
  hide();
  await client.flush();
  assert.equal(fetches.length, 1);
  assert.equal(fetches[0].init.keepalive, true);
});

test("close() removes the page listeners", async () => {
  const client = newClient();
  await client.close();
  client.trackFeatureUsage("share", "clicked");
  hide();
  page.dispatchEvent(new Event("pagehide"));
  assert.equal(beacons.length, 0);
});

test("back online, events waiting for a retry are sent at once, not after the backoff", async () => {
  const statuses = [503, 202];
  const sent = [];
  const client = newClient({
    retryBaseMs: 60000, // the backoff alone would hold the retry for 30-60 s
    fetch: async (_url, init) => {
      sent.push(JSON.parse(init.body).events.map((e) => e.event_id));
      const status = statuses.shift() ?? 202;
      const n = JSON.parse(init.body).events.length;
      return new Response(JSON.stringify(status === 202 ? { accepted: n, rejected: [] } : { detail: "down" }), {
        status,
      });
    },
  });
  const id = client.trackRevenue("subscription", "9.99", "USD"); // revenue: sent at once
  await client.flush();
  assert.deepEqual([sent.length, client.stats.retries, client.stats.buffered], [1, 1, 1]);
  page.dispatchEvent(new Event("online"));
  await client.flush();
  assert.deepEqual(sent, [[id], [id]]); // the same event_id: the API counts it once
  assert.deepEqual([client.stats.accepted, client.stats.buffered], [1, 0]);
});

test("close() stops listening for online", async () => {
  let requests = 0;
  const client = newClient({
    fetch: async () => {
      requests += 1;
      return new Response(JSON.stringify({ detail: "down" }), { status: 503 });
    },
  });
  client.trackRevenue("subscription", "9.99", "USD");
  await client.close({ timeoutMs: 0 });
  page.dispatchEvent(new Event("online"));
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(requests, 1);
});
