// The monitoring guide's BusinessMetricsService, as an app that follows the guide runs it in the
// browser or in Node: a buffer of `metrics` objects in the guide's four shapes, flushed as
// `POST <endpoint>` with `{"metrics": [...]}` and the headers the app configures; revenue and
// `metadata.severity === "critical"` flush at once, the rest on the interval or at the batch size.
//
// Usage: node business-metrics-service.mjs <ingest url> <write key> <events per type>
// It tracks that many of each type, flushes, then posts every body once more (a retry of the
// same bodies, which must add nothing), and prints {"bodies": n, "statuses": [...], "answers": [...]}.

class BusinessMetricsService {
  constructor({ endpoint, headers = {}, batchSize = 50, flushInterval = 30000 }) {
    this.endpoint = endpoint;
    this.headers = headers;
    this.batchSize = batchSize;
    this.metricsBuffer = [];
    this.sent = []; // [body, response] of every flush, for the test
    this.timer = setInterval(() => this.flush(), flushInterval);
    this.timer.unref?.();
  }

  trackRevenueEvent(eventType, amount, currency = "USD", metadata = {}) {
    this.addMetric({ type: "revenue", eventType, amount, currency, timestamp: Date.now(), metadata });
    return this.flush(); // revenue is never left waiting
  }

  trackConversionStep(step, userId, metadata = {}) {
    return this.addMetric({ type: "conversion", step, userId, timestamp: Date.now(), metadata });
  }

  trackFeatureUsage(feature, action, userId, metadata = {}) {
    return this.addMetric({ type: "feature_usage", feature, action, userId, timestamp: Date.now(), metadata });
  }

  trackPerformanceMetric(metricName, value, unit = "ms", metadata = {}) {
    return this.addMetric({ type: "performance", metricName, value, unit, timestamp: Date.now(), metadata });
  }

  addMetric(metric) {
    this.metricsBuffer.push(metric);
    if (metric.metadata?.severity === "critical" || this.metricsBuffer.length >= this.batchSize) {
      return this.flush();
    }
    return Promise.resolve();
  }

  async flush() {
    if (this.metricsBuffer.length === 0) return;
    const metrics = this.metricsBuffer.splice(0);
    const body = JSON.stringify({ metrics });
    try {
      const response = await fetch(this.endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...this.headers },
        body,
        keepalive: true,
      });
      this.sent.push([body, response.status, await response.json()]);
      if (!response.ok && response.status >= 500) this.metricsBuffer.unshift(...metrics);
    } catch (error) {
      this.metricsBuffer.unshift(...metrics); // try again on the next flush
      throw error;
    }
  }
}

const [url, writeKey, perTypeText] = process.argv.slice(2);
const perType = Number(perTypeText);
const service = new BusinessMetricsService({
  endpoint: `${url}/api/analytics/metrics`,
  headers: { Authorization: `Bearer ${writeKey}` },
  batchSize: 20,
});
const waits = [];
for (let i = 0; i < perType; i++) {
  const user = `guide-user-${i % 7}`;
  // `round` keeps two objects of one millisecond apart: identical objects would be one event.
  const round = i;
  // Defaults (currency, unit) left out on even rounds; metadata of every kind the guide allows.
  waits.push(
    i % 2
      ? service.trackRevenueEvent("subscription", 9.99, "EUR", { plan: "pro", userId: user, round })
      : service.trackRevenueEvent("credits_pack", 4.5, undefined, { plan: "free", credits: 100, trial: false, round }),
  );
  const step = ["signup", "first_upload", "first_effect"][i % 3];
  waits.push(service.trackConversionStep(step, user, { source: "web", round }));
  waits.push(service.trackFeatureUsage("ai_effect.anime", "applied", user, { style: "ghibli", nested: { a: 1 }, round }));
  waits.push(
    i % 2
      ? service.trackPerformanceMetric("ai.generation", 2000 + i, "milliseconds", { provider: "openai", round })
      : service.trackPerformanceMetric("render.rate", 50 + i, undefined, { severity: i ? "info" : "critical", round }),
  );
}
await Promise.all(waits);
await service.flush();
clearInterval(service.timer);

// A retry of every body as it was sent: the same objects, so the same derived event ids.
const statuses = service.sent.map(([, status]) => status);
const answers = service.sent.map(([, , answer]) => answer);
for (const [body] of [...service.sent]) {
  const response = await fetch(service.endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${writeKey}` },
    body,
  });
  statuses.push(response.status);
  answers.push(await response.json());
}
console.log(JSON.stringify({ bodies: service.sent.length, statuses, answers }));
