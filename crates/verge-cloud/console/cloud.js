// The cloud page: the `verge cloud` replicas on this database, which one
// is alive and which one leads (runs pruning and the rollout driver).
"use strict";

// ---------------------------------------------------------------- cloud

function cloudPage() {
  const gen = routeGen;
  const [t, body] = table("replicas-table", ["Replica", "URL", "Version", "Started", "Last seen", "State", "Role"]);
  const refresh = async () => {
    const replicas = await api("GET", "/api/cloud/replicas");
    if (!current(gen)) return;
    replace(body, replicas.length === 0 ? emptyRow(7, "No replica has reported yet.") :
      replicas.map((r) => h("tr", { testid: "replica-row", "data-id": r.id },
        h("td", {}, r.id, r.this ? h("span", { class: "muted" }, " (this one)") : ""),
        h("td", {}, r.http_url), h("td", {}, r.version),
        h("td", {}, ago(r.started_ms)), h("td", {}, ago(r.seen_ms)),
        h("td", { testid: "replica-alive" }, badge(r.alive ? "online" : "offline")),
        h("td", { testid: "replica-role" }, r.leader ? "leader" : "replica"))));
  };
  append(byId("main"), h("h1", {}, "Cloud"),
    section("Replicas", t,
      h("p", { class: "hint" }, "Every verge cloud process on this database. The leader runs retention pruning and the rollout driver; " +
        "a replica that is not alive stopped sending heartbeats without stopping cleanly.")));
  poll(5000, "replicas", refresh);
}
