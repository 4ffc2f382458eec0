// The rollouts page: start a staged rollout of a component version to the
// nodes a label selector matches (canary first), and follow each rollout
// by stage and node, with Resume (a paused one) and Cancel. Also the
// labels editor of a node's page.
"use strict";

// ---------------------------------------------------------------- labels

/** `{k: v}` as `k=v,k=v`. */
function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(",");
}

/** `k=v,k=v` as `{k: v}`; an Error naming the bad pair. */
function parseLabels(text) {
  const out = {};
  for (const pair of text.split(",").map((p) => p.trim()).filter((p) => p)) {
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`\`${pair}\` is not key=value`);
    out[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
  }
  return out;
}

/** The labels of node `id` on its page: shown, and replaced on Save.
 * `refresh(node)` shows the node's labels unless the user is editing. */
function nodeLabels(id) {
  const input = h("input", { id: "node-labels", testid: "node-labels", class: "grow", placeholder: "site=a,tier=edge" });
  const err = h("p", { class: "error", testid: "node-labels-error", hidden: true });
  const saved = h("span", { class: "muted", testid: "node-labels-saved" });
  let editing = false;
  input.addEventListener("input", () => { editing = true; });
  const form = h("form", { id: "node-labels-form", testid: "node-labels-form", class: "row" },
    field("Labels (key=value, comma separated)", input),
    h("button", { type: "submit", id: "node-labels-save", testid: "node-labels-save" }, "Save labels"), saved);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    saved.textContent = "";
    act(async () => {
      const n = await api("PATCH", `/api/nodes/${enc(id)}`, { labels: parseLabels(input.value) });
      editing = false;
      input.value = labelsText(n.labels);
      saved.textContent = "saved";
    }, err);
  });
  const refresh = (node) => {
    if (!editing && document.activeElement !== input) input.value = labelsText(node.labels);
  };
  return { el: h("div", { testid: "node-labels-section" }, form, err), refresh };
}

// ---------------------------------------------------------------- rollouts

function rolloutBadge(cls, word, testid) {
  return h("span", { class: `badge ${cls}`, testid }, (word || "").replace("_", " "));
}

/** One rollout: its state and reason, buttons, and a table per stage. */
function rolloutCard(r, refresh) {
  const inline = h("p", { class: "error", testid: "rollout-action-error", hidden: true });
  const open = r.state === "running" || r.state === "paused";
  const resume = r.state === "paused" ? h("button", { type: "button", testid: "rollout-resume", onclick: () => act(async () => {
    if (!confirm(`Resume rollout ${r.id} with its next stage despite the failures?`)) return;
    await api("POST", `/api/rollouts/${r.id}/resume`);
    await refresh();
  }, inline) }, "Resume") : null;
  const cancel = open ? h("button", { type: "button", class: "danger", testid: "rollout-cancel", onclick: () => act(async () => {
    if (!confirm(`Cancel rollout ${r.id}? Nodes it changed keep the version they got.`)) return;
    await api("POST", `/api/rollouts/${r.id}/cancel`);
    await refresh();
  }, inline) }, "Cancel") : null;
  const stages = (r.stages || []).map((s) => {
    const [t, body] = table(`rollout-${r.id}-stage-${s.stage}`, ["Node", "Revision", "Result", "Error"]);
    replace(body, s.nodes.map((n) => h("tr", { testid: "rollout-node", "data-node": n.node_id, "data-result": n.result },
      h("td", {}, h("a", { href: `#/nodes/${enc(n.node_id)}` }, n.node_id)),
      h("td", { testid: "rollout-node-revision" }, n.revision ?? "–"),
      h("td", {}, rolloutBadge(`result-${n.result}`, n.result, "rollout-node-result")),
      h("td", { class: "error", testid: "rollout-node-error" }, n.error || ""))));
    return h("div", { testid: "rollout-stage", "data-stage": s.stage, "data-state": s.state },
      h("h3", {}, `Stage ${s.stage} `, rolloutBadge(`stage-${s.state}`, s.state, "rollout-stage-state"),
        h("span", { class: "muted" }, ` ${s.nodes.length} node(s)`)), t);
  });
  return h("div", { class: "card", testid: "rollout", "data-id": r.id, "data-state": r.state },
    h("h3", {}, `Rollout ${r.id}: ${r.component} ${r.version} `, rolloutBadge(`rollout-${r.state}`, r.state, "rollout-state")),
    h("p", { class: "muted" }, `to ${r.selector_text || "every node"} · max failure rate ${r.max_failure_rate} · stage timeout ${r.stage_timeout} · by ${r.author}, ${time(r.created_ms)}`),
    r.reason ? h("p", { class: r.state === "paused" ? "error" : "muted", testid: "rollout-reason" }, r.reason) : null,
    h("div", { class: "row" }, resume, cancel), inline, stages);
}

function rolloutsPage() {
  const gen = routeGen;
  const comp = h("select", { id: "rollout-component", testid: "rollout-component" });
  const version = h("select", { id: "rollout-version", testid: "rollout-version" });
  const selector = h("input", { id: "rollout-selector", testid: "rollout-selector", required: true, placeholder: "site=a,tier=edge" });
  const canary = h("input", { id: "rollout-canary", testid: "rollout-canary", value: "1", placeholder: "1 or 10%" });
  const rate = h("input", { id: "rollout-max-failure-rate", testid: "rollout-max-failure-rate", value: "0", type: "number", min: "0", max: "1", step: "0.05" });
  const timeout = h("input", { id: "rollout-stage-timeout", testid: "rollout-stage-timeout", value: "10m" });
  const err = h("p", { class: "error", testid: "rollout-error", hidden: true });
  const started = h("span", { class: "muted", testid: "rollout-started" });
  let known = [];
  const versionOptions = () => {
    const c = known.find((x) => x.name === comp.value);
    const sel = version.value;
    const vs = c ? c.versions.map((v) => v.version).reverse() : [];
    replace(version, vs.map((v) => h("option", { value: v }, v)));
    if (vs.includes(sel)) version.value = sel;
  };
  comp.addEventListener("change", versionOptions);
  const form = h("form", { id: "rollout-form", testid: "rollout-form", class: "stack" },
    h("div", { class: "row" }, field("Component", comp), field("Version", version), field("Nodes with labels", selector)),
    h("div", { class: "row" }, field("Canary (nodes, or a percentage like 10%)", canary),
      field("Max failure rate (0–1)", rate), field("Stage timeout", timeout),
      h("button", { type: "submit", id: "rollout-start", testid: "rollout-start" }, "Start rollout"), started), err);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    started.textContent = "";
    act(async () => {
      if (!comp.value || !version.value) throw new Error("choose a component and a version");
      const body = { component: comp.value, version: version.value, selector: parseLabels(selector.value),
        max_failure_rate: Number(rate.value || 0), stage_timeout: timeout.value.trim() || "10m" };
      const c = canary.value.trim();
      if (c.endsWith("%")) body.canary_percent = Number(c.slice(0, -1));
      else if (c) body.canary = Number(c);
      const r = await api("POST", "/api/rollouts", body);
      started.textContent = `rollout ${r.id} started`;
      await refresh();
    }, err);
  });
  const list = h("div", { id: "rollouts-list", testid: "rollouts-list" });
  const refresh = async () => {
    const [comps, rollouts] = await Promise.all([api("GET", "/api/components"), api("GET", "/api/rollouts")]);
    if (!current(gen)) return;
    known = comps;
    const sel = comp.value;
    if (comp.options.length !== comps.length) {
      replace(comp, comps.map((c) => h("option", { value: c.name }, c.name)));
      if (comps.some((c) => c.name === sel)) comp.value = sel;
    }
    versionOptions();
    replace(list, rollouts.length ? rollouts.map((r) => rolloutCard(r, refresh))
      : h("p", { class: "muted", testid: "rollouts-empty" }, "No rollouts yet: start one above."));
  };
  append(byId("main"), h("h1", {}, "Rollouts"),
    section("Start a rollout", form,
      h("p", { class: "muted" }, "Stage 1 is the canary (the first nodes by id); stage 2, the rest, starts when the canary's failure rate is at most the maximum, else the rollout pauses. Nodes get labels on their page.")),
    section("Rollouts", list));
  poll(2000, "rollouts", refresh);
}
