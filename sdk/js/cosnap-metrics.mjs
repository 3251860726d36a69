/**
 * Cosnap Metrics client for browsers and Node 18+: the four calls of the app's
 * BusinessMetricsService, buffered and sent in batches to the ingest API (`POST /v1/events`).
 *
 * Plain ESM, no dependencies, no build step. Tracking never blocks and never throws for
 * transport problems: events wait in a bounded buffer (oldest dropped first when full), are
 * retried with backoff on 429/5xx/network errors under the same `event_id`s (the API and the
 * `metrics.events` table deduplicate on them), and in a browser are handed to
 * `navigator.sendBeacon` when the page is hidden or unloaded.
 *
 * @module cosnap-metrics-sdk
 */

const EVENTS_PATH = "/v1/events";
const API_MAX_EVENTS = 1000; // the API refuses larger batches (413)
const API_MAX_BODY_BYTES = 1024 * 1024; // ...and bodies over 1 MiB (413)
// Browsers cap the bodies of all in-flight keepalive requests and beacons at 64 KiB together;
// the margin leaves room for a beacon sent while a keepalive fetch is still on the wire.
const KEEPALIVE_MAX_BYTES = 60 * 1024;
const MAX_UNIT_CHARS = 32; // the API keeps any unit up to this length; ms, s, bytes, count, percent are known
const COMMON_KEYS = new Set(["userId", "anonymousId", "sessionId", "tags", "timestamp"]);
// The API's tag limits, which the guide's `metadata` is fitted into (docs/reference.md, "Events").
const MAX_TAGS = 32;
const MAX_TAG_VALUE_CHARS = 200;
const TAG_KEY = /^[A-Za-z0-9_.:-]{1,64}$/;
const GUIDE_FUNNEL = "default"; // a guide conversion's funnel, unless `metadata.funnel` names one

/**
 * @typedef {object} CommonFields Optional fields of every event.
 * @property {string} [userId] Sent as `user_id`.
 * @property {string} [anonymousId] Sent as `anonymous_id`.
 * @property {string} [sessionId] Sent as `session_id`.
 * @property {Record<string, string>} [tags] Up to 32 string pairs; values are converted with `String()`.
 * @property {Date | number | string} [timestamp] When it happened; defaults to now.
 */

/**
 * @typedef {object} RequestResult What one `POST /v1/events` came to, passed to `onResult`.
 * @property {number} status HTTP status, or 0 when no response arrived (network error, timeout).
 * @property {string[]} eventIds The `event_id`s the request carried, in order.
 * @property {number} accepted Events the API accepted.
 * @property {{index: number, reason: string, eventId: string}[]} rejected Events it refused one by one.
 * @property {boolean} keepalive Whether the request was sent with `keepalive: true`.
 * @property {number} [retryInMs] Set when the events went back to the buffer for a retry.
 * @property {string} [requestId] The API's `X-Request-ID`, for its logs and dead letters.
 * @property {string} [detail] The API's reason when it refused the whole request.
 * @property {unknown} [error] The network error, when there was no response.
 */

/**
 * @typedef {object} ClientStats Counters since the client was created.
 * @property {number} tracked Events created by `track*`.
 * @property {number} accepted Events the API accepted (202).
 * @property {number} rejected Events the API refused one by one (validation); never retried.
 * @property {number} refused Events lost because the API refused a whole request (400/401/403/413/415...).
 * @property {number} dropped Events dropped by the client: buffer full, tracked after close, or still buffered when close gave up.
 * @property {number} retries Requests that failed transiently (429, 5xx, network) and were scheduled again.
 * @property {number} requests HTTP requests sent (beacons not included).
 * @property {number} beaconed Events handed to `navigator.sendBeacon` (their outcome is unknown).
 * @property {number} buffered Events waiting in the buffer now.
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} url Base URL of the ingest API, e.g. `https://metrics.example.com`.
 * @property {string} writeKey The project's write key (`cosnap-metrics keys create`).
 * @property {number} [flushIntervalMs=30000] Send what is buffered this often.
 * @property {number} [flushAt=100] Send as soon as this many events are buffered.
 * @property {number} [maxBuffer=10000] Buffer bound; the oldest event is dropped beyond it.
 * @property {number} [maxBatch=500] Events per request (the API takes at most 1,000).
 * @property {string} [source] `source` of every event (`frontend`, `backend`, ...).
 * @property {string} [environment] `environment` of every event.
 * @property {string} [release] `release` of every event.
 * @property {typeof globalThis.fetch} [fetch] The fetch to use; defaults to the global one.
 * @property {(error: CosnapMetricsError) => void} [onError] Told about rejected, refused, dropped
 *   and retried events. Called synchronously; exceptions it throws are swallowed.
 * @property {(result: RequestResult) => void} [onResult] Told about every HTTP request's outcome.
 * @property {number} [requestTimeoutMs=30000] Abort a request that has not answered by then (and retry it).
 * @property {number} [retryBaseMs=500] First retry delay; doubles per consecutive failure.
 * @property {number} [retryMaxMs=30000] Longest retry delay (a `Retry-After` may ask for longer).
 * @property {boolean} [beaconOnHide=true] In a browser, `sendBeacon` the buffer on `visibilitychange`
 *   to hidden and on `pagehide`, and send it at once when the browser is back `online`.
 * @property {{addBreadcrumb: (breadcrumb: object) => void} | false} [sentry] Where a breadcrumb per
 *   tracked event goes; defaults to a global `Sentry` (the browser SDK's), `false` for none.
 */

/**
 * Why `onError` was called. `kind` is one of:
 * - `"rejected"`: the API refused one event (`event`, `reason`); it is not retried.
 * - `"refused"`: the API refused a whole request (`status`, `reason`, `events`); not retried.
 * - `"retry"`: a transient failure (`status` 429/5xx, or 0 for network); `events` stay buffered
 *   and are sent again after `retryInMs`.
 * - `"dropped"`: `count` events were dropped by the client (buffer full, closed, too large).
 */
export class CosnapMetricsError extends Error {
  /**
   * @param {"rejected" | "refused" | "retry" | "dropped"} kind
   * @param {string} message
   * @param {object} [details] `status`, `reason`, `event`, `events`, `count`, `retryInMs`, `cause`.
   */
  constructor(kind, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "CosnapMetricsError";
    this.kind = kind;
    const { cause: _cause, ...rest } = details;
    Object.assign(this, rest);
  }
}

/**
 * An RFC 4122 v4 id. `crypto.randomUUID` exists in Node 19+ and in browsers on secure origins;
 * `getRandomValues` also on plain-http pages; Node 18 has neither without a flag, hence the last
 * resort (the id is an idempotency key, not a secret).
 * @returns {string}
 */
function newEventId() {
  const webCrypto = globalThis.crypto;
  if (webCrypto && typeof webCrypto.randomUUID === "function") return webCrypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (webCrypto && typeof webCrypto.getRandomValues === "function") {
    webCrypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const encoder = new TextEncoder();
const byteLength = (text) => encoder.encode(text).length;

/** Don't let a timer keep a Node process alive; browsers return numbers and need nothing. */
function unref(timer) {
  if (timer && typeof timer === "object" && typeof timer.unref === "function") timer.unref();
  return timer;
}

function positiveInteger(name, value) {
  if (!Number.isInteger(value) || value < 1) throw new TypeError(`${name} must be a positive integer`);
  return value;
}

function decimalString(amount) {
  if (typeof amount === "string") {
    if (amount.trim() === "") throw new TypeError("amount must not be empty");
    return amount.trim();
  }
  if (typeof amount === "bigint") return String(amount);
  if (typeof amount === "number") {
    if (!Number.isFinite(amount)) throw new RangeError("amount must be finite (not NaN or Infinity)");
    return String(amount);
  }
  throw new TypeError("amount must be a decimal string or a finite number");
}

/**
 * The event as plain JSON data, made at the call: a value JSON cannot carry (a BigInt, a cycle,
 * a `toJSON` that throws) raises a TypeError here, in the caller's code, instead of failing
 * every later batch it would be part of; and what is buffered no longer changes with the
 * caller's objects.
 */
function plainJson(event) {
  let text;
  try {
    text = JSON.stringify(event);
  } catch (cause) {
    throw new TypeError(`event cannot be sent as JSON: ${cause?.message ?? cause}`, { cause });
  }
  return JSON.parse(text);
}

/**
 * The guide's `metadata` as tags the API keeps: string, number and boolean values of at most 200
 * characters under valid keys, the first 32 of them; anything else is left out.
 */
function guideTags(metadata) {
  if (metadata == null || typeof metadata !== "object") return {};
  const tags = {};
  let kept = 0;
  for (const [key, value] of Object.entries(metadata)) {
    if (kept === MAX_TAGS) break;
    if (!TAG_KEY.test(key) || !["string", "number", "boolean"].includes(typeof value)) continue;
    const text = String(value);
    if (text.length > MAX_TAG_VALUE_CHARS) continue;
    tags[key] = text;
    kept += 1;
  }
  return tags;
}

/** Seconds (`"5"`) or an HTTP date; undefined when absent or unreadable. */
function retryAfterMs(header, now) {
  if (!header) return undefined;
  const text = header.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/**
 * Create a client. Call it once per process or page and share it.
 *
 * @param {ClientOptions} options
 * @returns {MetricsClient}
 * @throws {TypeError} when `url`, `writeKey` or `fetch` is missing, or a size option is not a positive integer.
 */
export function createClient(options) {
  return new MetricsClient(options);
}

/** The client returned by {@link createClient}. */
export class MetricsClient {
  #endpoint;
  #writeKey;
  #fetch;
  #defaults;
  #flushAt;
  #maxBuffer;
  #maxBatch;
  #requestTimeoutMs;
  #retryBaseMs;
  #retryMaxMs;
  #onError;
  #onResult;
  #sentry;
  #businessMetrics;

  /** @type {object[]} */
  #buffer = [];
  #stats = { tracked: 0, accepted: 0, rejected: 0, refused: 0, dropped: 0, retries: 0, requests: 0, beaconed: 0 };
  #unreportedDrops = 0;
  #chain = Promise.resolve();
  #drainQueued = null;
  #attempt = 0; // consecutive transient failures
  #retryAt = 0; // no request before this time (Date.now() ms)
  #retryTimer = undefined;
  #intervalTimer;
  #closed = false;
  #closing = null;
  #removeListeners = () => {};

  /** @param {ClientOptions} options */
  constructor({
    url,
    writeKey,
    flushIntervalMs = 30000,
    flushAt = 100,
    maxBuffer = 10000,
    maxBatch = 500,
    source,
    environment,
    release,
    fetch = globalThis.fetch,
    onError,
    onResult,
    requestTimeoutMs = 30000,
    retryBaseMs = 500,
    retryMaxMs = 30000,
    beaconOnHide = true,
    sentry,
  } = {}) {
    if (typeof url !== "string" || url === "") throw new TypeError("url is required");
    if (typeof writeKey !== "string" || writeKey === "") throw new TypeError("writeKey is required");
    if (typeof fetch !== "function") throw new TypeError("no global fetch here; pass options.fetch");
    this.#endpoint = url.replace(/\/+$/, "") + EVENTS_PATH;
    this.#writeKey = writeKey;
    this.#fetch = fetch;
    this.#defaults = Object.fromEntries(
      Object.entries({ source, environment, release }).filter(([, value]) => value !== undefined),
    );
    this.#flushAt = positiveInteger("flushAt", flushAt);
    this.#maxBuffer = positiveInteger("maxBuffer", maxBuffer);
    this.#maxBatch = Math.min(positiveInteger("maxBatch", maxBatch), API_MAX_EVENTS);
    this.#requestTimeoutMs = positiveInteger("requestTimeoutMs", requestTimeoutMs);
    this.#retryBaseMs = positiveInteger("retryBaseMs", retryBaseMs);
    this.#retryMaxMs = positiveInteger("retryMaxMs", retryMaxMs);
    this.#onError = typeof onError === "function" ? onError : undefined;
    this.#onResult = typeof onResult === "function" ? onResult : undefined;
    this.#sentry = sentry;
    this.#intervalTimer = unref(
      setInterval(() => {
        if (this.#buffer.length > 0) this.#drainSoon();
      }, positiveInteger("flushIntervalMs", flushIntervalMs)),
    );
    if (beaconOnHide) this.#listenForPageHide();
  }

  /**
   * Track a payment. Sent at once (revenue is never left waiting for a batch).
   *
   * @param {string} name What was paid for, e.g. `"subscription.renewal"`.
   * @param {string | number | bigint} amount A decimal string (`"9.99"`, every digit kept) or a number (sent as `String(n)`).
   * @param {string} currency ISO 4217 code, e.g. `"USD"`.
   * @param {CommonFields} [common]
   * @returns {string | null} The event's `event_id`, or null once the client is closed.
   * @throws {TypeError | RangeError} for an amount that is not a decimal (NaN, Infinity, empty, an object) or a bad common field.
   */
  trackRevenue(name, amount, currency, common) {
    return this.#track({ type: "revenue", name, amount: decimalString(amount), currency }, common, true);
  }

  /**
   * Track a funnel step. The API needs `userId` or `anonymousId` for it.
   * `stepIndex` may be left out: `trackConversionStep("onboarding", "signed_up", { userId })`.
   *
   * @param {string} funnel e.g. `"onboarding"`.
   * @param {string} step e.g. `"photo_uploaded"`.
   * @param {number} [stepIndex] The step's position in the funnel (0-1000).
   * @param {CommonFields} [common]
   * @returns {string | null} The event's `event_id`, or null once the client is closed.
   * @throws {TypeError} for a bad common field.
   */
  trackConversionStep(funnel, step, stepIndex, common) {
    if (stepIndex !== null && typeof stepIndex === "object") [stepIndex, common] = [undefined, stepIndex];
    const event = { type: "conversion", funnel, step };
    if (stepIndex !== undefined && stepIndex !== null) event.step_index = stepIndex;
    return this.#track(event, common, false);
  }

  /**
   * Track the use of a feature.
   *
   * @param {string} feature e.g. `"ai_effect.anime"`.
   * @param {string} action e.g. `"applied"`.
   * @param {CommonFields} [common]
   * @returns {string | null} The event's `event_id`, or null once the client is closed.
   * @throws {TypeError} for a bad common field.
   */
  trackFeatureUsage(feature, action, common) {
    return this.#track({ type: "feature", feature, action }, common, false);
  }

  /**
   * Track a measurement. `severity` goes to `tags.severity`; `"critical"` is sent at once.
   *
   * @param {string} metric e.g. `"api.latency"`.
   * @param {number} value A finite number.
   * @param {string} [unit="ms"] `ms`, `s`, `bytes`, `count`, `percent` (the API also reads
   *   `milliseconds`, `sec`, `%`, ... as these), or another unit of at most 32 characters (`"fps"`).
   * @param {CommonFields & {severity?: string}} [options]
   * @returns {string | null} The event's `event_id`, or null once the client is closed.
   * @throws {TypeError | RangeError} for a value that is not a finite number, a unit that is not a
   *   short string, or a bad common field.
   */
  trackPerformance(metric, value, unit = "ms", options = {}) {
    if (typeof value !== "number" || !Number.isFinite(value)) {
      throw new RangeError("value must be a finite number (not NaN or Infinity)");
    }
    if (typeof unit !== "string" || unit.trim() === "" || unit.trim().length > MAX_UNIT_CHARS) {
      throw new TypeError(`unit must be a string of 1-${MAX_UNIT_CHARS} characters, e.g. "ms"`);
    }
    const { severity, ...common } = options ?? {};
    if (severity !== undefined && severity !== null) {
      common.tags = { ...(common.tags ?? {}), severity: String(severity) };
    }
    return this.#track({ type: "performance", metric, value, unit }, common, severity === "critical");
  }

  /**
   * The monitoring guide's `BusinessMetricsService` calls, over this client's four. `metadata`
   * becomes tags (strings, numbers and booleans under keys `^[A-Za-z0-9_.:-]{1,64}$`, values of
   * at most 200 characters, the first 32; the rest is left out); `metadata.severity` goes to
   * `tags.severity`, and `"critical"` sends the event at once, as revenue always is.
   *
   * - `trackRevenueEvent(eventType, amount, currency = "USD", metadata = {})`
   * - `trackConversionStep(step, userId, metadata = {})`: funnel `metadata.funnel`, else `"default"`
   * - `trackFeatureUsage(feature, action, userId, metadata = {})`
   * - `trackPerformanceMetric(metricName, value, unit = "ms", metadata = {})`
   *
   * Each returns the event's `event_id` (null once closed) and throws as the call it stands for.
   */
  get businessMetrics() {
    this.#businessMetrics ??= Object.freeze({
      trackRevenueEvent: (eventType, amount, currency = "USD", metadata = {}) =>
        this.#trackGuide(
          { type: "revenue", name: eventType, amount: decimalString(amount), currency },
          undefined,
          metadata,
          true,
        ),
      trackConversionStep: (step, userId, metadata = {}) => {
        const funnel = typeof metadata?.funnel === "string" ? metadata.funnel : GUIDE_FUNNEL;
        const { funnel: _funnel, ...rest } = metadata ?? {};
        return this.#trackGuide({ type: "conversion", funnel, step }, userId, rest, false);
      },
      trackFeatureUsage: (feature, action, userId, metadata = {}) =>
        this.#trackGuide({ type: "feature", feature, action }, userId, metadata, false),
      trackPerformanceMetric: (metricName, value, unit = "ms", metadata = {}) => {
        const { severity: _severity, ...rest } = metadata ?? {};
        const options = { tags: guideTags(rest) };
        if (metadata?.severity != null) options.severity = metadata.severity;
        return this.trackPerformance(metricName, value, unit, options);
      },
    });
    return this.#businessMetrics;
  }

  /**
   * Send everything buffered now, in batches of `maxBatch`. Never rejects. Resolves once those
   * events were accepted, rejected or refused, or when a transient failure put them back in
   * the buffer for a retry after the backoff (the promise does not wait for that retry).
   *
   * @returns {Promise<number>} The number of events still buffered.
   */
  flush() {
    return this.#drainSoon().then(() => this.#buffer.length);
  }

  /**
   * Stop the timer and the page listeners, then send what is buffered, retrying transient
   * failures (honouring backoff and `Retry-After`) until `timeoutMs` has passed. Events still
   * undelivered then are dropped (counted and reported). Tracking after close drops the event.
   * In Node, await it before the process exits: it is what keeps the process alive for delivery.
   *
   * @param {{timeoutMs?: number}} [options] How long to keep retrying; default 10 s.
   * @returns {Promise<ClientStats>} The final counters. Never rejects; repeated calls return the same promise.
   */
  close({ timeoutMs = 10000 } = {}) {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    clearInterval(this.#intervalTimer);
    clearTimeout(this.#retryTimer);
    this.#removeListeners();
    this.#closing = (async () => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        await this.#drainSoon();
        if (this.#buffer.length === 0) break;
        const wait = Math.max(0, this.#retryAt - Date.now());
        if (Date.now() + wait > deadline) break;
        // A referenced timer: this wait is what keeps a Node process alive until delivery.
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
      if (this.#buffer.length > 0) {
        const left = this.#buffer.splice(0);
        this.#drop(left.length, "client closed before these events could be delivered", left);
      }
      this.#reportDrops();
      return this.stats;
    })();
    return this.#closing;
  }

  /** @returns {ClientStats} A snapshot of the counters. */
  get stats() {
    return { ...this.#stats, buffered: this.#buffer.length };
  }

  // -- tracking ------------------------------------------------------------------------------

  #trackGuide(fields, userId, metadata, urgent) {
    const common = { tags: guideTags(metadata) };
    if (userId != null) common.userId = userId;
    return this.#track(fields, common, urgent || metadata?.severity === "critical");
  }

  #track(fields, common, urgent) {
    const event = plainJson({ ...fields, ...this.#commonFields(common) });
    if (this.#closed) {
      this.#drop(1, "tracked after close()", [event]);
      this.#reportDrops();
      return null;
    }
    this.#stats.tracked += 1;
    this.#breadcrumb(event);
    this.#buffer.push(event);
    if (this.#buffer.length > this.#maxBuffer) {
      this.#buffer.shift();
      this.#drop(1);
    }
    if ((urgent || this.#buffer.length >= this.#flushAt) && Date.now() >= this.#retryAt) this.#drainSoon();
    return event.event_id;
  }

  #commonFields(common) {
    common = common ?? {};
    if (typeof common !== "object") throw new TypeError("common fields must be an object");
    for (const key of Object.keys(common)) {
      if (!COMMON_KEYS.has(key)) throw new TypeError(`unknown common field ${JSON.stringify(key)}`);
    }
    const { userId, anonymousId, sessionId, tags, timestamp } = common;
    const when = timestamp === undefined ? new Date() : timestamp instanceof Date ? timestamp : new Date(timestamp);
    if (Number.isNaN(when.getTime())) throw new TypeError("timestamp is not a valid date");
    const out = { event_id: newEventId(), timestamp: when.toISOString(), ...this.#defaults };
    if (userId != null) out.user_id = String(userId);
    if (anonymousId != null) out.anonymous_id = String(anonymousId);
    if (sessionId != null) out.session_id = String(sessionId);
    if (tags != null) {
      if (typeof tags !== "object") throw new TypeError("tags must be an object of strings");
      const entries = Object.entries(tags).filter(([, v]) => v != null);
      if (entries.length > 0) out.tags = Object.fromEntries(entries.map(([k, v]) => [k, String(v)]));
    }
    return out;
  }

  // -- sending -------------------------------------------------------------------------------

  /** Queue one drain after the running one; calls made before it starts share it. */
  #drainSoon() {
    if (this.#drainQueued) return this.#drainQueued;
    const run = this.#chain
      .then(() => {
        this.#drainQueued = null;
        return this.#drain();
      })
      .catch(() => {}); // #drain does not throw; this keeps the chain alive if it ever does
    this.#drainQueued = run;
    this.#chain = run;
    return run;
  }

  /** Send the events buffered at the start, batch by batch, until done or backing off. */
  async #drain() {
    let budget = this.#buffer.length;
    while (budget > 0 && this.#buffer.length > 0 && Date.now() >= this.#retryAt) {
      const batch = this.#takeBatch(Math.min(budget, this.#maxBatch));
      if (batch === null) {
        budget -= 1;
        continue;
      }
      budget -= batch.events.length;
      if (!(await this.#send(batch))) break;
    }
  }

  /** Up to `limit` events from the front of the buffer, shrunk until the body fits the API. */
  #takeBatch(limit) {
    let count = Math.min(limit, this.#buffer.length);
    for (;;) {
      const events = this.#buffer.slice(0, count);
      const body = JSON.stringify({ events, sent_at: new Date().toISOString() });
      const bytes = byteLength(body);
      if (bytes <= API_MAX_BODY_BYTES) {
        this.#buffer.splice(0, count);
        return { events, body, keepalive: bytes <= KEEPALIVE_MAX_BYTES };
      }
      if (count === 1) {
        this.#buffer.splice(0, 1);
        this.#drop(1, "event larger than the API's 1 MiB body limit", events);
        return null;
      }
      count = Math.ceil(count / 2);
    }
  }

  /** One request. Returns false when the events went back to the buffer for a retry. */
  async #send({ events, body, keepalive }) {
    this.#reportDrops(); // once per request, not once per dropped event
    this.#stats.requests += 1;
    const eventIds = events.map((e) => e.event_id);
    const abort = typeof AbortController === "function" ? new AbortController() : undefined;
    const timer = abort ? unref(setTimeout(() => abort.abort(), this.#requestTimeoutMs)) : undefined;
    let status = 0;
    let payload = null;
    let response;
    let error;
    // Called unbound: a browser's fetch throws "Illegal invocation" when `this` is not the window.
    const fetch = this.#fetch;
    try {
      response = await fetch(this.#endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${this.#writeKey}` },
        body,
        keepalive,
        signal: abort?.signal,
      });
      status = response.status;
      const text = await response.text();
      try {
        payload = text ? JSON.parse(text) : null;
      } catch {
        payload = null;
      }
    } catch (caught) {
      error = caught;
    } finally {
      clearTimeout(timer);
    }
    const result = { status, eventIds, accepted: 0, rejected: [], keepalive };
    const requestId = response?.headers?.get?.("x-request-id");
    if (requestId) result.requestId = requestId;

    if (error !== undefined || status === 408 || status === 429 || status >= 500) {
      return this.#retryLater(events, result, error ?? new Error(`HTTP ${status}`), response);
    }

    this.#attempt = 0;
    if (status >= 200 && status < 300) {
      result.accepted = Number.isInteger(payload?.accepted) ? payload.accepted : events.length;
    }
    const rejections = Array.isArray(payload?.rejected) ? payload.rejected : null;
    if (rejections && (result.accepted > 0 || rejections.length > 0)) {
      this.#stats.accepted += result.accepted;
      for (const { index, reason } of rejections) {
        const event = events[index];
        result.rejected.push({ index, reason, eventId: event?.event_id });
        this.#stats.rejected += 1;
        this.#report(new CosnapMetricsError("rejected", `event rejected: ${reason}`, { status, reason, event }));
      }
    } else if (status >= 200 && status < 300) {
      this.#stats.accepted += result.accepted;
    } else {
      const reason = typeof payload?.detail === "string" ? payload.detail : `HTTP ${status}`;
      result.detail = reason;
      this.#stats.refused += events.length;
      this.#report(
        new CosnapMetricsError("refused", `request refused (${status}): ${reason}`, { status, reason, events }),
      );
    }
    this.#notify(result);
    return true;
  }

  #retryLater(events, result, error, response) {
    this.#buffer.unshift(...events); // the same events, so the same event_ids
    const overflow = this.#buffer.length - this.#maxBuffer;
    if (overflow > 0) {
      this.#buffer.splice(0, overflow);
      this.#drop(overflow);
    }
    const now = Date.now();
    const backoff = Math.min(this.#retryMaxMs, this.#retryBaseMs * 2 ** this.#attempt);
    const jittered = backoff / 2 + (Math.random() * backoff) / 2;
    const asked = retryAfterMs(response?.headers?.get?.("retry-after"), now) ?? 0;
    const delay = Math.ceil(Math.max(jittered, asked));
    this.#attempt += 1;
    this.#retryAt = now + delay;
    this.#stats.retries += 1;
    result.retryInMs = delay;
    if (result.status === 0) result.error = error;
    this.#report(
      new CosnapMetricsError("retry", `transient failure (${result.status || String(error)}); retrying`, {
        status: result.status,
        retryInMs: delay,
        events,
        cause: error,
      }),
    );
    this.#notify(result);
    if (!this.#closed) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = unref(
        setTimeout(() => {
          this.#retryAt = 0; // timers may fire a millisecond before Date.now() says they are due
          this.#drainSoon();
        }, delay),
      );
    }
    return false;
  }

  // -- browsers ------------------------------------------------------------------------------

  #listenForPageHide() {
    const doc = globalThis.document;
    const win = globalThis;
    const hasDoc = doc && typeof doc.addEventListener === "function";
    const hasWin = typeof win.addEventListener === "function";
    if (!hasDoc && !hasWin) return; // Node, workers without a page: nothing to listen to
    const onVisibility = () => {
      if (doc.visibilityState === "hidden") this.#beacon();
    };
    const onPageHide = () => this.#beacon();
    const onOnline = () => {
      // Back online: what waits for a retry goes now rather than after the backoff.
      clearTimeout(this.#retryTimer);
      this.#retryAt = 0;
      if (this.#buffer.length > 0) this.#drainSoon();
    };
    if (hasDoc) doc.addEventListener("visibilitychange", onVisibility);
    if (hasWin) win.addEventListener("pagehide", onPageHide);
    if (hasWin) win.addEventListener("online", onOnline);
    this.#removeListeners = () => {
      if (hasDoc) doc.removeEventListener("visibilitychange", onVisibility);
      if (hasWin) win.removeEventListener("pagehide", onPageHide);
      if (hasWin) win.removeEventListener("online", onOnline);
    };
  }

  /**
   * Hand the buffer to `navigator.sendBeacon` in bodies under the browser's 64 KiB cap: text/plain
   * with `api_key` inside, since a beacon cannot carry headers. Without sendBeacon, a keepalive
   * fetch is the next best thing. A beacon the browser refuses leaves its events buffered.
   */
  #beacon() {
    const nav = globalThis.navigator;
    if (!nav || typeof nav.sendBeacon !== "function" || typeof Blob !== "function") {
      if (this.#buffer.length > 0) this.#drainSoon();
      return;
    }
    while (this.#buffer.length > 0) {
      let count = Math.min(this.#buffer.length, this.#maxBatch);
      let text;
      for (;;) {
        const events = this.#buffer.slice(0, count);
        text = JSON.stringify({ events, sent_at: new Date().toISOString(), api_key: this.#writeKey });
        if (byteLength(text) <= KEEPALIVE_MAX_BYTES || count === 1) break;
        count = Math.ceil(count / 2);
      }
      if (byteLength(text) > KEEPALIVE_MAX_BYTES) return; // one huge event: leave it to fetch
      let queued = false;
      try {
        queued = nav.sendBeacon(this.#endpoint, new Blob([text], { type: "text/plain" }));
      } catch {
        queued = false;
      }
      if (!queued) return;
      this.#buffer.splice(0, count);
      this.#stats.beaconed += count;
    }
  }

  // -- reporting -----------------------------------------------------------------------------

  /** A Sentry breadcrumb of a tracked event, when the app runs Sentry; never throws. */
  #breadcrumb(event) {
    const sentry = this.#sentry === undefined ? globalThis.Sentry : this.#sentry;
    if (!sentry || typeof sentry.addBreadcrumb !== "function") return;
    const { event_id, type, tags, timestamp: _timestamp, ...fields } = event;
    try {
      sentry.addBreadcrumb({
        category: "business-metrics",
        type: "info",
        level: tags?.severity === "critical" ? "error" : "info",
        message: `${type} ${event.name ?? event.metric ?? event.feature ?? `${event.funnel}/${event.step}`}`,
        data: { event_id, type, ...fields, ...(tags ? { tags } : {}) },
      });
    } catch {
      // a failing Sentry must not break tracking
    }
  }

  #drop(count, reason, events) {
    this.#stats.dropped += count;
    if (reason === undefined) {
      this.#unreportedDrops += count; // buffer overflow: reported in bulk, not once per event
      return;
    }
    this.#report(new CosnapMetricsError("dropped", `${count} event(s) dropped: ${reason}`, { count, reason, events }));
  }

  #reportDrops() {
    if (this.#unreportedDrops === 0) return;
    const count = this.#unreportedDrops;
    this.#unreportedDrops = 0;
    const reason = `buffer full (maxBuffer ${this.#maxBuffer}); oldest events dropped`;
    this.#report(new CosnapMetricsError("dropped", `${count} event(s) dropped: ${reason}`, { count, reason }));
  }

  #report(error) {
    try {
      this.#onError?.(error);
    } catch {
      // a failing callback must not break tracking
    }
  }

  #notify(result) {
    try {
      this.#onResult?.(result);
    } catch {
      // a failing callback must not break tracking
    }
  }
}
