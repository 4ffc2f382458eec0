// The deployments page: every node's deployment at a glance (its state
// against its desired revision, why a revision failed, whether it runs
// items of its own or put cloud items back), the rollouts in progress,
// and links to each node's revisions (rollback, cancel, diff) on its page.
"use strict";

/** What differs on a node, in one cell: its own items (those kept
 * local-only marked) and the cloud items it put back. */
function differsCell(d) {
  const local = Array.isArray(d.local) ? d.local : [];
  const drift = Array.isArray(d.drift) ? d.drift : [];
  if (!d.differs) return h("span", { class: "muted" }, "runs its revision");
  return h("div", {},
    h("span", { class: "badge state-drift", testid: "deployment-differs" }, "differs"),
    local.length ? h("ul", { class: "plain" }, local.map((i) =>
      h("li", { testid: "deployment-local-item", "data-kind": i.kind, "data-name": i.name },
        `${i.kind} ${i.name}`, i.local_only ? h("span", { class: "muted" }, " (kept local-only)") : null))) : null,
    drift.length ? h("ul", { class: "errors" }, drift.map((x) => h("li", {}, x))) : null);
}

function deploymentsPage() {
  const gen = routeGen;
  const summary = h("p", { class: "muted", testid: "deployments-summary" });
  const [t, body] = table("deployments-table", ["Node", "State", "Desired / applied", "Why", "Differs from its revision"]);
  const active = h("div", { testid: "deployments-rollouts" });
  const refresh = async () => {
    const [deps, rollouts] = await Promise.all([api("GET", "/api/deployments"), api("GET", "/api/rollouts")]);
    if (!current(gen)) return;
    const count = (s) => deps.filter((d) => d.state === s).length;
    summary.textContent = `${deps.length} node(s): ${count("in_sync")} in sync, ${count("applying")} applying, `
      + `${count("pending")} pending, ${count("failed")} failed, ${count("offline")} offline; `
      + `${deps.filter((d) => d.differs).length} differ from their revision.`;
    replace(body, deps.length ? deps.map((d) => h("tr", { testid: "deployment-row", "data-id": d.node_id, "data-state": d.state },
      h("td", {}, h("a", { href: `#/nodes/${enc(d.node_id)}`, testid: "deployment-node" }, d.node_id)),
      h("td", {}, h("span", { class: `badge state-${d.state}`, testid: "deployment-row-state" }, d.state.replaceAll("_", " "))),
      h("td", {}, `${d.desired_version} / ${d.applied_version}`),
      h("td", { testid: "deployment-error" }, d.error || ((d.errors || []).length ? d.errors.join("; ") : "–")),
      h("td", {}, differsCell(d)))) : emptyRow(5, "No nodes yet."));
    const running = rollouts.filter((r) => r.state === "running" || r.state === "paused");
    replace(active, running.length ? h("ul", { class: "plain" }, running.map((r) =>
      h("li", { testid: "deployment-rollout" },
        h("a", { href: "#/rollouts" }, `rollout ${r.id}`), ` ${r.component} ${r.version} to ${r.selector_text}: `,
        h("span", { class: `badge state-${r.state}` }, r.state), ` stage ${r.stage} of ${r.stages.length}`,
        r.reason ? h("span", { class: "muted" }, ` — ${r.reason}`) : null)))
      : h("p", { class: "muted" }, "No rollout running or paused."));
  };
  append(byId("main"), h("h1", {}, "Deployments"),
    section("Nodes", summary, t,
      h("p", { class: "muted" }, "A node's revisions, their diff, rollback and cancel are on its page.")),
    section("Rollouts in progress", active));
  poll(2000, "deployments", refresh);
}
