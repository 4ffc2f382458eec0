// Shared pieces of the console's pages: sections, tables, form fields,
// one-time secrets, JSON inputs, node pickers and the live message list.
"use strict";

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

/** `base`, a messages endpoint, with the query of one `liveMessages` poll:
 * the newest MAX_MESSAGES first, then up to 1000 after `after`. */
function messagesUrl(base, after, topic) {
  const q = new URLSearchParams({ limit: after === null ? String(MAX_MESSAGES) : "1000" });
  if (after !== null) q.set("after_id", after);
  if (topic) q.set("topic", topic);
  return `${base}?${q}`;
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
