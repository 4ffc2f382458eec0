// The nodes page (list and create) and a node's detail page (status,
// metrics charts, labels (rollouts.js), deployment, revisions (revisions.js), what runs on it
// (rules, functions, components, drivers (drivers.js)), live messages).
"use strict";

// ---------------------------------------------------------------- nodes

/** The join command, and the same with its own data dir and ports for a
 * machine that already runs a node (or `verge up`, which takes 1883, 8083,
 * 8081, 8883, 8084, 5683). */
function joinRows(nodeId, command) {
  return [
    ["Join command", command, "join-command"],
    ["On a machine that already runs verge up or another node", `${command} --data-dir ./${nodeId}-data --port-offset 10`, "join-command-beside"],
  ];
}

function joinNote() {
  return h("p", { class: "muted", testid: "join-note" },
    "The node binds its ports (MQTT 1883, WebSocket 8083, HTTP API 8081) and checks its data dir before it uses the token, " +
    "so a clash costs no token. --port-offset N adds N to every port (10: MQTT 1893, API 8091); " +
    "--data-dir picks where it keeps its credentials (default /var/lib/verge when writable, else ~/.local/share/verge/node).");
}

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
        ...joinRows(r.node.id, r.join_command),
        ["Join token", r.join_token, "join-token"],
      ]), joinNote());
      await refresh();
    });
  });
  const [t, body] = table("nodes-table", ["Name", "Status", "Labels", "Last seen", "Desired / applied", "CPU", "Memory", "Connections"]);
  const refresh = async () => {
    const nodes = await api("GET", "/api/nodes");
    if (!current(gen)) return;
    replace(body, nodes.length ? nodes.map((n) => {
      const r = n.report || {};
      return h("tr", { testid: "node-row", "data-id": n.id, "data-name": n.name },
        h("td", {}, h("a", { href: `#/nodes/${enc(n.id)}`, testid: "node-link" }, n.name || n.id)),
        h("td", {}, badge(n.status)),
        h("td", { testid: "node-row-labels" }, labelsText(n.labels) || "–"),
        h("td", { testid: "node-last-seen" }, ago(n.last_seen_ms)),
        h("td", {}, `${n.desired_version ?? "–"} / ${n.applied_version ?? "–"}`),
        h("td", {}, n.report ? `${num(r.cpu_percent)} %` : "–"),
        h("td", {}, n.report ? bytes(r.memory_bytes) : "–"),
        h("td", {}, n.report ? String(r.connections ?? "–") : "–"));
    }) : emptyRow(8, "No nodes yet: create one above."));
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

/** How the node differs from its revision: items it runs on its own
 * (`local`, from its API or config file) and cloud items it found changed
 * and put back (`drift`), as its last report says. */
function driftView(r) {
  const local = Array.isArray(r.local) ? r.local : [];
  const restored = Array.isArray(r.drift) ? r.drift : [];
  if (!local.length && !restored.length) {
    return h("p", { class: "muted", testid: "node-drift" }, "Runs exactly its revision (no items of its own).");
  }
  // The config file's items are the node's baseline, not drift.
  const differs = restored.length || local.some((i) => i.source === "api" || i.local_only);
  return h("div", { testid: "node-drift" },
    differs ? h("span", { class: "badge state-drift", testid: "node-drift-badge" }, "differs from its revision")
      : h("span", { class: "muted", testid: "node-drift-baseline" }, "runs its revision and its config file's items"),
    local.length ? h("ul", { class: "plain", testid: "node-local-items" }, local.map((i) =>
      h("li", { testid: "node-local-item", "data-kind": i.kind, "data-name": i.name },
        `${i.kind} ${i.name} `, h("span", { class: "muted" }, i.source === "api" ? "(made through the node's API)" : "(the node's config file)"),
        i.local_only ? h("span", { class: "badge state-drift", testid: "node-local-only" }, "kept local-only: the revision's item of this name is not applied") : null))) : null,
    restored.length ? h("ul", { class: "errors", testid: "node-drift-restored" }, restored.map((x) => h("li", {}, x))) : null);
}

function nodeDetailPage(id) {
  const gen = routeGen;
  const title = h("h1", {}, id);
  const summary = h("dl", { id: "node-summary", testid: "node-summary", class: "summary" });
  const charts = h("div", { class: "charts", id: "node-charts" });
  const deploy = h("div", { id: "node-deployment", testid: "node-deployment" });
  const revs = nodeRevisions(id);
  const labels = nodeLabels(id);
  const drivers = nodeDrivers(id);
  const release = nodeRelease(id);
  const [dt, devBody] = table("node-devices", ["Device", "Last telemetry", "When"]);
  const [rt, ruleBody] = table("node-rules", ["Rule", "Enabled", "State", "In", "Rows out", "Errors", "p99", "Last error"]);
  const [ft, fnBody] = table("node-functions", ["Function", "Version", "Calls", "Errors", "Timeouts", "p50", "p99", "Last error"]);
  const [ct, compBody] = table("node-components", ["Component", "Version", "State", "Restarts", "Uptime", "Last failure", "Recent log"]);
  const newToken = h("div");
  const reinstall = h("button", { type: "button", class: "ghost", testid: "node-join-token", onclick: () => act(async () => {
    const r = await api("POST", `/api/nodes/${enc(id)}/join-token`);
    replace(newToken, secretBox("node-created", "New one-time join token:", joinRows(id, r.join_command)), joinNote());
  }) }, "New join token");
  const del = h("button", { type: "button", class: "danger", testid: "node-delete", onclick: () => {
    if (!confirm(`Delete node ${id}?`)) return;
    act(async () => { await api("DELETE", `/api/nodes/${enc(id)}`); location.hash = "#/nodes"; });
  } }, "Delete node");
  append(byId("main"),
    h("p", {}, h("a", { href: "#/nodes" }, "← Nodes")), title,
    section("Status", summary, h("div", { class: "row" }, reinstall, del), newToken),
    section("Labels", labels.el),
    section("Metrics", charts),
    section("Deployment", deploy),
    section("Revisions", revs.el),
    section("Release (self-update)", release.el),
    section("Devices", dt), section("Rules", rt), section("Functions", ft), section("Components", ct),
    section("Drivers", drivers.el),
    section("Live messages", liveMessages((after, topic) =>
      messagesUrl(`/api/nodes/${enc(id)}/messages`, after, topic), { key: "node-messages" })));

  poll(2000, "node", async () => {
    const [n, metrics, deps, devices, rules, fns, comps, drvs] = await Promise.all([
      api("GET", `/api/nodes/${enc(id)}`),
      api("GET", `/api/nodes/${enc(id)}/metrics?since_ms=${Date.now() - 15 * 60 * 1000}`),
      api("GET", "/api/deployments"),
      api("GET", `/api/devices?node_id=${enc(id)}`),
      api("GET", `/api/rules?node_id=${enc(id)}`),
      api("GET", "/api/functions"),
      api("GET", `/api/nodes/${enc(id)}/components`),
      api("GET", `/api/nodes/${enc(id)}/drivers`),
    ]);
    if (!current(gen)) return;
    labels.refresh(n);
    drivers.refresh(drvs, n.report || null);
    await revs.refresh(n);
    await release.refresh(n);
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
      : "no deployment yet",
      driftView(r));
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
    replace(compBody, comps.length ? comps.map((c) => h("tr", { testid: "node-component-row", "data-name": c.name },
      h("td", {}, c.name), h("td", { testid: "node-component-version" }, c.version ?? h("span", { class: "muted" }, "node's own"),
        // The node may run another version than the one assigned (a
        // failed revision it returned from, one not applied yet).
        c.status && c.status.version && c.version && c.status.version !== c.version
          ? h("div", { class: "muted", testid: "node-component-running" }, `runs ${c.status.version}`) : null),
      componentStatusCells(c.status))) : emptyRow(7, "No components on this node."));
  });
}
