// A node's revisions on its page: the history with result badges, the
// diff of a chosen revision against the one before it, the node's attempt
// (failed items with their errors), "Roll back to this revision" per row
// and "Cancel" while the desired revision is pending or applying.
"use strict";

/** The Revisions section of node `id`; `refresh(node)` redraws it from
 * the node resource (its `deployment`) and the node's revision list. */
function nodeRevisions(id) {
  const gen = routeGen;
  const state = h("div", { class: "row", testid: "revisions-deployment" });
  const [t, body] = table("node-revisions", ["Revision", "When", "Author", "Summary", "Result", ""]);
  const detail = h("div", { id: "revision-detail", testid: "revision-detail" });
  const inline = h("p", { class: "error", testid: "revisions-error", hidden: true });
  let chosen = null;

  const show = async (n) => {
    chosen = n;
    const r = await api("GET", `/api/nodes/${enc(id)}/revisions/${n}`);
    const diff = n > 1
      ? await api("GET", `/api/nodes/${enc(id)}/revisions/${n - 1}/diff/${n}`).catch(() => null)
      : null;
    if (!current(gen) || chosen !== n) return;
    replace(detail,
      h("h3", { testid: "revision-detail-title" }, `Revision ${n}: ${r.summary}`),
      h("p", { class: "muted" }, `${r.author}, ${time(r.created_ms)} · `, resultBadge(r.result)),
      attemptView(r.attempt),
      diff ? diffView(diff) : h("p", { class: "muted", testid: "revision-diff" },
        n > 1 ? `Revision ${n - 1} is no longer kept: no diff.` : "The first revision: no diff."));
  };

  const rollback = (n) => act(async () => {
    if (!confirm(`Roll node ${id} back to the content of revision ${n}? A new revision is made.`)) return;
    await api("POST", `/api/nodes/${enc(id)}/rollback`, { revision: n });
    await refresh();
  }, inline);
  const cancelBtn = h("button", { type: "button", class: "danger", testid: "revision-cancel", hidden: true,
    onclick: () => act(async () => {
      if (!confirm(`Cancel the deployment to node ${id}? It stays on the revision it runs.`)) return;
      await api("POST", `/api/nodes/${enc(id)}/cancel`);
      await refresh();
    }, inline) }, "Cancel");

  const refresh = async (node) => {
    const [n, list] = await Promise.all([
      node ? Promise.resolve(node) : api("GET", `/api/nodes/${enc(id)}`),
      api("GET", `/api/nodes/${enc(id)}/revisions?limit=50`),
    ]);
    if (!current(gen)) return;
    const d = n.deployment || {};
    replace(state,
      h("span", { class: `badge state-${d.state}`, testid: "revisions-state" }, d.state || "unknown"),
      ` desired ${d.revision ?? "–"}, running ${d.applied_revision ?? "–"}`,
      d.error ? h("span", { class: "error", testid: "revisions-state-error" }, ` ${d.error}`) : null,
      cancelBtn);
    cancelBtn.hidden = !["pending", "applying", "failed", "offline"].includes(d.state) || !(d.applied_revision > 0);
    replace(body, list.length ? list.map((r) => h("tr", { testid: "revision-row", "data-revision": r.revision, class: r.revision === chosen ? "chosen" : "" },
      h("td", {}, h("button", { type: "button", class: "ghost", testid: "revision-show", onclick: () => act(() => show(r.revision), inline) }, String(r.revision))),
      h("td", {}, time(r.created_ms)),
      h("td", { testid: "revision-author" }, r.author),
      h("td", { testid: "revision-summary" }, r.summary),
      h("td", {}, resultBadge(r.result)),
      h("td", {}, r.revision === d.revision ? h("span", { class: "muted" }, "desired")
        : h("button", { type: "button", class: "ghost", testid: "revision-rollback", onclick: () => rollback(r.revision) }, "Roll back to this revision"))))
      : emptyRow(6, "No revisions yet."));
    // The chosen revision (at first the newest) is redrawn: its result and
    // the node's attempt change while the node applies it.
    if (chosen === null && list.length) chosen = list[0].revision;
    if (chosen !== null) await show(chosen);
  };

  const el = h("div", { testid: "node-revisions-section" }, state, inline, t, detail);
  return { el, refresh };
}

function resultBadge(result) {
  return h("span", { class: `badge result-${result}`, testid: "revision-result" }, (result || "").replace("_", " "));
}

/** The node's attempt of a revision: when, and each item's outcome (the
 * failed ones with their errors). */
function attemptView(a) {
  if (!a) return h("p", { class: "muted", testid: "revision-attempt" }, "The node has not reported trying this revision.");
  const items = a.items || [];
  return h("div", { testid: "revision-attempt" },
    h("p", {}, `Tried ${time(a.started_ms)}`, a.finished_ms ? `, finished ${time(a.finished_ms)}` : ", still applying",
      a.rolled_back_to ? `; the node returned to revision ${a.rolled_back_to}` : ""),
    a.error ? h("p", { class: "error", testid: "revision-attempt-error" }, a.error) : null,
    items.length ? h("ul", { class: "plain", testid: "revision-items" }, items.map((i) =>
      h("li", { testid: "revision-item", "data-result": i.result, class: i.result === "failed" ? "error" : "" },
        `${i.kind} ${i.name}: ${(i.result || "").replace("_", " ")}`, i.error ? ` — ${i.error}` : ""))) : null);
}

/** A diff per kind: added, removed, changed (with both versions). */
function diffView(d) {
  const kinds = ["devices", "rules", "functions", "drivers", "components", "config", "release"];
  const rows = kinds.flatMap((k) => {
    const x = d[k] || {};
    return [
      ...(x.added || []).map((name) => [k, "added", name, null]),
      ...(x.removed || []).map((name) => [k, "removed", name, null]),
      ...(x.changed || []).map((c) => [k, "changed", c.name, c]),
    ];
  });
  const [t, body] = table("revision-diff", ["Kind", "Change", "Item", "From", "To"]);
  replace(body, rows.length ? rows.map(([k, what, name, c]) => h("tr", { testid: "diff-row", "data-kind": k, "data-change": what },
    h("td", {}, k), h("td", {}, what), h("td", {}, name),
    h("td", {}, c && "from" in c ? h("pre", { class: "inline-json" }, json(c.from)) : c ? c.change : ""),
    h("td", {}, c && "to" in c ? h("pre", { class: "inline-json" }, json(c.to)) : "")))
    : emptyRow(5, "No change from the revision before."));
  return h("div", {}, h("h3", {}, `Changes from revision ${d.from} to ${d.to}`), t);
}
