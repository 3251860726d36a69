"use strict";
// The embedded dashboard. Polls /dashboard/data (the fixed read-only queries of sinks/query/panels.py)
// and redraws every panel. Text goes in through textContent only: names, steps and alert
// summaries come from posted events. Revenue stays a decimal string end to end, so the page
// shows exactly what ClickHouse summed.

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";

function records(panel) {
  return panel.rows.map((row) => Object.fromEntries(panel.columns.map((name, i) => [name, row[i]])));
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function svg(width, height) {
  const node = document.createElementNS(SVG, "svg");
  node.setAttribute("width", width);
  node.setAttribute("height", height);
  node.setAttribute("aria-hidden", "true");
  return node;
}

function rect(x, y, width, height) {
  const node = document.createElementNS(SVG, "rect");
  for (const [name, value] of Object.entries({ x, y, width, height, rx: 1 })) node.setAttribute(name, value);
  return node;
}

function bar(fraction, width = 160, height = 10) {
  const chart = svg(width, height);
  chart.append(rect(0, 0, Math.max(0, Math.min(1, fraction)) * width, height));
  return chart;
}

function sparkline(values, width = 180, height = 36) {
  const chart = svg(width, height);
  const top = Math.max(...values, 0);
  const step = width / values.length;
  values.forEach((value, i) => {
    const h = top > 0 ? (value / top) * height : 0;
    if (h > 0) chart.append(rect(i * step, height - h, Math.max(step - 1, 1), h));
  });
  return chart;
}

function groupDigits(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

// A decimal string as ClickHouse sent it ("29.970000000") -> "29.97"; never through a float.
function formatDecimal(text) {
  if (text === null) return "–";
  const negative = text.startsWith("-");
  const [whole, fraction = ""] = (negative ? text.slice(1) : text).split(".");
  let digits = fraction.replace(/0+$/, "");
  if (digits.length === 1) digits += "0";
  return (negative ? "-" : "") + groupDigits(whole) + (digits ? "." + digits : "");
}

function formatCount(count) {
  return groupDigits(String(count));
}

function formatNumber(value) {
  return value === null ? "–" : String(Math.round(value * 100) / 100);
}

function formatPercent(ratio) {
  return ratio === null ? "–" : (ratio * 100).toFixed(1) + "%";
}

// How late, in the largest unit that makes it at least 2: "90.0 s", "40.0 min", "26.0 h", "29.0 d".
function formatDelay(seconds) {
  if (seconds === null) return "–";
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
    if (seconds >= 2 * size) return `${(seconds / size).toFixed(1)} ${unit}`;
  }
  return `${seconds.toFixed(1)} s`;
}

// ClickHouse sends UTC times without an offset.
function parseUtc(text) {
  return new Date(/(Z|[+-]\d\d:\d\d)$/.test(text) ? text : text + "Z");
}

function clock(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function table(headers, rows) {
  const head = el("tr", {}, ...headers.map(([label, cls]) => el("th", cls ? { class: cls } : {}, label)));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function cell(text, attributes = {}) {
  return el("td", attributes, text);
}

function num(text, testid) {
  return cell(text, testid ? { class: "num", "data-testid": testid } : { class: "num" });
}

// Clears `container` and returns false, showing the error or the empty text, when there is
// nothing to draw.
function prepare(container, panel, key, emptyText, emptyTestid) {
  container.replaceChildren();
  if (panel.error) {
    container.append(el("div", { class: "error", "data-testid": `panel-error-${key}` }, panel.error));
    return false;
  }
  if (panel.rows.length === 0) {
    container.append(el("div", { class: "empty", "data-testid": emptyTestid }, emptyText));
    return false;
  }
  return true;
}

function minutesOf(start) {
  const first = new Date(start.getTime());
  first.setUTCSeconds(0, 0);
  return Array.from({ length: 61 }, (_, i) => first.getTime() + i * 60000);
}

function renderRevenueCards(data) {
  const container = document.querySelector('[data-testid="revenue-cards"]');
  const panel = data.panels.revenue_by_currency;
  if (!prepare(container, panel, "revenue_by_currency", "No revenue in the last hour", "revenue-none")) return;
  const perMinute = records(data.panels.revenue_per_minute);
  const minutes = minutesOf(parseUtc(data.start));
  for (const row of records(panel)) {
    const byMinute = new Map(
      perMinute
        .filter((r) => r.currency === row.currency)
        .map((r) => [parseUtc(r.minute).getTime(), Number(r.revenue)]),
    );
    container.append(
      el(
        "div",
        { class: "card", "data-currency": row.currency },
        el("div", { class: "currency" }, row.currency),
        el("div", { class: "amount", "data-testid": `revenue-total-${row.currency}` }, formatDecimal(row.revenue)),
        el(
          "div",
          { class: "detail" },
          el("span", { "data-testid": `revenue-payments-${row.currency}` }, formatCount(row.payments)),
          row.payments === 1 ? " payment · " : " payments · ",
          el("span", { "data-testid": `revenue-payers-${row.currency}` }, formatCount(row.payers)),
          row.payers === 1 ? " payer" : " payers",
        ),
        sparkline(minutes.map((m) => byMinute.get(m) ?? 0)),
      ),
    );
  }
}

function renderRevenuePerMinute(data) {
  const container = document.querySelector('[data-testid="revenue-per-minute"]');
  const panel = data.panels.revenue_per_minute;
  if (!prepare(container, panel, "revenue_per_minute", "No revenue in the last hour", "revenue-per-minute-none")) {
    return;
  }
  const rows = records(panel);
  const currencies = [...new Set(rows.map((r) => r.currency))].sort();
  const minutes = [...new Set(rows.map((r) => r.minute))].sort().reverse();
  const amount = new Map(rows.map((r) => [`${r.minute}|${r.currency}`, r.revenue]));
  const body = minutes.map((minute) =>
    el(
      "tr",
      {},
      cell(clock(parseUtc(minute)), { "data-minute": minute }),
      ...currencies.map((currency) => {
        const value = amount.get(`${minute}|${currency}`);
        return value === undefined
          ? num("")
          : cell(formatDecimal(value), {
              class: "num",
              "data-testid": "revenue-minute",
              "data-minute": minute,
              "data-currency": currency,
            });
      }),
    ),
  );
  container.append(table([["Minute"], ...currencies.map((c) => [c, "num"])], body));
}

function renderFunnels(data) {
  const container = document.querySelector('[data-testid="funnels"]');
  const panel = data.panels.funnels;
  if (!prepare(container, panel, "funnels", "No conversion events in the last hour", "funnels-none")) return;
  const funnels = new Map();
  for (const row of records(panel)) {
    if (!funnels.has(row.funnel)) funnels.set(row.funnel, []);
    funnels.get(row.funnel).push(row);
  }
  for (const [funnel, steps] of funnels) {
    const body = steps.map((s) => {
      const id = `funnel-${funnel}-${s.step}`;
      return el(
        "tr",
        {},
        cell(s.step),
        num(formatCount(s.users), `${id}-users`),
        num(formatPercent(s.conversion), `${id}-conversion`),
        num(formatPercent(s.step_conversion), `${id}-step-conversion`),
        el("td", { class: "bar" }, bar(s.conversion)),
      );
    });
    const headers = [["Step"], ["Users", "num"], ["Conversion", "num"], ["From previous", "num"], [""]];
    container.append(
      el(
        "div",
        { class: "funnel", "data-funnel": funnel },
        el("h3", {}, funnel),
        table(headers, body),
      ),
    );
  }
}

function renderFeatures(data) {
  const container = document.querySelector('[data-testid="top-features"]');
  const panel = data.panels.top_features;
  if (!prepare(container, panel, "top_features", "No feature events in the last hour", "features-none")) return;
  const rows = records(panel);
  const most = Math.max(...rows.map((r) => r.uses));
  const body = rows.map((r, i) => {
    const id = `feature-${r.feature}-${r.action}`;
    return el(
      "tr",
      {},
      num(String(i + 1)),
      cell(r.feature),
      cell(r.action),
      num(formatCount(r.uses), `${id}-uses`),
      num(formatCount(r.users), `${id}-users`),
      el("td", { class: "bar" }, bar(r.uses / most)),
    );
  });
  const headers = [["#", "num"], ["Feature"], ["Action"], ["Uses", "num"], ["Users", "num"], [""]];
  container.append(table(headers, body));
}

function renderLatency(data) {
  const container = document.querySelector('[data-testid="latency"]');
  const panel = data.panels.latency_p95;
  if (!prepare(container, panel, "latency_p95", "No performance events in the last hour", "latency-none")) return;
  const body = records(panel).map((r) => {
    const id = `latency-${r.metric}-${r.unit}`;
    return el(
      "tr",
      {},
      cell(r.metric),
      cell(r.unit),
      num(formatCount(r.samples), `${id}-samples`),
      num(formatNumber(r.p95), `${id}-p95`),
      num(formatNumber(r.max), `${id}-max`),
    );
  });
  const headers = [["Metric"], ["Unit"], ["Samples", "num"], ["p95", "num"], ["Max", "num"]];
  container.append(table(headers, body));
}

function renderAlerts(data) {
  const container = document.querySelector('[data-testid="alerts"]');
  const panel = data.panels.alerts_firing;
  const badge = document.querySelector('[data-testid="alerts-count"]');
  badge.textContent = String(panel.rows.length);
  badge.setAttribute("data-firing", panel.rows.length > 0 ? "yes" : "no");
  if (!prepare(container, panel, "alerts_firing", "No alerts firing", "alerts-none")) return;
  for (const a of records(panel)) {
    const labels = Object.entries(a.labels)
      .map(([k, v]) => `${k}=${v}`)
      .join(", ");
    container.append(
      el(
        "div",
        { class: "alert", "data-testid": "alert", "data-fingerprint": a.fingerprint, "data-rule": a.rule },
        el("span", { class: "severity", "data-severity": a.severity }, a.severity),
        el(
          "div",
          {},
          el("div", { class: "rule", "data-testid": "alert-rule" }, a.rule),
          el("div", { "data-testid": "alert-summary" }, a.summary),
        ),
        el(
          "div",
          { class: "since" },
          el("span", { "data-testid": "alert-value" }, formatNumber(a.value)),
          ` / ${formatNumber(a.threshold)} · since ${clock(parseUtc(a.starts_at))}`,
        ),
        el("div", { class: "labels" }, labels),
      ),
    );
  }
}

function renderLateEvents(data) {
  const container = document.querySelector('[data-testid="late-events"]');
  const panel = data.panels.late_events;
  if (!prepare(container, panel, "late_events", "No late events in the last hour", "late-none")) return;
  const body = records(panel).map((r) => {
    const id = `late-${r.project}`;
    return el(
      "tr",
      {},
      cell(r.project),
      num(formatCount(r.late_events), `${id}-events`),
      num(formatCount(r.counted_events), `${id}-counted`),
      num(formatPercent(r.counted_share), `${id}-share`),
      num(formatDelay(r.p50_delay_s), `${id}-p50`),
      num(formatDelay(r.max_delay_s), `${id}-max`),
    );
  });
  const headers = [
    ["Project"],
    ["Late", "num"],
    ["Counted", "num"],
    ["Share", "num"],
    ["p50 delay", "num"],
    ["Max delay", "num"],
  ];
  container.append(table(headers, body));
}

// Alerting measured: each figure beside its target, marked "missed" when outside it.
function renderAlerting(data) {
  const container = document.querySelector('[data-testid="alerting"]');
  const panel = data.panels.alerting;
  if (!prepare(container, panel, "alerting", "No alerts in the last hour", "alerting-none")) return;
  const rows = records(panel);
  const t = rows[0];
  const figure = (text, missed, testid) => {
    const td = num(text, testid);
    if (missed) td.setAttribute("data-missed", "yes");
    return td;
  };
  const body = rows.map((r) => {
    const id = `alerting-${r.rule}`;
    return el(
      "tr",
      {},
      cell(r.rule),
      num(formatCount(r.fired), `${id}-fired`),
      figure(formatNumber(r.alerts_per_day), r.alerts_per_day >= r.alerts_per_day_target, `${id}-per-day`),
      figure(
        r.delivery_pct === null ? "–" : `${r.delivery_pct.toFixed(2)}%`,
        r.delivery_pct !== null && r.delivery_pct <= r.delivery_pct_target,
        `${id}-delivery`,
      ),
      num(r.detect_s === null ? "–" : formatDelay(r.detect_s), `${id}-detect`),
      figure(r.mttr_s === null ? "–" : formatDelay(r.mttr_s), r.mttr_s !== null && r.mttr_s >= r.mttr_s_target, `${id}-mttr`),
      num(formatCount(r.flapping), `${id}-flapping`),
      figure(
        r.noise_pct === null ? "–" : `${r.noise_pct.toFixed(2)}%`,
        r.noise_pct !== null && r.noise_pct >= r.noise_pct_target,
        `${id}-noise`,
      ),
    );
  });
  const headers = [
    ["Rule"],
    ["Fired", "num"],
    [`Alerts/day (< ${t.alerts_per_day_target})`, "num"],
    [`Delivery (> ${t.delivery_pct_target}%)`, "num"],
    ["Detect", "num"],
    [`MTTR (< ${formatDelay(t.mttr_s_target)})`, "num"],
    ["Flapping", "num"],
    [`Noise (< ${t.noise_pct_target}%)`, "num"],
  ];
  container.append(table(headers, body));
}

function setStatus(state, text) {
  const status = document.querySelector('[data-testid="status"]');
  status.setAttribute("data-state", state);
  status.textContent = text;
}

function render(data) {
  for (const draw of [
    renderRevenueCards,
    renderRevenuePerMinute,
    renderFunnels,
    renderFeatures,
    renderLatency,
    renderAlerts,
    renderLateEvents,
    renderAlerting,
  ]) {
    draw(data);
  }
  const updated = document.querySelector('[data-testid="updated-at"]');
  updated.setAttribute("datetime", data.end);
  updated.textContent = new Date(data.end).toLocaleTimeString();
}

async function refresh() {
  try {
    const response = await fetch("/dashboard/data", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    setStatus("live", "live");
  } catch (error) {
    setStatus("error", `error: ${error.message}`);
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
