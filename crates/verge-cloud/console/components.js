// The components page: add a component version (process or container, with
// a .tar.gz for a process), list components and their versions, assign a
// version to a node or unassign it, and per node its state, restarts, last
// failure and recent log lines as the node reports them.
"use strict";

// ---------------------------------------------------------------- components

/** One line of a reported log tail: a string or `{stream, line}`. */
function logLine(l) {
  if (typeof l === "string") return l;
  if (l && typeof l === "object") return l.stream ? `${l.stream}: ${l.line ?? ""}` : (l.line ?? json(l));
  return String(l);
}

/** One reported state change: `{at_ms, state, reason?}`, newest first in the list. */
function historyLine(t) {
  const at = t && typeof t.at_ms === "number" ? new Date(t.at_ms).toLocaleTimeString() : "?";
  return `${at} ${t && t.state ? t.state : "?"}${t && t.reason ? ` (${t.reason})` : ""}`;
}

/** The cells of one node's report of a component (any key may be missing). */
function componentStatusCells(st) {
  const s = st || {};
  const tail = Array.isArray(s.log_tail) ? s.log_tail.slice(-20) : [];
  const history = Array.isArray(s.history) ? s.history.slice().reverse() : [];
  return [
    h("td", { testid: "component-state" }, s.state ? badge(s.state) : "not reported",
      // Health in words only where the state does not already say it.
      typeof s.healthy === "boolean" && !["healthy", "unhealthy"].includes(s.state)
        ? h("div", { class: "muted" }, s.healthy ? "healthy" : "not healthy") : null,
      history.length ? h("details", { testid: "component-history" },
        h("summary", { class: "muted" }, "recent states"),
        h("pre", { class: "inline-json" }, history.map(historyLine).join("\n"))) : null),
    h("td", { testid: "component-restarts" }, s.restarts ?? "–"),
    h("td", { class: "muted" }, s.uptime_seconds === undefined || s.uptime_seconds === null ? "–" : duration(Math.round(s.uptime_seconds))),
    h("td", { class: "error", testid: "component-last-error" }, s.last_error || ""),
    h("td", {}, tail.length ? h("pre", { class: "inline-json", testid: "component-log" }, tail.map(logLine).join("\n")) : "–"),
  ];
}

function componentsPage() {
  const gen = routeGen;
  // Add a version.
  const name = h("input", { id: "component-name", testid: "component-name", required: true, placeholder: "reader" });
  const version = h("input", { id: "component-version", testid: "component-version", required: true, placeholder: "1.0.0" });
  const kind = h("select", { id: "component-kind", testid: "component-kind" },
    h("option", { value: "process" }, "process"), h("option", { value: "container" }, "container"));
  const command = h("input", { id: "component-command", testid: "component-command", class: "grow", placeholder: "bin/reader (process) or empty" });
  const image = h("input", { id: "component-image", testid: "component-image", class: "grow", placeholder: "localhost/reader:1.0 (container)" });
  const rest = h("textarea", { id: "component-spec", testid: "component-spec", rows: 4, spellcheck: "false" });
  rest.value = '{"args": [], "restart": "always", "depends_on": []}';
  const file = h("input", { id: "component-artifact", testid: "component-artifact", type: "file", accept: ".tar.gz,.tgz,application/gzip" });
  const addErr = h("p", { class: "error", testid: "component-error", hidden: true });
  const added = h("span", { class: "muted", testid: "component-added" });
  const syncKind = () => { image.disabled = kind.value !== "container"; file.disabled = kind.value !== "process"; };
  kind.addEventListener("change", syncKind);
  syncKind();
  const form = h("form", { id: "component-form", testid: "component-form", class: "stack" },
    h("div", { class: "row" }, field("Name", name), field("Version", version), field("Kind", kind)),
    h("div", { class: "row" }, field("Command", command), field("Image", image), field("Files (.tar.gz, process)", file)),
    field("The rest of the spec (JSON object: args, env, config, health, depends_on, limits, mqtt, …)", rest), addErr,
    h("div", { class: "row" }, h("button", { type: "submit", id: "component-add", testid: "component-add" }, "Add version"), added));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    added.textContent = "";
    act(async () => {
      const spec = parseJson(rest.value || "{}", "the rest of the spec", addErr);
      if (!spec || typeof spec !== "object" || Array.isArray(spec)) throw new Error("the rest of the spec must be a JSON object");
      spec.name = name.value.trim();
      spec.version = version.value.trim();
      spec.kind = kind.value;
      if (command.value.trim()) spec.command = command.value.trim();
      if (kind.value === "container" && image.value.trim()) spec.image = image.value.trim();
      const r = await api("POST", "/api/components", spec);
      let note = `added ${r.name} ${r.version}`;
      const f = file.files[0];
      if (kind.value === "process" && f) {
        const up = await apiUpload("PUT", `/api/components/${enc(r.name)}/versions/${enc(r.version)}/artifact`, f, "application/gzip");
        note += ` with files (${bytes(up.artifact.size)}, sha256 ${up.artifact.sha256.slice(0, 12)})`;
      }
      added.textContent = note;
      await refresh();
    }, addErr);
  });

  // Assign a version to a node.
  const aNode = h("select", { id: "assign-node", testid: "assign-node" });
  const aName = h("select", { id: "assign-component", testid: "assign-component" });
  const aVersion = h("select", { id: "assign-version", testid: "assign-version" });
  const aErr = h("p", { class: "error", testid: "assign-error", hidden: true });
  const aOk = h("span", { class: "muted", testid: "assign-done" });
  let known = [];
  const versionOptions = () => {
    const c = known.find((x) => x.name === aName.value);
    const sel = aVersion.value;
    const vs = c ? c.versions.map((v) => v.version).reverse() : [];
    replace(aVersion, vs.map((v) => h("option", { value: v }, v)));
    if (vs.includes(sel)) aVersion.value = sel;
  };
  aName.addEventListener("change", versionOptions);
  const aForm = h("form", { id: "assign-form", testid: "assign-form", class: "stack" },
    h("div", { class: "row" }, field("Node", aNode), field("Component", aName), field("Version", aVersion),
      h("button", { type: "submit", id: "assign-run", testid: "assign-run" }, "Assign")), aErr, aOk);
  aForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    aOk.textContent = "";
    act(async () => {
      if (!aNode.value || !aName.value || !aVersion.value) throw new Error("choose a node, a component and a version");
      const r = await api("PUT", `/api/nodes/${enc(aNode.value)}/components/${enc(aName.value)}`, { version: aVersion.value });
      aOk.textContent = `${r.name} ${r.version} assigned to ${r.node_id}`;
      await refresh();
    }, aErr);
  });

  const [t, body] = table("components-table", ["Component", "Latest", "Kind", "Versions", "Nodes", ""]);
  const [pt, perNode] = table("component-nodes", ["Component", "Node", "Version", "State", "Restarts", "Uptime", "Last failure", "Recent log", ""]);
  const refresh = async () => {
    const [comps, nodes] = await Promise.all([api("GET", "/api/components"), api("GET", "/api/nodes")]);
    if (!current(gen)) return;
    known = comps;
    if (aNode.options.length !== nodes.length) nodeOptions(aNode, nodes, aNode.value);
    const selName = aName.value;
    replace(aName, comps.map((c) => h("option", { value: c.name }, c.name)));
    if (comps.some((c) => c.name === selName)) aName.value = selName;
    versionOptions();
    replace(body, comps.length ? comps.map((c) => h("tr", { testid: "component-row", "data-name": c.name },
      h("td", {}, c.name), h("td", { testid: "component-latest" }, c.latest), h("td", {}, c.kind),
      h("td", {}, h("ul", { class: "plain" }, c.versions.map((v) => h("li", { testid: "component-version-item", "data-version": v.version },
        `${v.version} (${v.kind}`, v.artifact ? `, ${bytes(v.artifact.size)}, ` : "", v.artifact ? h("code", { title: v.artifact.sha256 }, v.artifact.sha256.slice(0, 12)) : "", ")")))),
      h("td", {}, c.nodes.length ? c.nodes.map((n) => `${n.node_id}: ${n.version}`).join(", ") : "–"),
      h("td", { class: "actions" }, h("button", { type: "button", class: "danger", testid: "component-delete", onclick: () => {
        if (!confirm(`Delete component ${c.name} and all its versions?`)) return;
        act(async () => { await api("DELETE", `/api/components/${enc(c.name)}`); await refresh(); });
      } }, "Delete")))) : emptyRow(6, "No components yet: add a version above."));
    const rows = comps.flatMap((c) => c.nodes.map((n) => [c, n]));
    replace(perNode, rows.length ? rows.map(([c, n]) => h("tr", { testid: "component-node-row", "data-name": c.name, "data-node": n.node_id },
      h("td", {}, c.name), h("td", {}, h("a", { href: `#/nodes/${enc(n.node_id)}` }, n.node_id)),
      h("td", { testid: "component-node-version" }, n.version, n.status && n.status.version && n.status.version !== n.version ? h("div", { class: "muted" }, `runs ${n.status.version}`) : null),
      componentStatusCells(n.status),
      h("td", { class: "actions" }, h("button", { type: "button", class: "danger", testid: "component-unassign", onclick: () => {
        if (!confirm(`Stop running ${c.name} on ${n.node_id}?`)) return;
        act(async () => { await api("DELETE", `/api/nodes/${enc(n.node_id)}/components/${enc(c.name)}`); await refresh(); });
      } }, "Unassign")))) : emptyRow(9, "No component is assigned to a node."));
  };
  append(byId("main"), h("h1", {}, "Components"),
    section("Add a component version", form),
    section("Assign to a node", aForm),
    section("All components", t),
    section("On nodes", pt));
  poll(2000, "components", refresh);
}
