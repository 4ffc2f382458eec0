// The Verge cloud console: a hash-routed single page over the open API
// (/api, docs/cloud.md). No framework, no build step, no external requests.
// The pages are plain scripts that index.html loads in order: core.js (this:
// DOM helpers, formatting, API client, banner, routing), widgets.js, one file
// per page, then main.js (the route table and start).
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
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

/** One open-API call; resolves with the parsed body, rejects with ApiError. */
async function api(method, path, body, tok) {
  const headers = { Authorization: `Bearer ${tok || token()}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return send(path, init, tok);
}

/** A raw upload (`blob`, e.g. a File, sent as `type`), answered as api(). */
async function apiUpload(method, path, blob, type) {
  const headers = { Authorization: `Bearer ${token()}`, "Content-Type": type };
  return send(path, { method, headers, body: blob });
}

async function send(path, init, tok) {
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
  sessionStorage.removeItem(TOKEN_KEY);
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
  sessionStorage.setItem(TOKEN_KEY, tok);
  byId("login-token").value = "";
  if (!location.hash || location.hash === "#/") location.hash = "#/nodes";
  else route();
}
