// Nereid status page: polls /status/data once a second and turns cumulative counters into rates.
// Every value reaches the DOM through textContent, never innerHTML: model names and error text
// are shown as text, whatever characters they hold.
"use strict";

const POLL_MS = 1000;
const HISTORY = 120;
const history = { throughput: [], latency: [] };
let previous = null;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fmt(value, digits) {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}

function key(model, version) {
  return model + "\u0000" + version;
}

// Rates and means between two snapshots, per model version.
function deltas(now, before) {
  const out = new Map();
  const old = new Map();
  if (before) for (const s of before.stats) old.set(key(s.model, s.version), s);
  const seconds = before ? Math.max(now.time - before.time, 1e-3) : NaN;
  for (const s of now.stats) {
    const p = old.get(key(s.model, s.version));
    const requests = p ? s.success + s.failure - p.success - p.failure : NaN;
    const ok = p ? s.success - p.success : NaN;
    const queued = p ? s.queue_count - p.queue_count : NaN;
    out.set(key(s.model, s.version), {
      rate: requests / seconds,
      requests: requests,
      failures: p ? s.failure - p.failure : NaN,
      latencyMs: ok > 0 ? (s.success_ns - p.success_ns) / ok / 1e6 : NaN,
      queueMs: queued > 0 ? (s.queue_ns - p.queue_ns) / queued / 1e6 : NaN,
      okNs: p ? s.success_ns - p.success_ns : 0,
      ok: ok,
    });
  }
  return out;
}

function drawChart(canvas, points, color) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  const finite = points.filter(Number.isFinite);
  const max = Math.max(1e-9, ...finite) * 1.15;
  ctx.strokeStyle = "#e3e6ea";
  ctx.fillStyle = "#667";
  ctx.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 2; i++) {
    const y = h - pad / 2 - (i / 2) * (h - pad);
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(fmt((i / 2) * max, max < 10 ? 2 : 0), 0, y + 4);
  }
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.beginPath();
  let started = false;
  points.forEach((value, i) => {
    if (!Number.isFinite(value)) { started = false; return; }
    const x = pad + (i / (HISTORY - 1)) * (w - pad);
    const y = h - pad / 2 - (value / max) * (h - pad);
    if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    started = true;
  });
  ctx.stroke();
  canvas.dataset.points = String(finite.length);
  canvas.dataset.last = finite.length ? String(finite[finite.length - 1]) : "";
}

function push(series, value) {
  series.push(value);
  while (series.length > HISTORY) series.shift();
}

function replaceRows(tbody, rows) {
  const fragment = document.createDocumentFragment();
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const cell of cells) tr.appendChild(cell);
    fragment.appendChild(tr);
  }
  tbody.replaceChildren(fragment);
}

function renderModels(data, d) {
  const filter = document.getElementById("filter").value.trim().toLowerCase();
  const stats = new Map(data.stats.map((s) => [key(s.model, s.version), s]));
  const perModel = new Map();  // requests per model in the last interval, for the traffic split
  for (const [k, v] of d) {
    const model = k.split("\u0000")[0];
    perModel.set(model, (perModel.get(model) || 0) + (Number.isFinite(v.requests) ? v.requests : 0));
  }
  const rows = [];
  for (const m of data.models) {
    if (filter && !m.name.toLowerCase().includes(filter)) continue;
    const s = stats.get(key(m.name, m.version));
    const v = d.get(key(m.name, m.version)) || {};
    const total = perModel.get(m.name) || 0;
    const observed = s && total > 0 && Number.isFinite(v.requests) ? (100 * v.requests / total).toFixed(0) + "%" : "–";
    // With a routing section the configured share is shown beside what was observed.
    const configured = Number.isFinite(m.configured_share) ? " (of " + m.configured_share.toFixed(0) + "%)" : "";
    const split = observed + configured;
    const priorities = s ? Object.entries(s.pending_by_priority).filter(([, n]) => n > 0).map(([p, n]) => "p" + p + ":" + n).join(" ") : "";
    const state = el("td", m.state, "state-" + m.state);
    rows.push([
      el("td", m.name), el("td", m.version), state, el("td", m.reason || "", "msg"),
      el("td", fmt(v.rate, 1), "num"), el("td", split, "num"),
      el("td", fmt(v.latencyMs, 2), "num"), el("td", fmt(v.queueMs, 2), "num"),
      el("td", s ? String(s.pending) + (priorities ? " (" + priorities + ")" : "") : "–", "num"),
      el("td", s && s.execution_count ? fmt(s.inference_count / s.execution_count, 2) : "–", "num"),
      el("td", s ? s.failure : "–", "num"),
    ]);
  }
  replaceRows(document.querySelector("#models tbody"), rows);
}

function renderLlm(data) {
  document.getElementById("llm-section").hidden = data.llm.length === 0;
  replaceRows(document.querySelector("#llm tbody"), data.llm.map((e) => [
    el("td", e.model), el("td", e.version),
    el("td", fmt(100 * (e.kv_cache_usage || 0), 1) + "%", "num"),
    el("td", e.running ?? 0, "num"), el("td", e.waiting ?? 0, "num"),
  ]));
}

function renderErrors(data) {
  replaceRows(document.querySelector("#errors tbody"), data.errors.slice(0, 20).map((e) => [
    el("td", new Date(e.time * 1000).toLocaleTimeString()), el("td", e.model), el("td", e.version),
    el("td", e.request_id), el("td", e.reason), el("td", e.message, "msg"),
  ]));
}

function render(data) {
  const d = deltas(data, previous);
  let rate = 0, okNs = 0, ok = 0, failures = 0, queued = 0;
  for (const v of d.values()) {
    if (Number.isFinite(v.rate)) rate += v.rate;
    if (v.ok > 0) { okNs += v.okNs; ok += v.ok; }
    if (Number.isFinite(v.failures)) failures += v.failures;
  }
  for (const s of data.stats) queued += s.pending;
  if (previous) {
    push(history.throughput, rate);
    push(history.latency, ok > 0 ? okNs / ok / 1e6 : NaN);
  }
  const state = document.getElementById("server-state");
  state.textContent = data.server.ready ? "READY" : data.server.live ? "LIVE, NOT READY" : "NOT LIVE";
  state.className = "pill " + (data.server.ready ? "ok" : "bad");
  document.getElementById("uptime").textContent = "up " + Math.round(data.server.uptime_s) + " s";
  document.getElementById("updated").textContent = "updated " + new Date(data.time * 1000).toLocaleTimeString();
  document.getElementById("now-throughput").textContent = previous ? fmt(rate, 1) : "–";
  document.getElementById("now-latency").textContent = ok > 0 ? fmt(okNs / ok / 1e6, 2) : "–";
  document.getElementById("now-queue").textContent = String(queued);
  document.getElementById("now-errors").textContent = previous ? String(failures) : "–";
  drawChart(document.getElementById("chart-throughput"), history.throughput, "#2563eb");
  drawChart(document.getElementById("chart-latency"), history.latency, "#d97706");
  renderModels(data, d);
  renderLlm(data);
  renderErrors(data);
  previous = data;
}

async function poll() {
  try {
    const response = await fetch("/status/data", { cache: "no-store" });
    if (response.ok) render(await response.json());
    else document.getElementById("server-state").textContent = "HTTP " + response.status;
  } catch (err) {
    const state = document.getElementById("server-state");
    state.textContent = "unreachable";
    state.className = "pill bad";
  }
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("filter").addEventListener("input", () => previous && renderModels(previous, new Map()));
  poll();
});
