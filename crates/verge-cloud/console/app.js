// The Verge cloud console: a hash-routed single page over the open API
// (/api, docs/cloud.md). No framework, no build step, no external requests.
// Data from the API is only ever put into the DOM as text (h() below makes
// text nodes), never as HTML: payloads come from devices.
"use strict";

const TOKEN_KEY = "verge.token";
const MAX_MESSAGES = 200;

// ---------------------------------------------------------------- DOM helpers

/** Element `tag` with attributes (`on*` functions become listeners; `value`,
 * `checked`, `disabled`, `hidden` are properties) and children (strings become
 * text nodes; null/false are skipped; arrays are flattened). */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value" || k === "checked" || k === "disabled" || k === "hidden") el[k] = v;
    else if (k === "testid") el.setAttribute("data-testid", v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, kids);
  return el;
}

/** Append children (strings as text, arrays flattened) to `el`. */
function append(el, ...kids) {
  for (const kid of kids) {
    if (kid === null || kid === undefined || kid === false) continue;
    if (Array.isArray(kid)) append(el, ...kid);
    else el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
}

function byId(id) {
  return document.getElementById(id);
}

function replace(el, ...kids) {
  el.replaceChildren();
  append(el, kids);
}

// ---------------------------------------------------------------- formatting

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d) return `${d} d ${hh} h`;
  if (hh) return `${hh} h ${m} min`;
  if (m) return `${m} min ${sec} s`;
  return `${sec} s`;
}

function num(v, digits = 1) {
  return typeof v === "number" ? v.toFixed(digits) : "–";
}

function us(v) {
  return typeof v === "number" ? `${v} µs` : "–";
}

function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "–";
}

function json(v) {
  return v === undefined ? "" : JSON.stringify(v, null, 2);
}

function badge(status) {
  return h("span", { class: `badge status-${status || "unknown"}`, testid: "status" }, status || "unknown");
}

// ---------------------------------------------------------------- API client

class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail || {};
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

/** One open-API call; resolves with the parsed body, rejects with ApiError. */
async function api(method, path, body, tok) {
  const headers = { Authorization: `Bearer ${tok || token()}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", `cannot reach the cloud (${e.message})`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!res.ok) {
    const err = (data && typeof data === "object" && data.error) || {};
    const message = err.message || (typeof data === "string" && data) || res.statusText || "request failed";
    const e = new ApiError(res.status, err.code || `http_${res.status}`, message, err);
    if (res.status === 401 && !tok) loggedOut("token refused");
    throw e;
  }
  return data;
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------- errors banner

const bannerErrors = new Map();

/** Show `err` in the banner under `key` (a later error with the same key
 * replaces it; clearError(key) removes it). */
function showError(err, key = "action") {
  if (err && err.status === 401) return;
  const text = err instanceof ApiError
    ? `${err.code}: ${err.message}`
    : String((err && err.message) || err);
  bannerErrors.set(key, text);
  renderBanner();
}

function clearError(key) {
  if (bannerErrors.delete(key)) renderBanner();
}

function renderBanner() {
  const b = byId("banner");
  b.hidden = bannerErrors.size === 0;
  replace(b, [...bannerErrors].map(([key, text]) =>
    h("div", { class: "banner-item", testid: "error" },
      h("span", {}, text),
      h("button", { type: "button", class: "ghost", "aria-label": "dismiss", onclick: () => clearError(key) }, "×"))));
}

/** Run an action of the user; its error goes to the banner (or `inline`). */
async function act(fn, inline) {
  clearError("action");
  if (inline) { inline.hidden = true; inline.textContent = ""; }
  try {
    return await fn();
  } catch (e) {
    if (inline && !(e.status === 401)) {
      inline.textContent = e instanceof ApiError ? `${e.code}: ${e.message}` : String(e.message || e);
      inline.hidden = false;
    } else {
      showError(e);
    }
    return undefined;
  }
}

// ---------------------------------------------------------------- routing and polling

let routeGen = 0;
let timers = [];

/** Call `fn` now and every `ms` while the current page is shown, never two at
 * once; errors go to the banner under `key` and clear on the next success. */
function poll(ms, key, fn) {
  const gen = routeGen;
  let busy = false;
  const tick = async () => {
    if (busy || gen !== routeGen) return;
    busy = true;
    try {
      await fn();
      clearError(key);
    } catch (e) {
      if (gen === routeGen) showError(e, key);
    } finally {
      busy = false;
    }
  };
  tick();
  timers.push(setInterval(tick, ms));
}

function current(gen) {
  return gen === routeGen;
}

const routes = [
  [/^#\/nodes\/([^/]+)$/, (m) => nodeDetailPage(decodeURIComponent(m[1]))],
  [/^#\/nodes$/, nodesPage],
  [/^#\/devices$/, devicesPage],
  [/^#\/rules$/, rulesPage],
  [/^#\/functions$/, functionsPage],
  [/^#\/messages$/, messagesPage],
];

function route() {
  routeGen++;
  timers.forEach(clearInterval);
  timers = [];
  bannerErrors.clear();
  renderBanner();
  if (!token()) return loggedOut();
  byId("login").hidden = true;
  byId("top").hidden = false;
  const main = byId("main");
  main.hidden = false;
  main.replaceChildren();
  const hash = location.hash || "#/nodes";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", hash.startsWith(a.getAttribute("href")));
  }
  for (const [re, page] of routes) {
    const m = hash.match(re);
    if (m) return page(m);
  }
  location.hash = "#/nodes";
}

function loggedOut(reason) {
  localStorage.removeItem(TOKEN_KEY);
  routeGen++;
  timers.forEach(clearInterval);
  timers = [];
  bannerErrors.clear();
  renderBanner();
  byId("top").hidden = true;
  byId("main").hidden = true;
  byId("login").hidden = false;
  const err = byId("login-error");
  err.hidden = !reason;
  err.textContent = reason || "";
  byId("login-token").focus();
}

async function login(ev) {
  ev.preventDefault();
  const tok = byId("login-token").value.trim();
  const err = byId("login-error");
  err.hidden = true;
  try {
    await api("GET", "/api/nodes", undefined, tok);
  } catch (e) {
    err.textContent = e.status === 401 ? "token refused" : `${e.code}: ${e.message}`;
    err.hidden = false;
    return;
  }
  localStorage.setItem(TOKEN_KEY, tok);
  byId("login-token").value = "";
  if (!location.hash || location.hash === "#/") location.hash = "#/nodes";
  else route();
}

// ---------------------------------------------------------------- shared pieces

function section(title, ...kids) {
  return h("section", { class: "card" }, h("h2", {}, title), ...kids);
}

function table(id, headers) {
  const body = h("tbody", { id: `${id}-body` });
  const t = h("table", { id, testid: id }, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), body);
  return [t, body];
}

function emptyRow(cols, text) {
  return h("tr", { class: "empty" }, h("td", { colspan: cols }, text));
}

function field(label, input, ...extra) {
  return h("label", { class: "field" }, h("span", {}, label), input, ...extra);
}

/** A value shown once (a secret or join token) with a copy button. */
function secretBox(id, title, rows) {
  return h("div", { id, testid: id, class: "secret-box" },
    h("strong", {}, title),
    rows.map(([label, value, testid]) => h("div", { class: "secret-row" },
      h("span", { class: "muted" }, label),
      h("code", { testid, id: testid }, value),
      h("button", { type: "button", class: "ghost", testid: `copy-${testid}`, onclick: (ev) => copy(value, ev.target) }, "Copy"))),
    h("p", { class: "muted" }, "Shown once: copy it now."));
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const ta = h("textarea", { value: text });
    document.body.append(ta);
    ta.select();
    document.execCommand("copy");
    ta.remove();
  }
  const old = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = old; }, 1200);
}

/** Parse a JSON textarea; on failure show the reason in `inline` and throw. */
function parseJson(text, what, inline) {
  try {
    return JSON.parse(text);
  } catch (e) {
    if (inline) { inline.textContent = `${what} is not valid JSON: ${e.message}`; inline.hidden = false; }
    throw new ApiError(0, "invalid_json", `${what} is not valid JSON: ${e.message}`);
  }
}

function nodeOptions(select, nodes, selected) {
  replace(select, nodes.map((n) => h("option", { value: n.id, selected: n.id === selected }, n.name || n.id)));
  if (selected) select.value = selected;
}

/** Live message list: polls `url(afterId)` every second, newest first, at
 * most MAX_MESSAGES kept. `url(null)` is the first request. */
function liveMessages(url, opts = {}) {
  const gen = routeGen;
  const list = h("ol", { class: "messages", id: opts.id || "messages-list", testid: "messages-list" });
  const count = h("span", { class: "muted", testid: "messages-count" }, "0 messages");
  const pause = h("input", { type: "checkbox", testid: "messages-pause" });
  const filter = h("input", { type: "text", placeholder: "topic filter, e.g. processed/#", testid: "messages-topic", class: "grow" });
  let lastId = null;
  let started = false;
  const reset = () => { lastId = null; started = false; list.replaceChildren(); count.textContent = "0 messages"; };
  filter.addEventListener("change", reset);
  const fetchPage = async () => {
    const path = url(started ? lastId : null, filter.value.trim());
    if (path === null) return 0; // the view was closed
    const got = await api("GET", path);
    if (!current(gen) || !Array.isArray(got)) return 0;
    started = true;
    if (got.length) lastId = got[got.length - 1].id;
    for (const m of got) list.prepend(messageItem(m));
    while (list.children.length > MAX_MESSAGES) list.lastElementChild.remove();
    count.textContent = `${list.children.length} messages`;
    return got.length;
  };
  poll(1000, opts.key || "messages", async () => {
    if (pause.checked) return;
    // Catch up in pages of 1000 after a pause or a burst.
    for (let i = 0; i < 5; i++) if ((await fetchPage()) < 1000 || !started) break;
  });
  return h("div", { class: "live", testid: "live-messages" },
    h("div", { class: "row" }, opts.noFilter ? null : filter, h("label", { class: "inline" }, pause, " pause"), count),
    list);
}

function messageItem(m) {
  const payload = m.payload_base64 !== undefined && m.payload_base64 !== null
    ? `base64: ${m.payload_base64}`
    : typeof m.payload === "string" ? m.payload : json(m.payload);
  return h("li", { testid: "message", "data-topic": m.topic },
    h("div", { class: "msg-head" },
      h("code", { class: "topic", testid: "message-topic" }, m.topic),
      h("span", { class: "muted" }, `${time(m.received_ms)}${m.node_id ? ` · ${m.node_id}` : ""}`)),
    h("pre", { testid: "message-payload" }, payload));
}

// ---------------------------------------------------------------- nodes

function nodesPage() {
  const gen = routeGen;
  const name = h("input", { id: "node-name", testid: "node-name", required: true, placeholder: "edge-1", pattern: "[A-Za-z0-9_\\-]{1,64}" });
  const desc = h("input", { id: "node-description", testid: "node-description", placeholder: "optional", class: "grow" });
  const created = h("div", { id: "node-created-slot" });
  const form = h("form", { id: "node-form", class: "row", testid: "node-form" },
    field("Name", name), field("Description", desc),
    h("button", { type: "submit", id: "node-create", testid: "node-create" }, "Create node"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const r = await api("POST", "/api/nodes", { name: name.value.trim(), description: desc.value });
      name.value = "";
      desc.value = "";
      replace(created, secretBox("node-created", `Node ${r.node.name || r.node.id} created. Start it with:`, [
        ["Join command", r.join_command, "join-command"],
        ["Join token", r.join_token, "join-token"],
      ]));
      await refresh();
    });
  });
  const [t, body] = table("nodes-table", ["Name", "Status", "Last seen", "Desired / applied", "CPU", "Memory", "Connections"]);
  const refresh = async () => {
    const nodes = await api("GET", "/api/nodes");
    if (!current(gen)) return;
    replace(body, nodes.length ? nodes.map((n) => {
      const r = n.report || {};
      return h("tr", { testid: "node-row", "data-id": n.id, "data-name": n.name },
        h("td", {}, h("a", { href: `#/nodes/${enc(n.id)}`, testid: "node-link" }, n.name || n.id)),
        h("td", {}, badge(n.status)),
        h("td", { testid: "node-last-seen" }, ago(n.last_seen_ms)),
        h("td", {}, `${n.desired_version ?? "–"} / ${n.applied_version ?? "–"}`),
        h("td", {}, n.report ? `${num(r.cpu_percent)} %` : "–"),
        h("td", {}, n.report ? bytes(r.memory_bytes) : "–"),
        h("td", {}, n.report ? String(r.connections ?? "–") : "–"));
    }) : emptyRow(7, "No nodes yet: create one above."));
  };
  append(byId("main"), h("h1", {}, "Nodes"), section("Create node", form, created), section("All nodes", t));
  poll(2000, "nodes", refresh);
}

/** An inline SVG line chart of `series` ([{name, cls, points: [[t, v]]}]). */
function lineChart(id, title, series, fmt) {
  const W = 320, H = 120, L = 48, R = 8, T = 8, B = 18;
  const NS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
  const pts = series.flatMap((x) => x.points);
  if (!pts.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no data yet"));
  } else {
    const t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]));
    const vmax = Math.max(...pts.map((p) => p[1]), 0) || 1;
    const x = (t) => L + (t1 === t0 ? (W - L - R) : ((t - t0) / (t1 - t0)) * (W - L - R));
    const y = (v) => T + (1 - v / vmax) * (H - T - B);
    for (const v of [0, vmax / 2, vmax]) {
      svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      svg.append(s("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end", class: "axis" }, fmt(v)));
    }
    svg.append(s("text", { x: L, y: H - 4, class: "axis" }, time(t0)));
    svg.append(s("text", { x: W - R, y: H - 4, "text-anchor": "end", class: "axis" }, time(t1)));
    for (const ser of series) {
      if (!ser.points.length) continue;
      svg.append(s("polyline", { points: ser.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "), class: `line ${ser.cls}` }));
    }
  }
  const legend = h("div", { class: "legend" }, series.map((x) => h("span", { class: `key ${x.cls}` }, x.name)));
  const fig = h("figure", { id, testid: id, class: "chart-card" }, h("figcaption", {}, title), legend);
  fig.append(svg);
  return fig;
}

function nodeDetailPage(id) {
  const gen = routeGen;
  const title = h("h1", {}, id);
  const summary = h("dl", { id: "node-summary", testid: "node-summary", class: "summary" });
  const charts = h("div", { class: "charts", id: "node-charts" });
  const deploy = h("div", { id: "node-deployment", testid: "node-deployment" });
  const [dt, devBody] = table("node-devices", ["Device", "Last telemetry", "When"]);
  const [rt, ruleBody] = table("node-rules", ["Rule", "Enabled", "State", "In", "Rows out", "Errors", "p99", "Last error"]);
  const [ft, fnBody] = table("node-functions", ["Function", "Version", "Calls", "Errors", "Timeouts", "p50", "p99", "Last error"]);
  const newToken = h("div");
  const reinstall = h("button", { type: "button", class: "ghost", testid: "node-join-token", onclick: () => act(async () => {
    const r = await api("POST", `/api/nodes/${enc(id)}/join-token`);
    replace(newToken, secretBox("node-created", "New one-time join token:", [["Join command", r.join_command, "join-command"]]));
  }) }, "New join token");
  const del = h("button", { type: "button", class: "danger", testid: "node-delete", onclick: () => {
    if (!confirm(`Delete node ${id}?`)) return;
    act(async () => { await api("DELETE", `/api/nodes/${enc(id)}`); location.hash = "#/nodes"; });
  } }, "Delete node");
  append(byId("main"),
    h("p", {}, h("a", { href: "#/nodes" }, "← Nodes")), title,
    section("Status", summary, h("div", { class: "row" }, reinstall, del), newToken),
    section("Metrics", charts),
    section("Deployment", deploy),
    section("Devices", dt), section("Rules", rt), section("Functions", ft),
    section("Live messages", liveMessages((after, topic) => {
      const q = new URLSearchParams({ limit: after === null ? String(MAX_MESSAGES) : "1000" });
      if (after !== null) q.set("after_id", after);
      if (topic) q.set("topic", topic);
      return `/api/nodes/${enc(id)}/messages?${q}`;
    }, { key: "node-messages" })));

  poll(2000, "node", async () => {
    const [n, metrics, deps, devices, rules, fns] = await Promise.all([
      api("GET", `/api/nodes/${enc(id)}`),
      api("GET", `/api/nodes/${enc(id)}/metrics?since_ms=${Date.now() - 15 * 60 * 1000}`),
      api("GET", "/api/deployments"),
      api("GET", `/api/devices?node_id=${enc(id)}`),
      api("GET", `/api/rules?node_id=${enc(id)}`),
      api("GET", "/api/functions"),
    ]);
    if (!current(gen)) return;
    const r = n.report || {};
    replace(title, n.name || n.id, " ", badge(n.status));
    const rows = [
      ["Id", n.id], ["Description", n.description || "–"], ["Status", badge(n.status)],
      ["Last seen", ago(n.last_seen_ms)], ["Joined", n.joined_ms ? new Date(n.joined_ms).toLocaleString() : "not yet"],
      ["Desired version", n.desired_version], ["Applied version", n.applied_version],
      ["Apply errors", (n.apply_errors || []).length ? h("ul", { class: "errors", testid: "apply-errors" }, n.apply_errors.map((e) => h("li", {}, e))) : "none"],
      ["Agent version", r.agent_version || "–"], ["Uptime", n.report ? duration(r.uptime_s) : "–"],
      ["CPU", n.report ? `${num(r.cpu_percent)} %` : "–"], ["Memory", n.report ? bytes(r.memory_bytes) : "–"],
      ["Disk free", n.report ? `${bytes(r.disk_free_bytes)} of ${bytes(r.disk_total_bytes)}` : "–"],
      ["Connections", n.report ? r.connections : "–"],
      ["Messages in / out", n.report ? `${r.messages_in} / ${r.messages_out} (${num(r.messages_in_rate)} / ${num(r.messages_out_rate)} per s)` : "–"],
      ["Backlog", n.report ? `${r.backlog_messages} messages, ${bytes(r.backlog_bytes)}` : "–"],
      ["Cloud link", n.report ? (r.link_up ? "up" : "down") : "–"],
    ];
    replace(summary, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")]));
    const pts = (key) => metrics.map((m) => [m.ts_ms, Number(m[key]) || 0]);
    replace(charts,
      lineChart("chart-cpu", "CPU %", [{ name: "cpu", cls: "s1", points: pts("cpu_percent") }], (v) => num(v, v < 10 ? 1 : 0)),
      lineChart("chart-memory", "Memory", [{ name: "resident", cls: "s2", points: pts("memory_bytes") }], bytes),
      lineChart("chart-rates", "Messages per second", [
        { name: "in", cls: "s1", points: pts("messages_in_rate") },
        { name: "out", cls: "s3", points: pts("messages_out_rate") }], (v) => num(v, v < 10 ? 1 : 0)));
    const d = deps.find((x) => x.node_id === id);
    replace(deploy, d
      ? [h("span", { class: `badge state-${d.state}`, testid: "deployment-state" }, d.state), ` desired ${d.desired_version}, applied ${d.applied_version}`,
        (d.errors || []).length ? h("ul", { class: "errors" }, d.errors.map((e) => h("li", {}, e))) : null]
      : "no deployment yet");
    replace(devBody, devices.length ? devices.map((x) => h("tr", {},
      h("td", {}, x.id), h("td", {}, h("pre", { class: "inline-json" }, x.last_telemetry === null ? "–" : json(x.last_telemetry))),
      h("td", {}, ago(x.last_telemetry_ms)))) : emptyRow(3, "No devices bound to this node."));
    const ruleStats = new Map((r.rules || []).map((x) => [x.id, x]));
    replace(ruleBody, rules.length ? rules.map((x) => {
      const st = ruleStats.get(x.id) || x.status || {};
      const m = st.metrics || {};
      return h("tr", { "data-id": x.id },
        h("td", {}, x.id), h("td", {}, x.enabled ? "yes" : "no"), h("td", {}, st.status || "–"),
        h("td", {}, m.messages_in ?? "–"), h("td", {}, m.rows_out ?? "–"), h("td", {}, m.errors ?? "–"),
        h("td", {}, us(m.latency_p99_us)), h("td", { class: "error" }, m.last_error || ""));
    }) : emptyRow(8, "No rules on this node."));
    const fnStats = new Map((r.functions || []).map((x) => [x.name, x]));
    const used = fns.filter((f) => (f.nodes || []).includes(id) || fnStats.has(f.name));
    replace(fnBody, used.length ? used.map((f) => {
      const st = fnStats.get(f.name) || {};
      const m = st.metrics || st;
      return h("tr", { "data-name": f.name },
        h("td", {}, f.name), h("td", {}, st.version ?? f.version), h("td", {}, m.invocations ?? "–"),
        h("td", {}, m.errors ?? "–"), h("td", {}, m.timeouts ?? "–"), h("td", {}, us(m.p50_us)), h("td", {}, us(m.p99_us)),
        h("td", { class: "error" }, m.last_error ? `${m.last_error.code}: ${m.last_error.message}` : ""));
    }) : emptyRow(8, "No functions on this node."));
  });
}

// ---------------------------------------------------------------- devices

function devicesPage() {
  const gen = routeGen;
  const name = h("input", { id: "device-name", testid: "device-name", required: true, placeholder: "d1" });
  const node = h("select", { id: "device-node", testid: "device-node", required: true });
  const desc = h("input", { id: "device-description", testid: "device-description", placeholder: "optional", class: "grow" });
  const created = h("div");
  const panel = h("div", { id: "device-panel" });
  const form = h("form", { id: "device-form", class: "row", testid: "device-form" },
    field("Name", name), field("Node", node), field("Description", desc),
    h("button", { type: "submit", id: "device-create", testid: "device-create" }, "Create device"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const r = await api("POST", "/api/devices", { name: name.value.trim(), node_id: node.value, description: desc.value });
      name.value = "";
      desc.value = "";
      replace(created, secretBox("device-created", `Device ${r.device.id} created on ${r.device.node_id}. Its MQTT username is its id; password:`, [
        ["Device id", r.device.id, "device-id"], ["Secret", r.secret, "device-secret"]]));
      await refresh();
    });
  });
  const [t, body] = table("devices-table", ["Device", "Node", "Last telemetry", "When", ""]);
  let nodesLoaded = false;
  const refresh = async () => {
    const [devices, nodes] = await Promise.all([api("GET", "/api/devices"), api("GET", "/api/nodes")]);
    if (!current(gen)) return;
    if (!nodesLoaded || node.options.length !== nodes.length) { nodeOptions(node, nodes, node.value); nodesLoaded = true; }
    replace(body, devices.length ? devices.map((d) => h("tr", { testid: "device-row", "data-id": d.id },
      h("td", {}, d.id, d.description ? h("div", { class: "muted" }, d.description) : null),
      h("td", {}, h("a", { href: `#/nodes/${enc(d.node_id)}` }, d.node_id)),
      h("td", {}, h("pre", { class: "inline-json", testid: "device-telemetry" }, d.last_telemetry === null || d.last_telemetry === undefined ? "–" : json(d.last_telemetry))),
      h("td", {}, ago(d.last_telemetry_ms)),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "ghost", testid: "device-open", onclick: () => openDevice(d) }, "Commands & messages"),
        h("button", { type: "button", class: "ghost", testid: "device-rotate", onclick: () => act(async () => {
          const r = await api("POST", `/api/devices/${enc(d.id)}/secret`);
          replace(created, secretBox("device-created", `New secret of ${d.id} (the old one no longer works once the node applies it):`, [["Secret", r.secret, "device-secret"]]));
        }) }, "Rotate secret"),
        h("button", { type: "button", class: "danger", testid: "device-delete", onclick: () => {
          if (!confirm(`Delete device ${d.id}?`)) return;
          act(async () => { await api("DELETE", `/api/devices/${enc(d.id)}`); await refresh(); });
        } }, "Delete")))) : emptyRow(5, "No devices yet."));
  };
  let panelGen = 0;
  const openDevice = (d) => {
    const my = ++panelGen;
    const cname = h("input", { id: "command-name", testid: "command-name", required: true, placeholder: "reboot" });
    const payload = h("textarea", { id: "command-payload", testid: "command-payload", rows: 3 });
    payload.value = "{}";
    const inline = h("p", { class: "error", testid: "command-error", hidden: true });
    const result = h("p", { class: "muted", testid: "command-result" });
    const cform = h("form", { class: "stack", testid: "command-form" },
      field("Command", cname), field("Payload (JSON)", payload), inline,
      h("div", { class: "row" }, h("button", { type: "submit", testid: "command-send" }, "Send command"), result));
    cform.addEventListener("submit", (ev) => {
      ev.preventDefault();
      act(async () => {
        const body = parseJson(payload.value, "payload", inline);
        const r = await api("POST", `/api/devices/${enc(d.id)}/commands/${enc(cname.value.trim())}`, body);
        result.textContent = `queued on ${r.topic}`;
      }, inline);
    });
    // The message list polls while this device stays open (the first poller
    // of a device panel stops itself when another device is opened).
    const live = liveMessages((after) => {
      if (my !== panelGen) return null;
      const q = new URLSearchParams({ limit: after === null ? String(MAX_MESSAGES) : "1000" });
      if (after !== null) q.set("after_id", after);
      return `/api/devices/${enc(d.id)}/messages?${q}`;
    }, { key: "device-messages", id: "device-messages", noFilter: true });
    replace(panel, section(`Device ${d.id}`, h("button", { type: "button", class: "ghost", onclick: () => { panelGen++; panel.replaceChildren(); } }, "Close"),
      h("h3", {}, "Send a command"), cform, h("h3", {}, "Messages"), live));
    panel.scrollIntoView({ behavior: "smooth" });
  };
  append(byId("main"), h("h1", {}, "Devices"), section("Create device", form, created), section("All devices", t), panel);
  poll(2000, "devices", refresh);
}

// ---------------------------------------------------------------- rules

function rulesPage() {
  const gen = routeGen;
  const id = h("input", { id: "rule-id", testid: "rule-id", required: true, placeholder: "to-function" });
  const node = h("select", { id: "rule-node", testid: "rule-node", required: true });
  const sql = h("textarea", { id: "rule-sql", testid: "rule-sql", rows: 5, spellcheck: "false", placeholder: 'SELECT topic(2) AS device, temperature FROM "devices/+/telemetry"' });
  const sqlError = h("p", { id: "rule-sql-error", testid: "rule-error", class: "error", hidden: true });
  const actions = h("textarea", { id: "rule-actions", testid: "rule-actions", rows: 4, spellcheck: "false" });
  actions.value = '[{"type": "function", "name": "demo-tag"}]';
  const actionsError = h("p", { testid: "rule-actions-error", class: "error", hidden: true });
  const enabled = h("input", { type: "checkbox", id: "rule-enabled", testid: "rule-enabled", checked: true });
  const desc = h("input", { id: "rule-description", testid: "rule-description", class: "grow" });
  const saved = h("span", { class: "muted", testid: "rule-saved" });
  const formTitle = h("h2", {}, "New rule");
  let editing = null;
  const resetForm = () => {
    editing = null;
    formTitle.textContent = "New rule";
    id.readOnly = false;
    id.value = "";
    sql.value = "";
    desc.value = "";
    enabled.checked = true;
    sqlError.hidden = actionsError.hidden = true;
    saved.textContent = "";
  };
  const edit = (r) => {
    editing = r.id;
    formTitle.textContent = `Edit rule ${r.id}`;
    id.value = r.id;
    id.readOnly = true;
    node.value = r.node_id;
    sql.value = r.sql;
    actions.value = json(r.actions);
    enabled.checked = !!r.enabled;
    desc.value = r.description || "";
    sqlError.hidden = actionsError.hidden = true;
    saved.textContent = "";
    formTitle.scrollIntoView({ behavior: "smooth" });
  };
  const form = h("form", { id: "rule-form", testid: "rule-form", class: "stack" },
    h("div", { class: "row" }, field("Id", id), field("Node", node), field("Description", desc),
      h("label", { class: "inline" }, enabled, " enabled")),
    field("SQL", sql), sqlError,
    field("Actions (JSON array)", actions), actionsError,
    h("div", { class: "row" },
      h("button", { type: "submit", id: "rule-save", testid: "rule-save" }, "Save rule"),
      h("button", { type: "button", class: "ghost", testid: "rule-new", onclick: resetForm }, "New rule"), saved));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sqlError.hidden = actionsError.hidden = true;
    saved.textContent = "";
    let acts;
    try { acts = parseJson(actions.value, "actions", actionsError); } catch { return; }
    const body = { id: id.value.trim(), node_id: node.value, sql: sql.value, actions: acts, enabled: enabled.checked, description: desc.value };
    await act(async () => {
      try {
        const r = editing
          ? await api("PUT", `/api/rules/${enc(editing)}`, body)
          : await api("POST", "/api/rules", body);
        if (!editing) edit(r);
        saved.textContent = `saved ${r.id}`;
        await refresh();
      } catch (e) {
        if (e.code === "invalid_rule" || e.code === "invalid_request") {
          const { line, column } = e.detail;
          const at = line ? ` at line ${line}${column ? `, column ${column}` : ""}` : "";
          sqlError.textContent = `${e.code}${at}: ${e.message}`;
          sqlError.hidden = false;
          return;
        }
        throw e;
      }
    });
  });

  const tTopic = h("input", { id: "rule-test-topic", testid: "rule-test-topic", value: "devices/d1/telemetry", class: "grow" });
  const tPayload = h("textarea", { id: "rule-test-payload", testid: "rule-test-payload", rows: 3 });
  tPayload.value = '{"temperature": 21.5}';
  const tErr = h("p", { class: "error", testid: "rule-test-error", hidden: true });
  const tOut = h("pre", { id: "rule-test-output", testid: "rule-test-output" });
  const tForm = h("form", { class: "stack", testid: "rule-test-form" },
    h("p", { class: "muted" }, "Runs the SQL above on one sample message."),
    field("Topic", tTopic), field("Payload (JSON)", tPayload), tErr,
    h("div", {}, h("button", { type: "submit", id: "rule-test-run", testid: "rule-test-run" }, "Test")), tOut);
  tForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    tOut.textContent = "";
    act(async () => {
      const payload = parseJson(tPayload.value, "payload", tErr);
      const r = await api("POST", "/api/rules/test", { sql: sql.value, samples: [{ topic: tTopic.value.trim(), payload }] });
      const rows = (r && r.rows) || (Array.isArray(r) ? r : []);
      const errors = (r && r.errors) || [];
      tOut.textContent = `${rows.length} row(s)\n${rows.map((x) => json(x)).join("\n")}` +
        (errors.length ? `\nerrors:\n${errors.map((e) => `sample ${e.sample}: ${e.error}`).join("\n")}` : "");
    }, tErr);
  });

  const [t, body] = table("rules-table", ["Rule", "Node", "Enabled", "State", "In", "Rows out", "Errors", "SQL", ""]);
  let nodesLoaded = false;
  const refresh = async () => {
    const [rules, nodes] = await Promise.all([api("GET", "/api/rules"), api("GET", "/api/nodes")]);
    if (!current(gen)) return;
    if (!nodesLoaded || node.options.length !== nodes.length) { nodeOptions(node, nodes, node.value); nodesLoaded = true; }
    replace(body, rules.length ? rules.map((r) => {
      const st = r.status || {};
      const m = st.metrics || {};
      return h("tr", { testid: "rule-row", "data-id": r.id },
        h("td", {}, r.id), h("td", {}, r.node_id), h("td", {}, r.enabled ? "yes" : "no"),
        h("td", {}, st.status || "–", m.last_error ? h("div", { class: "error" }, m.last_error) : null),
        h("td", {}, m.messages_in ?? "–"), h("td", {}, m.rows_out ?? "–"), h("td", {}, m.errors ?? "–"),
        h("td", {}, h("code", { class: "sql" }, r.sql)),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "ghost", testid: "rule-edit", onclick: () => edit(r) }, "Edit"),
          h("button", { type: "button", class: "danger", testid: "rule-delete", onclick: () => {
            if (!confirm(`Delete rule ${r.id}?`)) return;
            act(async () => { await api("DELETE", `/api/rules/${enc(r.id)}`); if (editing === r.id) resetForm(); await refresh(); });
          } }, "Delete")));
    }) : emptyRow(9, "No rules yet."));
  };
  append(byId("main"), h("h1", {}, "Rules"),
    h("section", { class: "card" }, formTitle, form),
    section("Test the SQL", tForm),
    section("All rules", t));
  poll(2000, "rules", refresh);
}

// ---------------------------------------------------------------- functions

function toBase64(buf) {
  const u8 = new Uint8Array(buf);
  let s = "";
  for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
  return btoa(s);
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error(`cannot read ${file.name}`));
    r.readAsArrayBuffer(file);
  });
}

function functionsPage() {
  const gen = routeGen;
  const name = h("input", { id: "function-name", testid: "function-name", required: true, placeholder: "demo-tag" });
  const file = h("input", { id: "function-file", testid: "function-file", type: "file", accept: ".wasm,.wat", required: true });
  const desc = h("input", { id: "function-description", testid: "function-description", class: "grow" });
  const upErr = h("p", { class: "error", testid: "function-error", hidden: true });
  const upOk = h("span", { class: "muted", testid: "function-uploaded" });
  file.addEventListener("change", () => {
    if (!name.value && file.files[0]) name.value = file.files[0].name.replace(/\.(wasm|wat)$/, "");
  });
  const form = h("form", { id: "function-form", testid: "function-form", class: "stack" },
    h("div", { class: "row" }, field("Name", name), field("Module (.wasm or .wat)", file), field("Description", desc)), upErr,
    h("div", { class: "row" }, h("button", { type: "submit", id: "function-upload", testid: "function-upload" }, "Upload"), upOk));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    upOk.textContent = "";
    act(async () => {
      const f = file.files[0];
      if (!f) throw new Error("choose a .wasm or .wat file");
      const spec = { runtime: "wasm" };
      if (desc.value) spec.description = desc.value;
      const r = await api("PUT", `/api/functions/${enc(name.value.trim())}`, { spec, module_base64: toBase64(await readFile(f)) });
      upOk.textContent = `uploaded ${r.name} version ${r.version}`;
      await refresh();
    }, upErr);
  });

  const iName = h("select", { id: "invoke-name", testid: "invoke-name" });
  const iTopic = h("input", { id: "invoke-topic", testid: "invoke-topic", value: "devices/d1/telemetry", class: "grow" });
  const iPayload = h("textarea", { id: "invoke-payload", testid: "invoke-payload", rows: 3 });
  iPayload.value = '{"temperature": 21.5}';
  const iErr = h("p", { class: "error", testid: "invoke-error", hidden: true });
  const iOut = h("pre", { id: "invoke-output", testid: "invoke-output" });
  const iForm = h("form", { class: "stack", testid: "invoke-form" },
    h("div", { class: "row" }, field("Function", iName), field("Topic", iTopic)),
    field("Payload (JSON)", iPayload), iErr,
    h("div", {}, h("button", { type: "submit", id: "invoke-run", testid: "invoke-run" }, "Invoke")), iOut);
  iForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    iOut.textContent = "";
    act(async () => {
      const payload = parseJson(iPayload.value, "payload", iErr);
      const r = await api("POST", `/api/functions/${enc(iName.value)}/invoke`, { topic: iTopic.value.trim(), payload });
      iOut.textContent = `${(r.outputs || []).length} output(s) in ${r.duration_us} µs\n` +
        (r.outputs || []).map((o) => `${o.topic}\n${typeof o.payload === "string" ? o.payload : json(o.payload)}`).join("\n\n");
    }, iErr);
  });

  const [t, body] = table("functions-table", ["Function", "Version", "Size", "SHA-256", "Nodes", "Per node", ""]);
  const refresh = async () => {
    const fns = await api("GET", "/api/functions");
    if (!current(gen)) return;
    const sel = iName.value;
    replace(iName, fns.map((f) => h("option", { value: f.name }, f.name)));
    if (fns.some((f) => f.name === sel)) iName.value = sel;
    replace(body, fns.length ? fns.map((f) => h("tr", { testid: "function-row", "data-name": f.name },
      h("td", {}, f.name, f.spec && f.spec.description ? h("div", { class: "muted" }, f.spec.description) : null),
      h("td", {}, f.version), h("td", {}, bytes(f.size)),
      h("td", {}, h("code", { title: f.sha256 || "" }, (f.sha256 || "").slice(0, 12))),
      h("td", {}, (f.nodes || []).join(", ") || "–"),
      h("td", {}, (f.stats || []).length ? h("ul", { class: "plain" }, f.stats.map((s) => {
        const m = s.metrics || s;
        return h("li", {}, `${s.node_id}: v${s.version ?? "?"}, ${m.invocations ?? 0} calls, ${m.errors ?? 0} errors, p50 ${us(m.p50_us)}, p99 ${us(m.p99_us)}`);
      })) : "–"),
      h("td", { class: "actions" }, h("button", { type: "button", class: "danger", testid: "function-delete", onclick: () => {
        if (!confirm(`Delete function ${f.name}?`)) return;
        act(async () => { await api("DELETE", `/api/functions/${enc(f.name)}`); await refresh(); });
      } }, "Delete")))) : emptyRow(7, "No functions yet."));
  };
  append(byId("main"), h("h1", {}, "Functions"),
    section("Upload a function", form), section("All functions", t), section("Invoke in the cloud's sandbox", iForm));
  poll(3000, "functions", refresh);
}

// ---------------------------------------------------------------- messages

function messagesPage() {
  const gen = routeGen;
  const node = h("select", { id: "messages-node", testid: "messages-node" });
  const slot = h("div", { id: "messages-slot" });
  let viewGen = 0;
  const show = () => {
    const my = ++viewGen;
    const id = node.value;
    if (!id) { replace(slot, h("p", { class: "muted" }, "No nodes yet.")); return; }
    replace(slot, liveMessages((after, topic) => {
      if (my !== viewGen) return null;
      const q = new URLSearchParams({ limit: after === null ? String(MAX_MESSAGES) : "1000" });
      if (after !== null) q.set("after_id", after);
      if (topic) q.set("topic", topic);
      return `/api/nodes/${enc(id)}/messages?${q}`;
    }, { key: "messages" }));
  };
  node.addEventListener("change", show);
  append(byId("main"), h("h1", {}, "Live messages"),
    section("Node", field("Node", node), slot));
  act(async () => {
    const nodes = await api("GET", "/api/nodes");
    if (!current(gen)) return;
    nodeOptions(node, nodes, nodes[0] && nodes[0].id);
    show();
  });
}

// ---------------------------------------------------------------- start

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  byId("login-form").addEventListener("submit", login);
  byId("logout").addEventListener("click", () => loggedOut());
  route();
});
