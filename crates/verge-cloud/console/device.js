// A device's page (#/devices/{id}): connected or not and since when, its
// node's broker addresses, last telemetry, charts of its numeric telemetry
// (from the cloud's stored messages, and longer ranges asked of its node's
// local store through /history), its shadow (view and edit desired), commands (send, history with status
// and reply) and its alarms. Also the box shown when a device is created
// (deviceOnboarding): what a device program needs to connect.
"use strict";

// ---------------------------------------------------------------- onboarding

/** Broker addresses from a node's `endpoints`, by kind (mqtt, mqtts, ws, wss). */
function brokerAddresses(endpoints) {
  const kinds = [["mqtt://", "MQTT over TCP"], ["mqtts://", "MQTT over TLS"], ["ws://", "MQTT over WebSocket"],
    ["wss://", "MQTT over WSS"], ["coap://", "CoAP"], ["coaps://", "CoAP over DTLS"]];
  return (endpoints || []).map((url) => {
    const k = kinds.find(([p]) => String(url).startsWith(p));
    return [k ? k[1] : "address", String(url)];
  });
}

/** The first plain MQTT address (for the snippets), else a placeholder. */
function mqttAddress(endpoints) {
  return (endpoints || []).find((u) => String(u).startsWith("mqtt://")) || "mqtt://NODE-HOST:1883";
}

function addressList(endpoints, testid) {
  const list = brokerAddresses(endpoints);
  if (!list.length) {
    return h("p", { class: "muted", testid }, "Its node has not reported its broker addresses yet (it reports them once it runs and is online); " +
      "by default a node serves MQTT on 1883 (TCP) and 8083 (WebSocket, path /mqtt) of its host.");
  }
  const hosts = list.map(([, v]) => v.replace(/^[a-z]+:\/\//, "").replace(/:\d+(\/.*)?$/, ""));
  const note = hosts.some((x) => x === "127.0.0.1" || x === "localhost" || x === "[::1]")
    ? "Loopback addresses reach the node from its own machine only; to reach it from others, bind its listeners to a network interface (--set broker.listeners.tcp.bind=0.0.0.0:1883) and name the host devices reach (--set node.advertise_host=HOST)."
    : hosts.some((x) => x === "0.0.0.0" || x === "[::]") ? "0.0.0.0 / [::]: use the node machine's host name or address (or set node.advertise_host on the node so it reports that name)." : null;
  return h("div", { testid },
    h("dl", { class: "summary" }, list.map(([k, v]) => [h("dt", {}, k), h("dd", {}, h("code", {}, v))])),
    note ? h("p", { class: "muted", testid: "address-note" }, note) : null);
}

/** Everything a device program needs: addresses, client id, credentials,
 * topics and a snippet for each SDK. `secret` is shown once. */
function deviceOnboarding(device, secret, endpoints) {
  const d = device.id;
  const url = mqttAddress(endpoints);
  const py = [
    "from verge_device import Device",
    "",
    `d = Device(url="${url}", device="${d}", secret="${secret}")`,
    "d.connect()",
    'd.send_telemetry({"temperature": 21.5})',
  ].join("\n");
  const rs = [
    "use serde_json::json;",
    "",
    "let d = verge_device::Device::connect(verge_device::DeviceConfig::new(",
    `    "${url}", "${d}", "${secret}",`,
    ")).await?;",
    'd.send_telemetry(&json!({"temperature": 21.5})).await?;',
  ].join("\n");
  const snippet = (title, code, testid) => h("div", { class: "snippet" },
    h("div", { class: "row" }, h("strong", {}, title),
      h("button", { type: "button", class: "ghost", testid: `copy-${testid}`, onclick: (ev) => copy(code, ev.target) }, "Copy")),
    h("pre", { class: "code", testid }, code));
  return h("div", { testid: "device-onboarding", class: "onboarding" },
    h("h3", {}, `Connect a program as ${d}`),
    h("p", {}, `Broker addresses of its node ${device.node_id}:`),
    addressList(endpoints, "device-addresses"),
    h("ul", { class: "plain" },
      h("li", { testid: "device-client-id-rule" }, "MQTT username and client id: ", h("code", {}, d),
        ` (the client id is the device name; "${d}:<suffix>" is allowed too), password: the secret above.`),
      h("li", {}, "TLS (mqtts://, wss://): verify the node's certificate with its CA file (the SDKs take a CA path)."),
      h("li", { testid: "device-topics" }, "Topics: telemetry ", h("code", {}, `devices/${d}/telemetry`),
        ", events ", h("code", {}, `devices/${d}/events/{type}`),
        ", commands arrive on ", h("code", {}, `devices/${d}/commands/{name}/{id}`),
        ", replies go to ", h("code", {}, `devices/${d}/replies/{id}`),
        ", shadow ", h("code", {}, `$shadow/${d}/get`), " and ", h("code", {}, `$shadow/${d}/update`),
        " (see docs/devices.md in the Verge repository).")),
    snippet("Python (verge_device, pip install ./sdk/python)", py, "snippet-python"),
    snippet("Rust (verge-device crate)", rs, "snippet-rust"));
}

// ---------------------------------------------------------------- charts

/** Numeric top-level fields of `payload`, as [[name, value]]. */
function numericFields(payload) {
  if (!payload || typeof payload !== "object" || Array.isArray(payload)) return [];
  return Object.entries(payload).filter(([, v]) => typeof v === "number" && Number.isFinite(v));
}

/** An inline SVG chart of one numeric field over time: `points` [[ms, v]],
 * a time axis (first and last time) and min/max labels. */
function fieldChart(name, points, testid = "telemetry-chart") {
  const W = 320, H = 120, L = 48, R = 8, T = 8, B = 18;
  const NS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": name });
  const t0 = Math.min(...points.map((p) => p[0])), t1 = Math.max(...points.map((p) => p[0]));
  const lo = Math.min(...points.map((p) => p[1])), hi = Math.max(...points.map((p) => p[1]));
  const span = hi - lo || Math.abs(hi) || 1;
  const x = (t) => L + (t1 === t0 ? (W - L - R) / 2 : ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (hi === lo ? 0.5 : 1 - (v - lo) / span) * (H - T - B);
  const label = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) < 10 ? 2 : 1));
  for (const [v, cls] of [[hi, "max"], [lo, "min"]]) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(s("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end", class: `axis ${cls}`, "data-testid": `chart-${cls}` }, label(v)));
  }
  svg.append(s("text", { x: L, y: H - 4, class: "axis" }, time(t0)));
  svg.append(s("text", { x: W - R, y: H - 4, "text-anchor": "end", class: "axis" }, time(t1)));
  if (points.length === 1) {
    svg.append(s("circle", { cx: x(points[0][0]), cy: y(points[0][1]), r: 2.5, class: "dot s1" }));
  } else {
    svg.append(s("polyline", { points: points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "), class: "line s1" }));
  }
  const fig = h("figure", { testid, "data-field": name, class: "chart-card" },
    h("figcaption", {}, `${name} (${points.length} point${points.length === 1 ? "" : "s"})`));
  fig.append(svg);
  return fig;
}

/** Charts of every numeric field of the telemetry `messages` (any order). */
function telemetryCharts(messages) {
  const series = new Map();
  const sorted = messages.filter((m) => /\/telemetry$/.test(m.topic)).sort((a, b) => a.received_ms - b.received_ms);
  for (const m of sorted) {
    for (const [k, v] of numericFields(m.payload)) {
      if (!series.has(k)) series.set(k, []);
      series.get(k).push([m.received_ms, v]);
    }
  }
  if (!series.size) return h("p", { class: "muted", testid: "telemetry-charts-empty" }, "No numeric telemetry stored yet.");
  return h("div", { class: "charts" }, [...series].map(([k, pts]) => fieldChart(k, pts)));
}

/** Charts of a /history answer: one per series of the node's store. */
function storeCharts(answer) {
  const series = (answer.series || []).filter((s) => s.points && s.points.length);
  if (!series.length) return h("p", { class: "muted", testid: "history-empty" }, "The node's store has no numeric readings of this device in this range.");
  return h("div", {},
    h("div", { class: "charts" }, series.map((s) => fieldChart(s.metric, s.points, "history-chart"))),
    answer.truncated ? h("p", { class: "muted", testid: "history-truncated" },
      "Some series or points were left out (at most 16 series of 2,000 points, 512 KiB).") : null);
}

/** The ranges offered for the node's store, with the bucket each is averaged over. */
const HISTORY_RANGES = [["1 h", 3_600_000, "15s"], ["24 h", 86_400_000, "5m"], ["7 d", 7 * 86_400_000, "1h"]];

// ---------------------------------------------------------------- the page

function devicePage(id) {
  const gen = routeGen;
  const base = `/api/devices/${enc(id)}`;
  const state = h("div", { testid: "device-state" });
  const telemetry = h("div", { testid: "device-last-telemetry" });
  const charts = h("div", { testid: "device-charts" });

  // The node's store: asked on demand (each load is a round trip to the node).
  const history = h("div", { testid: "history-charts" },
    h("p", { class: "muted" }, "Pick a range to ask the device's node for its stored readings."));
  const historyInline = h("p", { class: "error", testid: "history-error", hidden: true });
  const historyStatus = h("span", { class: "muted", testid: "history-status" });
  const loadHistory = (label, ms, bucket) => act(async () => {
    historyStatus.textContent = `asking the node for the last ${label}…`;
    const to = Date.now();
    try {
      const r = await api("GET", `${base}/history?from_ms=${to - ms}&to_ms=${to}&bucket=${enc(bucket)}`);
      if (!current(gen)) return;
      historyStatus.textContent = `last ${label}, averaged over ${bucket}, from node ${r.node_id}`;
      replace(history, storeCharts(r));
    } catch (e) {
      historyStatus.textContent = "";
      replace(history);
      throw e;
    }
  }, historyInline);
  const historyButtons = h("div", { class: "row", testid: "history-ranges" },
    HISTORY_RANGES.map(([label, ms, bucket]) => h("button", { type: "button", class: "ghost", testid: "history-range", "data-range": label,
      onclick: () => loadHistory(label, ms, bucket) }, label)), historyStatus);

  // Shadow: the view follows the cloud; the editor keeps what the user typed
  // and the version it was loaded at.
  const shadowView = h("div", { testid: "shadow-view" });
  const desired = h("textarea", { testid: "shadow-desired", rows: 6 });
  const shadowInline = h("p", { class: "error", testid: "shadow-error", hidden: true });
  const shadowResult = h("span", { class: "muted", testid: "shadow-result" });
  let editVersion = null;
  const loadEditor = async () => {
    const sh = await api("GET", `${base}/shadow`);
    desired.value = json(sh.desired || {});
    editVersion = sh.version;
    shadowInline.hidden = true;
    shadowResult.textContent = `editing version ${sh.version}`;
    showShadow(sh);
  };
  const reload = h("button", { type: "button", class: "ghost", testid: "shadow-reload", onclick: () => act(loadEditor, shadowInline) }, "Reload");
  const shadowForm = h("form", { class: "stack", testid: "shadow-form" },
    field("Desired (JSON object; a key set to null is removed)", desired), shadowInline,
    h("div", { class: "row" }, h("button", { type: "submit", testid: "shadow-save" }, "Save desired"), reload, shadowResult));
  shadowForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const body = { desired: parseJson(desired.value, "desired", shadowInline) };
      if (editVersion !== null) body.version = editVersion;
      try {
        const sh = await api("PATCH", `${base}/shadow`, body);
        editVersion = sh.version;
        shadowResult.textContent = `saved: version ${sh.version}`;
        showShadow(sh);
      } catch (e) {
        if (e.status === 409) throw new ApiError(409, e.code, "the shadow changed meanwhile, reload it and apply your edit again");
        throw e;
      }
    }, shadowInline);
  });
  const showShadow = (sh) => replace(shadowView,
    h("dl", { class: "summary" },
      h("dt", {}, "Version"), h("dd", { testid: "shadow-version" }, String(sh.version)),
      h("dt", {}, "Updated"), h("dd", {}, sh.timestamp ? new Date(sh.timestamp).toLocaleString() : "never"),
      h("dt", {}, "Node has it"), h("dd", { testid: "shadow-synced" }, sh.synced ? "yes" : "not yet (sent when the node is online)")),
    h("div", { class: "shadow-grid" },
      [["Desired", sh.desired, "shadow-view-desired"], ["Reported", sh.reported, "shadow-view-reported"], ["Delta", sh.delta, "shadow-view-delta"]]
        .map(([t, v, tid]) => h("div", {}, h("h3", {}, t), h("pre", { class: "inline-json", testid: tid }, json(v || {}))))));

  // Commands.
  const cname = h("input", { testid: "command-name", required: true, placeholder: "reboot", pattern: "[^/#+]+" });
  const payload = h("textarea", { testid: "command-payload", rows: 3 });
  payload.value = "{}";
  const ttl = h("input", { testid: "command-ttl", value: "1h", size: 6, title: "e.g. 30s, 10m, 1h, 7d (at most 7d)" });
  const cmdInline = h("p", { class: "error", testid: "command-error", hidden: true });
  const cmdResult = h("span", { class: "muted", testid: "command-result" });
  const cform = h("form", { class: "stack", testid: "command-form" },
    h("div", { class: "row" }, field("Command", cname), field("TTL", ttl)), field("Payload (JSON)", payload), cmdInline,
    h("div", { class: "row" }, h("button", { type: "submit", testid: "command-send" }, "Send command"), cmdResult));
  const [ct, cbody] = table("device-commands", ["Sent", "Command", "Payload", "Status", "Reply", "Expires"]);
  const refreshCommands = async () => {
    const list = await api("GET", `${base}/commands?limit=50`);
    if (!current(gen)) return;
    replace(cbody, list.length ? list.map((c) => h("tr", { testid: "command-row", "data-id": c.id, "data-status": c.status },
      h("td", {}, time(c.created_ms)),
      h("td", {}, c.name, h("div", { class: "muted" }, c.id)),
      h("td", {}, h("pre", { class: "inline-json" }, json(c.payload))),
      h("td", {}, h("span", { class: `badge command-${c.status}`, testid: "command-status" }, c.status),
        c.attempts ? h("div", { class: "muted" }, `${c.attempts} attempt(s)`) : null),
      h("td", { testid: "command-reply" }, c.error ? h("span", { class: "error" }, c.error) : null,
        c.reply === null || c.reply === undefined ? (c.error ? null : "–") : h("pre", { class: "inline-json" }, json(c.reply))),
      h("td", {}, time(c.expires_ms)))) : emptyRow(6, "No commands yet."));
  };
  cform.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const body = parseJson(payload.value, "payload", cmdInline);
      const q = ttl.value.trim() ? `?ttl=${enc(ttl.value.trim())}` : "";
      const r = await api("POST", `${base}/commands/${enc(cname.value.trim())}${q}`, body);
      cmdResult.textContent = r.command ? `${r.command.status}: ${r.command.id}` : "sent";
      await refreshCommands();
    }, cmdInline);
  });

  // Alarms of this device.
  const [at, abody] = table("device-alarms", ["Raised", "Type", "Severity", "Message", "Status", ""]);
  const refreshAlarms = async () => {
    const list = await api("GET", `${base}/alarms`);
    if (!current(gen)) return;
    replace(abody, list.length ? list.map((a) => alarmRow(a, refreshAlarms, false)) : emptyRow(6, "No alarms."));
  };

  const refreshDevice = async () => {
    const [d, msgs] = await Promise.all([api("GET", base), api("GET", `${base}/messages?limit=500`)]);
    if (!current(gen)) return;
    const s = d.session;
    replace(state, h("dl", { class: "summary" },
      h("dt", {}, "Node"), h("dd", {}, h("a", { href: `#/nodes/${enc(d.node_id)}` }, d.node_id)),
      h("dt", {}, "Connection"), h("dd", { testid: "device-connection" },
        s ? [badge(s.connected ? "connected" : "disconnected"),
          ` since ${s.since_ms ? new Date(s.since_ms).toLocaleString() : "–"} (${ago(s.since_ms)})`,
          s.client_id ? h("span", { class: "muted" }, ` client id ${s.client_id}, ${s.transport || ""}`) : null]
          : [badge("unknown"), " its node has not reported this device (never connected, or the node is offline)"]),
      h("dt", {}, "Description"), h("dd", {}, d.description || "–")),
    h("h3", {}, "Its node's broker addresses"), addressList(d.endpoints, "device-endpoints"));
    const t = d.last_telemetry;
    replace(telemetry, t && typeof t === "object" && !Array.isArray(t)
      ? h("table", { testid: "telemetry-table" }, h("thead", {}, h("tr", {}, h("th", {}, "Field"), h("th", {}, "Value"))),
        h("tbody", {}, Object.entries(t).map(([k, v]) => h("tr", { testid: "telemetry-field", "data-field": k },
          h("td", {}, k), h("td", {}, typeof v === "object" ? json(v) : String(v))))),
        h("caption", { class: "muted" }, `received ${ago(d.last_telemetry_ms)}`))
      : h("p", { class: "muted" }, t === null || t === undefined ? "No telemetry yet." : json(t)));
    replace(charts, telemetryCharts(msgs));
  };

  append(byId("main"),
    h("h1", {}, h("a", { href: "#/devices" }, "Devices"), " / ", h("span", { testid: "device-title" }, id)),
    section("Status", state),
    section("Last telemetry", telemetry),
    section("Telemetry over time", h("p", { class: "muted" }, "The cloud's stored messages of this device (up to the last 500)."), charts),
    section("From the node's store", h("p", { class: "muted" },
      "Longer ranges from the local store of the device's node (the readings a rule's store action keeps), asked of the node while it is online."),
    historyButtons, historyInline, history),
    section("Shadow", shadowView, shadowForm),
    section("Commands", cform, ct),
    section("Alarms", at));
  poll(2000, "device", refreshDevice);
  poll(2000, "device-commands", refreshCommands);
  poll(3000, "device-alarms", refreshAlarms);
  poll(3000, "device-shadow", async () => {
    if (editVersion === null) return loadEditor();
    const sh = await api("GET", `${base}/shadow`);
    if (current(gen)) showShadow(sh);
  });
}
