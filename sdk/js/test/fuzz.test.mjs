// Generated inputs for the four calls (a seeded generator: the same cases every run, more and
// other ones with COSNAP_FUZZ_SCALE and COSNAP_FUZZ_SEED). A call either throws a TypeError or
// RangeError with a message at the call site, or buffers an event that is delivered: never a
// batch stuck or poisoned for its neighbours, never a retry of a body the API refused with 4xx.
//
// Against a local stand-in answering 202 always; and against the REAL ingest API when
// COSNAP_FUZZ_INGEST_URL and COSNAP_FUZZ_WRITE_KEY are set (tests/sdk/test_js_sdk_fuzz.py does):
// there, every event of a call whose arguments were all good must be accepted.
import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";

import { createClient } from "../cosnap-metrics.mjs";

const SCALE = Number(process.env.COSNAP_FUZZ_SCALE ?? "1");
const SEED = Number(process.env.COSNAP_FUZZ_SEED ?? "20261204");
const LOCAL_CASES = Math.max(1, Math.round(3000 * SCALE));
const REAL_CASES = Math.max(1, Math.round(400 * SCALE));

/** mulberry32: a small seeded PRNG, so a failing case is found again from its seed. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Gen {
  constructor(seed) {
    this.random = prng(seed);
  }
  int(low, high) {
    return low + Math.floor(this.random() * (high - low + 1));
  }
  pick(list) {
    return list[this.int(0, list.length - 1)];
  }
  chance(p) {
    return this.random() < p;
  }
  /** Mostly `good()`, sometimes `bad()`; says which. */
  maybe(good, bad, pBad = 0.25) {
    return this.chance(pBad) ? { value: bad(), good: false } : { value: good(), good: true };
  }
  name() {
    const first = "abcdefghijklmnopqrstuvwxyz";
    const rest = `${first}0123456789_.`;
    let text = this.pick([...first]);
    for (let i = this.int(0, 12); i > 0; i--) text += this.pick([...rest]);
    return text;
  }
  text(max = 20) {
    let text = "";
    for (let i = this.int(1, max); i > 0; i--) {
      const point = this.pick([this.int(0x20, 0x7e), this.int(0xa0, 0xd7ff), this.int(0xe000, 0xfffd), this.int(0x10000, 0x10ffff)]);
      text += String.fromCodePoint(point);
    }
    return text;
  }
  weirdString() {
    return this.pick([
      "",
      " ",
      "\u0000",
      "a\u0000b",
      "\u202eabc",
      "\ud800",
      "\udfff",
      "x\udc00y",
      "e\u0301",
      "\u0661\u0662",
      "\uff11",
      "1e999999999",
      "-1e999999999",
      "0E+100000000",
      "NaN",
      "Infinity",
      "x".repeat(129),
      "y".repeat(70000),
      "z".repeat(1100 * 1024),
      this.text(40),
    ]);
  }
  weirdNumber() {
    return this.pick([NaN, Infinity, -Infinity, -0, 0, 1e308, 5e-324, 1e21, -1e21, Number.MAX_SAFE_INTEGER + 2, 1e15 + 1, 0.1 + 0.2, this.random() * 1e12 - 5e11]);
  }
  anything() {
    const circular = {};
    circular.self = circular;
    return this.pick([
      undefined,
      null,
      true,
      false,
      this.weirdNumber(),
      this.weirdString(),
      10n ** BigInt(this.int(0, 80)),
      [],
      [1, "a"],
      {},
      { a: 1 },
      circular,
      Object.create(null),
      () => 1,
      Symbol("s"),
      new Date(NaN),
      new Date(8.64e15),
      new Date(-8.64e15),
      { toJSON() { throw new Error("toJSON failed"); } },
    ]);
  }
  common() {
    const out = {};
    let good = true;
    for (const key of ["userId", "anonymousId", "sessionId"]) {
      if (this.chance(0.5)) continue;
      const { value, good: ok } = this.maybe(() => this.text(), () => this.anything(), 0.15);
      out[key] = value;
      good &&= ok;
    }
    if (this.chance(0.4)) {
      const { value, good: ok } = this.maybe(
        () => Object.fromEntries(Array.from({ length: this.int(0, 4) }, () => [this.name(), this.text()])),
        () =>
          this.pick([
            this.anything(),
            Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`k${i}`, "v"])),
            { [this.weirdString()]: this.anything() },
          ]),
        0.2,
      );
      out.tags = value;
      good &&= ok;
    }
    if (this.chance(0.2)) {
      out.timestamp = this.pick([new Date(), Date.now(), new Date().toISOString(), this.anything(), new Date("0001-01-01T00:00:00Z"), new Date("9999-12-31T23:59:59Z"), 1e20]);
      good = false;
    }
    if (this.chance(0.05)) {
      out[this.weirdString()] = 1; // an unknown common field
      good = false;
    }
    return { common: out, good };
  }
  /** One call: [method, args, whether every argument was a good one]. */
  call() {
    const kind = this.pick(["revenue", "conversion", "feature", "performance"]);
    const { common, good: commonGood } = this.common();
    const parts = [];
    const arg = (good, bad, pBad = 0.15) => {
      const drawn = this.maybe(good, bad, pBad);
      parts.push(drawn.good);
      return drawn.value;
    };
    const nameArg = () => arg(() => this.name(), () => this.pick([this.weirdString(), this.anything()]));
    let args;
    if (kind === "revenue") {
      args = [
        nameArg(),
        arg(
          () => this.pick([`${this.int(0, 99999)}.${this.int(0, 99)}`, this.int(0, 1000), 4.99, 10n]),
          () => this.pick([this.weirdString(), this.weirdNumber(), this.anything(), "1e999999999", 10n ** 40n]),
        ),
        arg(() => this.pick(["USD", "EUR", "JPY"]), () => this.pick([this.weirdString(), this.anything(), "usd"])),
        common,
      ];
      return ["trackRevenue", args, commonGood && parts.every(Boolean)];
    }
    if (kind === "conversion") {
      if (!("userId" in common) && !("anonymousId" in common)) common.userId = "u1";
      args = [nameArg(), nameArg(), arg(() => this.pick([undefined, this.int(0, 1000)]), () => this.anything()), common];
      const identified = typeof common.userId === "string" || typeof common.anonymousId === "string";
      return ["trackConversionStep", args, identified && commonGood && parts.every(Boolean)];
    }
    if (kind === "feature") {
      args = [nameArg(), nameArg(), common];
      return ["trackFeatureUsage", args, commonGood && parts.every(Boolean)];
    }
    const value = arg(() => this.random() * 1e6, () => this.pick([this.weirdNumber(), this.anything()]));
    const unit = arg(() => this.pick(["ms", "s", "bytes", "count", "percent"]), () => this.pick([this.weirdString(), this.anything()]));
    const severity = arg(() => this.pick([undefined, "info", "critical"]), () => this.pick([this.weirdString(), this.anything()]));
    args = [nameArg(), value, unit, { ...common, severity }];
    return ["trackPerformance", args, commonGood && parts.every(Boolean)];
  }
}

/** Make the call: its event_id, or the TypeError/RangeError it threw (anything else fails). */
function attempt(client, [method, args]) {
  try {
    const id = client[method](...args);
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    return id;
  } catch (error) {
    if (error instanceof assert.AssertionError) throw error;
    assert.ok(error instanceof TypeError || error instanceof RangeError, `${method}: ${error}`);
    assert.ok(error.message.length > 0, `${method}: an error without a message`);
    return error;
  }
}

async function standIn() {
  const bodies = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      bodies.push(body);
      res.writeHead(202, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ accepted: body.events.length, rejected: [] }));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, bodies, close: () => new Promise((r) => server.close(r)) };
}

test(`${LOCAL_CASES} generated calls: a clear error at the call, or an event that is delivered`, async (t) => {
  const api = await standIn();
  t.after(() => api.close());
  const gen = new Gen(SEED);
  const errors = [];
  const client = createClient({ url: api.url, writeKey: "wk", flushAt: 50, onError: (e) => errors.push(e) });
  const ids = [];
  let thrown = 0;
  for (let i = 0; i < LOCAL_CASES; i++) {
    const made = gen.call();
    const outcome = attempt(client, made);
    if (typeof outcome === "string") ids.push(outcome);
    else thrown += 1;
    if (i % 200 === 199) assert.equal(await client.flush(), 0, "events stuck in the buffer");
  }
  const stats = await client.close({ timeoutMs: 20000 });
  assert.ok(ids.length > 0 && thrown > 0, `${ids.length} events, ${thrown} errors: both kinds were generated`);
  assert.equal(stats.buffered, 0);
  const sent = new Set(api.bodies.flatMap((body) => body.events.map((event) => event.event_id)));
  const dropped = new Set(errors.filter((e) => e.kind === "dropped").flatMap((e) => (e.events ?? []).map((ev) => ev.event_id)));
  for (const id of ids) assert.ok(sent.has(id) || dropped.has(id), `event ${id} neither sent nor reported dropped`);
  assert.equal(stats.retries, 0);
  assert.equal(stats.tracked, ids.length);
});

const realUrl = process.env.COSNAP_FUZZ_INGEST_URL;
const realKey = process.env.COSNAP_FUZZ_WRITE_KEY;
if (realUrl && realKey) {
  test(`${REAL_CASES} generated calls on the real API: good events accepted whatever their neighbours`, async () => {
    const gen = new Gen(SEED + 1);
    const results = [];
    const client = createClient({ url: realUrl, writeKey: realKey, flushAt: 1000, onResult: (r) => results.push(r) });
    const good = new Set();
    for (let i = 0; i < REAL_CASES; i++) {
      const made = gen.call();
      const outcome = attempt(client, made);
      if (typeof outcome === "string" && made[2]) good.add(outcome);
      if (i % 10 === 9) await client.flush();
    }
    const stats = await client.close({ timeoutMs: 30000 });
    assert.equal(stats.buffered, 0);
    assert.equal(stats.retries, 0, "nothing is retried: the API answers every body, never with a 5xx");
    const seen = new Set();
    for (const result of results) {
      assert.ok([202, 400, 413].includes(result.status), `status ${result.status}: ${result.detail ?? ""}`);
      for (const id of result.eventIds) {
        assert.ok(!seen.has(id), "an event sent twice");
        seen.add(id);
      }
      const rejected = new Set(result.rejected.map((r) => r.eventId));
      for (const id of result.eventIds) {
        if (good.has(id)) assert.ok(result.status === 202 && !rejected.has(id), `good event ${id} refused: ${JSON.stringify(result)}`);
      }
    }
    for (const id of good) assert.ok(seen.has(id), `good event ${id} never sent`);
    assert.ok(good.size > REAL_CASES / 4, `only ${good.size} good calls`);
  });
}

// Found by the generator above: a BigInt (or a cycle) in an event failed JSON.stringify when the
// batch was built, every time, so that batch and every event after it stayed buffered for good.
test("a value JSON cannot carry throws at the call, and its neighbours are delivered", async (t) => {
  const api = await standIn();
  t.after(() => api.close());
  const client = createClient({ url: api.url, writeKey: "wk", flushAt: 1000 });
  const before = client.trackFeatureUsage("share", "clicked");
  const cycle = {};
  cycle.self = cycle;
  assert.throws(() => client.trackFeatureUsage("share", 10n), { name: "TypeError", message: /BigInt/ });
  assert.throws(() => client.trackConversionStep("onboarding", "signed_up", 1n, { userId: "u1" }), TypeError);
  assert.throws(() => client.trackRevenue(cycle, "9.99", "USD"), { name: "TypeError", message: /JSON/ });
  const after = client.trackFeatureUsage("share", "sent");
  assert.equal(await client.flush(), 0);
  assert.deepEqual(
    api.bodies.flatMap((body) => body.events.map((event) => event.event_id)),
    [before, after],
  );
});
