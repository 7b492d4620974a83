// tally's dashboard: plain JavaScript, no dependencies. Every number shown
// comes from the server's own APIs, read with the token kept in this browser.
"use strict";

const TOKEN_KEY = "tally.token";
const THEME_KEY = "tally.theme";
const $ = (sel, root = document) => root.querySelector(sel);

// ---------- formatting ----------
const nf = new Intl.NumberFormat("en-US");
const fmtInt = (n) => (n == null ? "–" : nf.format(Math.round(n)));
const fmtNum = (n, d = 2) => (n == null ? "–" : Number(n).toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d }));
const fmtUsd = (n) => (n == null ? "–" : "$" + Number(n).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: n !== 0 && Math.abs(n) < 1 ? 4 : 2 }));
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumSignificantDigits: 3 });
const fmtAxis = (n) => compact.format(n);
const fmtPct = (n) => (n == null ? "–" : Number(n).toFixed(1) + " %");
function fmtBytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? String(v) : v.toFixed(2)) + " " + units[i];
}
const fmtTime = (ms) => (ms == null ? "–" : new Date(ms).toISOString().replace("T", " ").slice(0, 16) + " UTC");
const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    // Through the CSSOM: the page's CSP refuses style attributes.
    else if (k === "style") el.style.cssText = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ---------- theme ----------
function applyTheme() {
  const choice = localStorage.getItem(THEME_KEY) || "auto";
  const dark = choice === "dark" || (choice === "auto" && window.matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
  $("#theme").value = choice;
}

// ---------- API access ----------
let tokenWaiters = [];
function askToken(reason) {
  const dialog = $("#token-dialog");
  $("#token-reason").textContent = reason || "This server asks for a token. It is kept in this browser only.";
  if (!dialog.open) dialog.showModal();
  return new Promise((resolve) => tokenWaiters.push(resolve));
}
function tokenGiven() {
  const waiting = tokenWaiters;
  tokenWaiters = [];
  waiting.forEach((w) => w());
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.error || body.message)) || "HTTP " + status);
    this.status = status;
    this.body = body;
  }
}

async function api(path, opts = {}) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const headers = Object.assign({}, opts.headers || {});
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) headers.authorization = "Bearer " + token;
    if (opts.json !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(path, {
      method: opts.method || "GET",
      headers,
      body: opts.json !== undefined ? JSON.stringify(opts.json) : undefined,
    });
    if (res.status === 401) {
      const body = await res.json().catch(() => null);
      await askToken(token ? "The token was refused (" + ((body && body.detail) || "unauthorized") + "). Give another one." : undefined);
      continue;
    }
    if (opts.raw) {
      if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
      return res;
    }
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
    if (!res.ok) throw new ApiError(res.status, body);
    return body;
  }
  throw new ApiError(401, { error: "unauthorized", detail: "no token accepted" });
}

function socket(path, onMessage, onState) {
  let ws = null;
  let closed = false;
  let retry = 500;
  function open() {
    const token = localStorage.getItem(TOKEN_KEY);
    const sep = path.includes("?") ? "&" : "?";
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path + (token ? sep + "access_token=" + encodeURIComponent(token) : "");
    ws = new WebSocket(url);
    ws.onopen = () => { retry = 500; onState && onState("open"); };
    ws.onmessage = (e) => { try { onMessage(JSON.parse(e.data)); } catch (_) { /* not JSON: ignored */ } };
    ws.onclose = () => {
      if (closed) return;
      onState && onState("closed");
      // A refused upgrade looks like a close: check for 401 with a plain request.
      api("/api/usage/config").catch(() => {}).finally(() => {
        setTimeout(() => { if (!closed) open(); }, retry);
        retry = Math.min(retry * 2, 10000);
      });
    };
    ws.onerror = () => {};
  }
  open();
  return () => { closed = true; if (ws) ws.close(); };
}

// Saves a response's body as a file the browser downloads.
async function saveAs(res, name) {
  const blob = await res.blob();
  const a = h("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ---------- charts (SVG) ----------
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}
// An SVG of x0..x1 (ms) by 0..ymax with its grid, y labels and end labels
// of x (fmtX); sx and sy map values to its coordinates.
function frame(x0, x1, ymax, fmtX, opts) {
  const W = opts.wide ? 1200 : 600, H = opts.wide ? 200 : 160, L = 44, R = 8, T = 8, B = 20;
  const el = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": opts.label || "chart" });
  const sx = (x) => L + ((x - x0) / Math.max(1, x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - y / ymax) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = (ymax * i) / 4;
    el.append(svg("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "grid-line" }));
    const t = svg("text", { x: L - 4, y: sy(y) + 3, "text-anchor": "end" });
    t.textContent = opts.fmtY ? opts.fmtY(y) : fmtAxis(y);
    el.append(t);
  }
  if (isFinite(x0) && isFinite(x1)) {
    for (const [x, anchor] of [[x0, "start"], [x1, "end"]]) {
      const t = svg("text", { x: sx(x), y: H - 5, "text-anchor": anchor });
      t.textContent = fmtX(x);
      el.append(t);
    }
  }
  return { el, sx, sy };
}
// series: [{name, points: [[x, y], ...]}]; x in ms.
function lineChart(series, opts = {}) {
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const x0 = opts.x0 != null ? opts.x0 : Math.min(...xs);
  const x1 = opts.x1 != null ? opts.x1 : Math.max(...xs);
  const ymax = opts.ymax != null ? opts.ymax : niceMax(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1]))));
  const { el, sx, sy } = frame(x0, x1, ymax, (x) => new Date(x).toISOString().slice(11, 16), opts);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => (j ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join("");
    el.append(svg("path", { d, fill: "none", "stroke-width": 2, class: "series-" + (i % 3), "vector-effect": "non-scaling-stroke" }));
  });
  const wrap = h("div", {});
  if (series.length > 1 || opts.legend) wrap.append(h("div", { class: "legend" }, series.map((s, i) => h("span", {}, h("i", { class: "l" + (i % 3) }), s.name))));
  wrap.append(el);
  return wrap;
}
// bars: [[x ms, y]], one bar per step (ms), over opts.x0..opts.x1.
function barChart(bars, step, opts = {}) {
  const x0 = opts.x0;
  const ymax = niceMax(Math.max(0, ...bars.map((b) => b[1])));
  const { el, sx, sy } = frame(x0, opts.x1, ymax, (x) => new Date(x).toISOString().slice(5, 16).replace("T", " "), opts);
  const bw = Math.max(1, sx(x0 + step) - sx(x0) - 1);
  for (const [x, y] of bars) {
    const r = svg("rect", { x: sx(x), y: sy(y), width: bw, height: Math.max(0, sy(0) - sy(y)), class: "bar" });
    const title = svg("title", {});
    title.textContent = new Date(x).toISOString().slice(0, 16) + "Z: " + (opts.fmtY ? opts.fmtY(y) : fmtInt(y));
    r.append(title);
    el.append(r);
  }
  return el;
}

// raw: the number shown, kept in data-value for scripts and tests.
function card(label, value, testid, raw, extra) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", "data-testid": testid, "data-value": raw == null ? null : String(raw) }, value), extra || null);
}
function table(columns, rows, testid) {
  // columns: [{label, num?, get(row) -> string|Node}]
  return h("div", { class: "table-wrap" }, h("table", { "data-testid": testid },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.get(r))))) :
      h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "nothing in this period")))));
}
function badge(state) { return h("span", { class: "badge " + esc(state) }, state); }
function gauge(label, used, limit, pct, testid, fmt) {
  const state = pct >= 100 ? "exceeded" : pct >= 80 ? "warning" : "";
  return h("div", { class: "gauge" },
    h("div", { class: "head" }, h("span", {}, label), h("span", { "data-testid": testid, "data-value": String(used), "data-percent": String(pct) }, fmt(used) + " / " + fmt(limit) + " (" + fmtPct(pct) + ")")),
    h("div", { class: "track" }, h("div", { class: "fill " + state, style: "width:" + Math.min(100, Math.max(0, pct)).toFixed(1) + "%" })));
}
function showError(e) {
  const b = $("#banner");
  b.hidden = false;
  b.className = "banner error";
  b.textContent = e instanceof ApiError ? "HTTP " + e.status + ": " + e.message : String(e && e.message ? e.message : e);
}
function clearError() {
  const b = $("#banner");
  if (b.classList.contains("error")) { b.hidden = true; b.className = "banner"; }
}

// ---------- Live ----------
const LIVE_WINDOW_MS = 10 * 60 * 1000;
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    (m[2] || "").replace(/(\w+)="([^"]*)"/g, (_, k, v) => { labels[k] = v; });
    (out[m[1]] = out[m[1]] || []).push({ labels, value: Number(m[3]) });
  }
  return out;
}
function pageLive(root) {
  const samples = [];
  let info = null;
  let lastFsync = null;
  let fsync = { mean: null, p99: null };
  let health = null;
  let queues = [];
  const cards = h("div", { class: "cards" });
  const charts = h("div", { class: "grid" });
  const rates = h("div", { class: "panel" });
  const comps = h("div", { class: "panel" });
  root.append(h("h1", {}, "Live"), h("p", { class: "muted", "data-testid": "live-host" }, "connecting…"), cards, charts, h("div", { class: "grid" }, rates, comps));

  function draw() {
    const now = Date.now();
    while (samples.length && samples[0].t < now - LIVE_WINDOW_MS) samples.shift();
    const last = samples[samples.length - 1];
    const hostLine = info ? info.hostname + " · " + info.cpu_model + " · " + info.cpu_count + " CPUs · " + fmtInt(info.ram_total_mb) + " MB RAM" + (info.gpu_count ? " · " + info.gpu_count + " GPU" : " · no GPU telemetry") : "connecting…";
    $("[data-testid=live-host]", root).textContent = hostLine;
    cards.replaceChildren(
      card("CPU", last ? fmtPct(last.cpu) : "–", "live-cpu", last && last.cpu),
      card("RAM", last ? fmtPct(last.ram) : "–", "live-ram", last && last.ram),
      card("Ingest (records/s)", last ? fmtNum(last.total, 1) : "–", "live-ingest-total", last && last.total),
      card("Queued rows", fmtInt(queues.reduce((a, q) => a + q.value, 0)), "live-queued", queues.reduce((a, q) => a + q.value, 0)),
      card("WAL fsync (mean, p99)", fsync.mean == null ? "–" : fmtNum(fsync.mean * 1000, 2) + " ms, " + (fsync.p99 == null ? "–" : "≤ " + fmtNum(fsync.p99 * 1000, 1) + " ms"), "live-fsync", fsync.mean),
      card("Updates", String(samples.length), "live-updates", samples.length),
    );
    const x = { x0: now - LIVE_WINDOW_MS, x1: now };
    const hostSeries = [
      { name: "CPU %", points: samples.map((s) => [s.t, s.cpu]) },
      { name: "RAM %", points: samples.map((s) => [s.t, s.ram]) },
    ];
    if (samples.some((s) => s.gpu != null)) hostSeries.push({ name: "GPU %", points: samples.filter((s) => s.gpu != null).map((s) => [s.t, s.gpu]) });
    charts.replaceChildren(
      h("div", { class: "panel" }, h("h2", {}, "Host, last 10 minutes"), lineChart(hostSeries, Object.assign({ ymax: 100, legend: true, fmtY: (v) => v + "%", label: "host usage" }, x))),
      h("div", { class: "panel" }, h("h2", {}, "Ingest, records per second"), lineChart([{ name: "all datasets", points: samples.map((s) => [s.t, s.total]) }], Object.assign({ legend: true, label: "ingest rate" }, x))),
    );
    const per = last ? Object.entries(last.rates).filter(([k]) => k !== "total_per_sec").sort() : [];
    rates.replaceChildren(h("h2", {}, "Ingest per dataset"), table([
      { label: "dataset", get: (r) => r[0].replace(/_per_sec$/, "") },
      { label: "records/s", num: true, get: (r) => h("span", { "data-testid": "live-rate-" + r[0].replace(/_per_sec$/, ""), "data-value": String(r[1]) }, fmtNum(r[1], 1)) },
      { label: "queued rows", num: true, get: (r) => fmtInt((queues.find((q) => q.labels.dataset === r[0].replace(/_per_sec$/, "")) || {}).value || 0) },
    ], per, "live-rates"));
    const rows = health ? Object.entries(health.components).map(([name, c]) => [name, c]) : [];
    comps.replaceChildren(h("h2", {}, "Components ", health ? badge(health.status) : null), table([
      { label: "component", get: (r) => r[0] },
      { label: "status", get: (r) => badge(r[1].status) },
      { label: "detail", get: (r) => h("span", { class: "wrap" }, r[1].detail || "") },
    ], rows, "live-health"));
    const b = $("#banner");
    if (health && health.status !== "ok") {
      b.hidden = false;
      b.className = "banner " + health.status;
      const bad = rows.filter((r) => r[1].status !== "ok" && r[1].status !== "absent").map((r) => r[0] + ": " + (r[1].detail || r[1].status));
      b.textContent = "tally is " + health.status.toUpperCase() + " — " + bad.join("; ");
    } else if (b.classList.contains("degraded") || b.classList.contains("down")) {
      b.hidden = true; b.className = "banner";
    }
  }
  const stopWs = socket("/usage", (m) => {
    if (m.type === "system_info") info = m;
    if (m.type === "usage_update") {
      const rates = m.message_rates || {};
      samples.push({ t: m.timestamp * 1000, cpu: m.cpu_percent, ram: m.ram_percent, gpu: m.gpu_percent, total: rates.total_per_sec || 0, rates });
      draw();
    }
  });
  async function poll() {
    try {
      const res = await fetch("/health");
      health = await res.json();
      const text = await (await api("/metrics", { raw: true })).text();
      const m = parseMetrics(text);
      queues = m.tally_queue_depth_rows || [];
      const sum = ((m.tally_wal_fsync_duration_seconds_sum || [])[0] || {}).value;
      const count = ((m.tally_wal_fsync_duration_seconds_count || [])[0] || {}).value;
      const buckets = (m.tally_wal_fsync_duration_seconds_bucket || []).map((b) => [b.labels.le === "+Inf" ? Infinity : Number(b.labels.le), b.value]);
      if (lastFsync && count > lastFsync.count) {
        const n = count - lastFsync.count;
        fsync.mean = (sum - lastFsync.sum) / n;
        const target = n * 0.99;
        const found = buckets.find((b, i) => b[1] - (lastFsync.buckets[i] ? lastFsync.buckets[i][1] : 0) >= target);
        fsync.p99 = found && isFinite(found[0]) ? found[0] : null;
      } else if (count > 0 && !lastFsync) {
        fsync.mean = sum / count;
      }
      lastFsync = { sum, count, buckets };
      clearError();
    } catch (e) { showError(e); }
    draw();
  }
  poll();
  const timer = setInterval(poll, 2000);
  const tick = setInterval(draw, 5000);
  return () => { stopWs(); clearInterval(timer); clearInterval(tick); };
}

// ---------- LLM usage ----------
function periodParams(sel, from, to) {
  const v = sel.value;
  if (v === "custom") {
    if (!from.value || !to.value) return null;
    return "from=" + encodeURIComponent(new Date(from.value + "Z").toISOString()) + "&to=" + encodeURIComponent(new Date(to.value + "Z").toISOString());
  }
  return "period_hours=" + v;
}
function pageLlm(root) {
  const period = h("select", { "data-testid": "llm-period" }, h("option", { value: "24" }, "Last 24 hours"), h("option", { value: "168" }, "Last 7 days"), h("option", { value: "720" }, "Last 30 days"), h("option", { value: "custom" }, "Custom (UTC)"));
  const from = h("input", { type: "datetime-local", "aria-label": "from" });
  const to = h("input", { type: "datetime-local", "aria-label": "to" });
  const fromLabel = h("label", { hidden: true }, "From (UTC)", from);
  const toLabel = h("label", { hidden: true }, "To (UTC)", to);
  const tenant = h("input", { placeholder: "all tenants", "data-testid": "llm-tenant", size: 14 });
  const agent = h("input", { placeholder: "all agents", size: 14 });
  const by = h("select", {}, h("option", { value: "microdao_id" }, "tenant"), h("option", { value: "agent_id" }, "agent"), h("option", { value: "model" }, "model"), h("option", { value: "actor_id" }, "actor"));
  const out = h("div", {});
  period.addEventListener("change", () => { fromLabel.hidden = toLabel.hidden = period.value !== "custom"; load(); });
  for (const el of [from, to, tenant, agent, by]) el.addEventListener("change", load);
  root.append(h("h1", {}, "LLM usage"), h("div", { class: "controls" },
    h("label", {}, "Period", period), fromLabel, toLabel,
    h("label", {}, "Tenant (microdao_id)", tenant), h("label", {}, "Agent", agent), h("label", {}, "Break down by", by)), out);
  let seq = 0;
  async function load() {
    const p = periodParams(period, from, to);
    if (!p) return;
    let q = p;
    if (tenant.value.trim()) q += "&microdao_id=" + encodeURIComponent(tenant.value.trim());
    if (agent.value.trim()) q += "&agent_id=" + encodeURIComponent(agent.value.trim());
    const mine = ++seq;
    try {
      const [summary, hourly, breakdown] = await Promise.all([
        api("/internal/usage/summary?" + q),
        api("/internal/usage/hourly?" + q),
        api("/internal/usage/breakdown?by=" + by.value + "&" + q),
      ]);
      if (mine !== seq) return;
      clearError();
      const s = summary.summary;
      const x0 = Date.parse(s.period_start), x1 = Date.parse(s.period_end);
      out.replaceChildren(
        h("div", { class: "cards" },
          card("Spend", fmtUsd(s.llm_cost_usd_total), "llm-cost", s.llm_cost_usd_total),
          card("Tokens", fmtInt(s.llm_tokens_total), "llm-tokens", s.llm_tokens_total),
          card("LLM calls", fmtInt(s.llm_calls_total), "llm-calls", s.llm_calls_total),
          card("Unpriced calls", fmtInt(s.unpriced_calls), "llm-unpriced", s.unpriced_calls, s.unpriced_calls ? badge("unpriced") : null),
          card("Tool calls", fmtInt(s.tool_calls_total), "llm-tools", s.tool_calls_total),
          card("Agent runs", fmtInt(s.agent_invocations_total), "llm-agents", s.agent_invocations_total),
          card("Messages", fmtInt(s.messages_sent), "llm-messages", s.messages_sent)),
        h("div", { class: "grid" },
          h("div", { class: "panel" }, h("h2", {}, "Spend per hour (USD)"), barChart(hourly.hours.map((r) => [Date.parse(r.hour), r.cost_usd || 0]), 3600000, { x0, x1, fmtY: (v) => "$" + fmtAxis(v), label: "spend per hour" })),
          h("div", { class: "panel" }, h("h2", {}, "Tokens per hour"), barChart(hourly.hours.map((r) => [Date.parse(r.hour), r.tokens]), 3600000, { x0, x1, label: "tokens per hour" }))),
        h("div", { class: "panel" }, h("h2", {}, "By " + by.options[by.selectedIndex].text), table([
          { label: by.options[by.selectedIndex].text, get: (r) => r.key == null ? h("span", { class: "muted" }, "(none)") : r.key },
          { label: "calls", num: true, get: (r) => fmtInt(r.calls) },
          { label: "tokens", num: true, get: (r) => fmtInt(r.tokens) },
          { label: "cost", num: true, get: (r) => h("span", {}, fmtUsd(r.cost_usd), r.unpriced_calls ? [" ", badge("unpriced")] : null) },
        ], breakdown.rows, "llm-breakdown")),
        h("div", { class: "panel" }, h("h2", {}, "Models"), table([
          { label: "model", get: (r) => r.model },
          { label: "provider", get: (r) => r.provider || "" },
          { label: "calls", num: true, get: (r) => fmtInt(r.calls) },
          { label: "prompt", num: true, get: (r) => fmtInt(r.prompt_tokens) },
          { label: "completion", num: true, get: (r) => fmtInt(r.completion_tokens) },
          { label: "cache write", num: true, get: (r) => fmtInt(r.cache_creation_tokens) },
          { label: "cache read", num: true, get: (r) => fmtInt(r.cache_read_tokens) },
          { label: "avg latency", num: true, get: (r) => r.avg_latency_ms == null ? "–" : fmtNum(r.avg_latency_ms, 0) + " ms" },
          { label: "cost", num: true, get: (r) => r.cost_usd == null ? badge("unpriced") : fmtUsd(r.cost_usd) },
        ], summary.models, "llm-models")),
      );
    } catch (e) { if (mine === seq) showError(e); }
  }
  load();
  const timer = setInterval(load, 15000);
  return () => clearInterval(timer);
}

// ---------- VM billing ----------
function pageVm(root) {
  const now = new Date();
  const kind = h("select", { "data-testid": "vm-kind" }, h("option", { value: "month" }, "Month"), h("option", { value: "day" }, "Day"));
  const month = h("input", { type: "month", value: now.toISOString().slice(0, 7), "data-testid": "vm-month" });
  const day = h("input", { type: "date", value: now.toISOString().slice(0, 10), "data-testid": "vm-day" });
  const monthLabel = h("label", {}, "Month (UTC)", month);
  const dayLabel = h("label", { hidden: true }, "Day (UTC)", day);
  const customer = h("select", { "data-testid": "vm-customer" }, h("option", { value: "" }, "all customers"));
  const download = h("button", { type: "button", "data-testid": "vm-csv" }, "Download CSV");
  const out = h("div", {});
  kind.addEventListener("change", () => { monthLabel.hidden = kind.value !== "month"; dayLabel.hidden = kind.value !== "day"; load(); });
  for (const el of [month, day, customer]) el.addEventListener("change", load);
  root.append(h("h1", {}, "VM billing"), h("div", { class: "controls" },
    h("label", {}, "Period", kind), monthLabel, dayLabel,
    h("label", {}, "Customer", customer), download), out);
  function range() {
    if (kind.value === "month") {
      const [y, m] = month.value.split("-").map(Number);
      return [new Date(Date.UTC(y, m - 1, 1)), new Date(Date.UTC(y, m, 1))];
    }
    const d = new Date(day.value + "T00:00:00Z");
    return [d, new Date(d.getTime() + 86400000)];
  }
  function query(window) {
    const [f, t] = range();
    let q = "from=" + encodeURIComponent(f.toISOString()) + "&to=" + encodeURIComponent(t.toISOString()) + "&window=" + window;
    if (customer.value) q += "&customer_id=" + encodeURIComponent(customer.value);
    return q;
  }
  download.addEventListener("click", async () => {
    try {
      const res = await api("/v1/billing/vm-usage?" + query(kind.value) + "&format=csv", { raw: true });
      await saveAs(res, "vm-usage-" + (kind.value === "month" ? month.value : day.value) + (customer.value ? "-" + customer.value : "") + ".csv");
    } catch (e) { showError(e); }
  });
  let seq = 0;
  async function load() {
    const mine = ++seq;
    try {
      const [hours, totals] = await Promise.all([api("/v1/billing/vm-usage?" + query("hour")), api("/v1/billing/vm-usage?" + query(kind.value))]);
      if (mine !== seq) return;
      clearError();
      const known = new Set([...customer.options].map((o) => o.value));
      for (const r of totals) if (!known.has(r.customer_id)) { customer.append(h("option", { value: r.customer_id }, r.customer_id)); known.add(r.customer_id); }
      const sum = (k) => totals.reduce((a, r) => a + (r[k] || 0), 0);
      const [f, t] = range();
      const perHour = new Map();
      for (const r of hours) perHour.set(r.window_start, (perHour.get(r.window_start) || 0) + r.cpu_seconds);
      out.replaceChildren(
        h("div", { class: "cards" },
          card("CPU-seconds", fmtNum(sum("cpu_seconds"), 1), "vm-cpu", sum("cpu_seconds")),
          card("Memory GiB-hours", fmtNum(sum("memory_gib_hours"), 3), "vm-mem", sum("memory_gib_hours")),
          card("Disk read", fmtBytes(sum("disk_read_bytes")), "vm-disk-read", sum("disk_read_bytes")),
          card("Disk written", fmtBytes(sum("disk_write_bytes")), "vm-disk-write", sum("disk_write_bytes")),
          card("Network in", fmtBytes(sum("network_rx_bytes")), "vm-rx", sum("network_rx_bytes")),
          card("Network out", fmtBytes(sum("network_tx_bytes")), "vm-tx", sum("network_tx_bytes")),
          card("Gaps", fmtInt(sum("gaps")), "vm-gaps", sum("gaps"), sum("gaps") ? badge("gap") : null)),
        h("div", { class: "panel" }, h("h2", {}, "CPU-seconds per hour"), barChart([...perHour].map(([k, v]) => [Date.parse(k), v]), 3600000, { x0: f.getTime(), x1: t.getTime(), wide: true, label: "cpu seconds per hour" })),
        h("div", { class: "panel" }, h("h2", {}, "Per VM"), table([
          { label: "customer", get: (r) => r.customer_id },
          { label: "VM", get: (r) => r.vm_id },
          { label: "window", get: (r) => r.window_start.slice(0, kind.value === "month" ? 7 : 10) },
          { label: "CPU-s", num: true, get: (r) => fmtNum(r.cpu_seconds, 1) },
          { label: "mem GiB-h", num: true, get: (r) => fmtNum(r.memory_gib_hours, 3) },
          { label: "disk read", num: true, get: (r) => fmtBytes(r.disk_read_bytes) },
          { label: "disk write", num: true, get: (r) => fmtBytes(r.disk_write_bytes) },
          { label: "net in", num: true, get: (r) => fmtBytes(r.network_rx_bytes) },
          { label: "net out", num: true, get: (r) => fmtBytes(r.network_tx_bytes) },
          { label: "samples", num: true, get: (r) => fmtInt(r.samples) },
          { label: "gaps", num: true, get: (r) => r.gaps ? badge(r.gaps + " gap" + (r.gaps > 1 ? "s" : "")) : "0" },
        ], totals, "vm-table")),
      );
    } catch (e) { if (mine === seq) showError(e); }
  }
  load();
  const timer = setInterval(load, 30000);
  return () => clearInterval(timer);
}

// ---------- Plan ----------
const CONFIG_FIELDS = [
  { name: "plan", options: ["pro", "max5", "max20", "custom"] },
  { name: "custom_limit_tokens", type: "integer", nullable: true },
  { name: "view", options: ["realtime", "daily", "monthly", "session"] },
  { name: "timezone", type: "text" },
  { name: "time_format", options: ["12h", "24h", "auto"] },
  { name: "theme", options: ["light", "dark", "classic", "auto"] },
  { name: "refresh_rate", type: "integer" },
  { name: "refresh_per_second", type: "number" },
  { name: "reset_hour", type: "integer", nullable: true },
];
function pagePlan(root) {
  const live = h("div", {});
  const form = h("form", { class: "config", "data-testid": "plan-config", novalidate: true });
  const status = h("span", { class: "muted", "data-testid": "plan-config-status" });
  root.append(h("h1", {}, "Plan"), live, h("div", { class: "panel" }, h("h2", {}, "Configuration"), form));
  const inputs = {};
  for (const f of CONFIG_FIELDS) {
    const input = f.options ? h("select", { name: f.name }, f.options.map((o) => h("option", { value: o }, o))) :
      h("input", { name: f.name, type: f.type === "text" ? "text" : "text", inputmode: f.type === "text" ? null : "decimal", placeholder: f.nullable ? "none" : "" });
    const err = h("div", { class: "error-text", "data-error-for": f.name });
    inputs[f.name] = { input, err, f };
    form.append(h("label", {}, f.name, input, err));
  }
  form.append(h("div", { class: "actions" }, h("button", { type: "submit", "data-testid": "plan-save" }, "Save"), h("button", { type: "button", class: "quiet", onclick: reset }, "Reset to defaults"), status));
  function fill(cfg) {
    for (const [name, { input }] of Object.entries(inputs)) input.value = cfg[name] == null ? "" : String(cfg[name]);
  }
  function showErrors(errors) {
    for (const { input, err } of Object.values(inputs)) { err.textContent = ""; input.classList.remove("invalid"); }
    const general = [];
    for (const e of errors) {
      const field = CONFIG_FIELDS.map((f) => f.name).sort((a, b) => b.length - a.length).find((n) => e === n || e.startsWith(n + " ") || e.startsWith(n + ":"));
      if (field) { inputs[field].err.textContent += (inputs[field].err.textContent ? "; " : "") + e; inputs[field].input.classList.add("invalid"); }
      else general.push(e);
    }
    status.textContent = general.join("; ");
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {};
    for (const [name, { input, f }] of Object.entries(inputs)) {
      const v = input.value.trim();
      if (f.options || f.type === "text") body[name] = v;
      else if (v === "") body[name] = null;
      else body[name] = /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
    }
    try {
      const r = await api("/api/usage/config", { method: "POST", json: body });
      showErrors([]);
      fill(r.config || r);
      status.textContent = "saved";
      refresh();
    } catch (e) {
      if (e.body && Array.isArray(e.body.validation_errors)) showErrors(e.body.validation_errors);
      else showError(e);
      status.textContent = status.textContent || (e.body && e.body.error) || "";
    }
  });
  async function reset() {
    try { const r = await api("/api/usage/config/reset", { method: "POST" }); fill(r.config || r); showErrors([]); status.textContent = "reset"; refresh(); } catch (e) { showError(e); }
  }
  function draw(s) {
    const b = s.current_session;
    const lim = s.limits || {};
    const t = s.totals || {};
    const p = s.predictions || {};
    const recent = s.recent_sessions || [];
    live.replaceChildren(
      h("div", { class: "panel" },
        h("h2", {}, b ? "Active block " + fmtTime(b.start_time) + " – " + fmtTime(b.end_time) : "No active block", " ", h("span", { class: "muted" }, "plan " + ((s.config_applied || {}).plan || ""))),
        gauge("Tokens toward the limit (input + output)", t.tokens_toward_limit || 0, lim.tokens, t.token_percentage || 0, "plan-tokens", fmtInt),
        gauge("Cost", b ? b.cost_usd : 0, lim.cost, t.cost_percentage || 0, "plan-cost", fmtUsd),
        gauge("Messages", b ? b.sent_messages_count : 0, lim.messages, t.message_percentage || 0, "plan-messages", fmtInt),
        gauge("Time in block", t.time_to_reset_percentage || 0, 100, t.time_to_reset_percentage || 0, "plan-time", (v) => fmtNum(v, 0) + "%")),
      h("div", { class: "cards" },
        card("Burn rate", fmtInt((s.burn_rate || {}).tokens_per_minute) + " tokens/min", "plan-burn", (s.burn_rate || {}).tokens_per_minute),
        card("Cost rate", fmtUsd((s.burn_rate || {}).cost_per_hour) + "/h", "plan-cost-rate", (s.burn_rate || {}).cost_per_hour),
        card("Tokens run out", p.tokens_run_out ? fmtTime(p.tokens_run_out) : "not at this rate", "plan-runout", p.tokens_run_out),
        card("Limit resets", p.limit_resets_at ? fmtTime(p.limit_resets_at) : "–", "plan-reset", p.limit_resets_at),
        card("All tokens (with cache)", b ? fmtInt(b.token_counts.total_tokens) : "0", "plan-total-tokens", b ? b.token_counts.total_tokens : 0),
        card("Unpriced messages", b ? fmtInt(b.unpriced_messages) : "0", "plan-unpriced", b ? b.unpriced_messages : 0)),
      h("div", { class: "panel" }, h("h2", {}, "Recent blocks (24 h)"), table([
        { label: "start", get: (r) => fmtTime(r.start_time) },
        { label: "end", get: (r) => fmtTime(r.end_time) },
        { label: "tokens (all)", num: true, get: (r) => fmtInt(r.token_counts.total_tokens) },
        { label: "messages", num: true, get: (r) => fmtInt(r.sent_messages_count) },
        { label: "cost", num: true, get: (r) => fmtUsd(r.cost_usd) },
        { label: "models", get: (r) => (r.models || []).join(", ") },
      ], recent, "plan-recent")),
    );
  }
  async function refresh() {
    try { draw(await api("/api/usage/stats")); clearError(); } catch (e) { showError(e); }
  }
  api("/api/usage/config").then(fill).catch(showError);
  refresh();
  const stop = socket("/api/usage/stream", (m) => { if (m.type === "usage_update" && m.data) draw(m.data); });
  return stop;
}

// ---------- Budgets ----------
function pageBudgets(root) {
  const out = h("div", {});
  root.append(h("h1", {}, "Budgets and alerts"), out);
  async function load() {
    try {
      const since = new Date(Date.now() - 7 * 86400000).toISOString();
      const [budgets, alerts, anomalies] = await Promise.all([
        api("/v1/budgets"),
        api("/v1/alerts?since=" + encodeURIComponent(since)),
        api("/v1/anomalies?since=" + encodeURIComponent(since)),
      ]);
      clearError();
      const list = budgets.budgets || [];
      const fmtFor = (m) => (m === "cost_usd" ? fmtUsd : (v) => fmtNum(v, m.startsWith("vm_") && m !== "vm_network_bytes" ? 2 : 0));
      out.replaceChildren(
        h("div", { class: "panel", "data-testid": "budgets" }, h("h2", {}, "Budgets"),
          list.length ? list.map((b) => h("div", { class: "gauge", "data-budget": b.id },
            h("div", { class: "head" }, h("span", {}, b.name + " · " + b.metric + " per " + b.period + " ", badge(b.state)),
              h("span", { "data-testid": "budget-used", "data-value": String(b.used) }, fmtFor(b.metric)(b.used) + " / " + fmtFor(b.metric)(b.limit) + " (" + fmtPct(b.percent) + ")")),
            h("div", { class: "track" }, h("div", { class: "fill " + b.state, style: "width:" + Math.min(100, b.percent).toFixed(1) + "%" })),
            h("div", { class: "muted" }, Object.entries(b.scope || {}).map(([k, v]) => k + "=" + v).join(", ") || "everything", " · ", b.period_start.slice(0, 10), " – ", b.period_end.slice(0, 10))))
            : h("p", { class: "muted" }, "No budgets yet. POST /v1/budgets creates one (README, Budgets).")),
        h("div", { class: "panel" }, h("h2", {}, "Alerts, last 7 days"), table([
          { label: "at", get: (r) => r.at.slice(0, 19).replace("T", " ") },
          { label: "type", get: (r) => r.type },
          { label: "what", get: (r) => (r.alert && (r.alert.budget_name || (r.alert.scope_id ? r.alert.scope + " " + r.alert.scope_id : ""))) || r.id },
          { label: "metric", get: (r) => (r.alert && r.alert.metric) || "" },
          { label: "delivery", get: (r) => r.webhook ? badge(r.webhook.delivery) : badge("none") },
        ], (alerts.alerts || []).slice().reverse(), "alerts")),
        h("div", { class: "panel" }, h("h2", {}, "Anomalies, last 7 days"), table([
          { label: "hour", get: (r) => String(r.hour).slice(0, 16).replace("T", " ") },
          { label: "scope", get: (r) => r.scope + " " + r.scope_id },
          { label: "metric", get: (r) => r.metric },
          { label: "value", num: true, get: (r) => fmtNum(r.value, 2) },
          { label: "baseline", num: true, get: (r) => fmtNum(r.baseline, 2) },
          { label: "score", num: true, get: (r) => fmtNum(r.score, 1) },
        ], anomalies.anomalies || [], "anomalies"),
          h("p", { class: "muted" }, "Last scan: " + (anomalies.checked_at || "not yet") + ", " + (anomalies.checked || []).length + " series judged, threshold " + anomalies.threshold)),
      );
    } catch (e) { showError(e); }
  }
  load();
  const timer = setInterval(load, 10000);
  return () => clearInterval(timer);
}

// ---------- Meters ----------
const WINDOW_MS = { HOUR: 3600000, DAY: 86400000, MONTH: 30 * 86400000 };
function pageMeters(root) {
  const meter = h("select", { "data-testid": "meters-meter", "aria-label": "Meter" });
  const size = h("select", { "data-testid": "meters-window" }, ["HOUR", "DAY", "MONTH"].map((w) => h("option", { value: w, selected: w === "DAY" }, w.toLowerCase())));
  const days = h("select", { "data-testid": "meters-days" }, [1, 7, 30, 90].map((d) => h("option", { value: d, selected: d === 7 }, d === 1 ? "today" : "last " + d + " days")));
  const tz = h("input", { type: "text", value: "UTC", size: 16, "data-testid": "meters-tz", "aria-label": "Time zone" });
  const group = h("select", { "data-testid": "meters-groupby" });
  const download = h("button", { type: "button", "data-testid": "meters-csv" }, "Download CSV");
  const out = h("div", {});
  let meters = [];
  root.append(h("h1", {}, "Meters"), h("div", { class: "controls" },
    h("label", {}, "Meter", meter), h("label", {}, "Window", size), h("label", {}, "Period", days),
    h("label", {}, "Time zone", tz), h("label", {}, "Rows by", group), download), out);
  function groups() {
    const m = meters.find((x) => x.slug === meter.value);
    const keep = group.value;
    group.replaceChildren(h("option", { value: "" }, "window only"), h("option", { value: "subject" }, "subject"),
      ...Object.keys((m && m.groupBy) || {}).map((k) => h("option", { value: k }, k)));
    // By subject at first; a choice stays while the new meter has it.
    group.value = keep && [...group.options].some((o) => o.value === keep) ? keep : "subject";
  }
  function range() {
    const now = Date.now();
    const first = new Date(now - (Number(days.value) - 1) * 86400000);
    return [new Date(Date.UTC(first.getUTCFullYear(), first.getUTCMonth(), first.getUTCDate())), new Date(now)];
  }
  function query(by) {
    const [f, t] = range();
    let q = "from=" + encodeURIComponent(f.toISOString()) + "&to=" + encodeURIComponent(t.toISOString()) +
      "&windowSize=" + size.value + "&windowTimeZone=" + encodeURIComponent(tz.value.trim() || "UTC");
    if (by) q += "&groupBy=" + encodeURIComponent(by);
    return "/api/v1/meters/" + encodeURIComponent(meter.value) + "/query?" + q;
  }
  download.addEventListener("click", async () => {
    try {
      const res = await api(query(group.value), { raw: true, headers: { accept: "text/csv" } });
      await saveAs(res, meter.value + "-" + size.value.toLowerCase() + ".csv");
    } catch (e) { showError(e); }
  });
  let seq = 0;
  async function load() {
    const mine = ++seq;
    if (!meter.value) {
      out.replaceChildren(h("p", { class: "muted", "data-testid": "meters-none" }, "No meters yet: define them under [[meters]] in the config file, or POST /api/v1/meters."));
      return;
    }
    try {
      const [total, rows] = await Promise.all([api(query("")), api(query(group.value))]);
      if (mine !== seq) return;
      clearError();
      const m = meters.find((x) => x.slug === meter.value) || {};
      const [f, t] = range();
      const by = group.value;
      const columns = [{ label: "window", get: (r) => r.windowStart.replace("T", " ").replace(/:00(\.0+)?(Z|[+-]\d\d:\d\d)$/, "$2") }];
      if (by === "subject") columns.push({ label: "subject", get: (r) => r.subject });
      else if (by) columns.push({ label: by, get: (r) => (r.groupBy[by] == null ? "–" : r.groupBy[by]) });
      columns.push({ label: "value", num: true, get: (r) => fmtNum(r.value, Number.isInteger(r.value) ? 0 : 2) });
      const sorted = rows.data.slice().sort((a, b) => (a.windowStart < b.windowStart ? -1 : a.windowStart > b.windowStart ? 1 : 0));
      out.replaceChildren(
        h("div", { class: "cards" },
          card("Aggregation", m.aggregation || "–", "meters-aggregation"),
          card("Event type", m.eventType || "–", "meters-event-type"),
          card("Windows with events", fmtInt(total.data.length), "meters-windows", total.data.length)),
        h("div", { class: "panel" }, h("h2", {}, (m.name || m.slug) + " per " + size.value.toLowerCase()),
          h("div", { "data-testid": "meters-chart" }, barChart(total.data.map((r) => [Date.parse(r.windowStart), r.value]), WINDOW_MS[size.value], { x0: f.getTime(), x1: t.getTime(), wide: true, label: meter.value + " per window" }))),
        h("div", { class: "panel" }, h("h2", {}, by ? "By " + by : "By window"), table(columns, sorted, "meters-table")),
      );
    } catch (e) { if (mine === seq) showError(e); }
  }
  for (const el of [size, days, group]) el.addEventListener("change", load);
  tz.addEventListener("change", load);
  meter.addEventListener("change", () => { groups(); load(); });
  (async () => {
    try {
      meters = await api("/api/v1/meters");
      meter.replaceChildren(...meters.map((m) => h("option", { value: m.slug }, m.name || m.slug)));
      groups();
      load();
    } catch (e) { showError(e); }
  })();
  const timer = setInterval(load, 30000);
  return () => clearInterval(timer);
}

// ---------- router ----------
const PAGES = { live: pageLive, llm: pageLlm, vm: pageVm, plan: pagePlan, budgets: pageBudgets, meters: pageMeters };
let cleanup = null;
function route() {
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1] || "live";
  const page = PAGES[name] || pageLive;
  if (cleanup) cleanup();
  clearError();
  const root = $("#page");
  root.replaceChildren();
  root.dataset.page = name;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  cleanup = page(root);
}

document.addEventListener("DOMContentLoaded", () => {
  applyTheme();
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
  $("#theme").addEventListener("change", (e) => { localStorage.setItem(THEME_KEY, e.target.value); applyTheme(); });
  $("#token-form").addEventListener("submit", () => {
    const v = $("#token-input").value.trim();
    if (v) localStorage.setItem(TOKEN_KEY, v);
    $("#token-input").value = "";
    tokenGiven();
  });
  $("#token-clear").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); $("#token-dialog").close(); route(); });
  $("#token-button").addEventListener("click", () => askToken("Give the token this page uses; it is kept in this browser only.").then(route));
  window.addEventListener("hashchange", route);
  route();
});
