// The tokens page: API tokens with their scope (admin, read-only or broker),
// made (shown once) and revoked with an admin token.
"use strict";

// ---------------------------------------------------------------- tokens

function tokensPage() {
  const gen = routeGen;
  const name = h("input", { id: "token-name", testid: "token-name", required: true, placeholder: "grafana" });
  const scope = h("select", { id: "token-scope", testid: "token-scope" },
    h("option", { value: "read" }, "read: GET only"), h("option", { value: "admin" }, "admin: everything"),
    h("option", { value: "broker" }, "broker: the MQTT broker's auth hooks only"));
  const created = h("div");
  const form = h("form", { id: "token-form", class: "row", testid: "token-form" },
    field("Name", name), field("Scope", scope),
    h("button", { type: "submit", id: "token-create", testid: "token-create" }, "Create token"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const r = await api("POST", "/api/tokens", { name: name.value.trim(), scope: scope.value });
      name.value = "";
      replace(created, secretBox("token-created", `Token ${r.name} (${r.scope}) created; it is shown only now:`, [
        ["Token", r.token, "token-secret"]]));
      await refresh();
    });
  });
  const [t, body] = table("tokens-table", ["Token", "Scope", "Created", ""]);
  const refresh = async () => {
    const tokens = await api("GET", "/api/tokens");
    if (!current(gen)) return;
    replace(body, tokens.map((k) => h("tr", { testid: "token-row", "data-name": k.name },
      h("td", {}, k.name), h("td", { testid: "token-scope-cell" }, k.scope), h("td", {}, ago(k.created_ms)),
      h("td", { class: "actions" }, k.id === "admin" ? h("span", { class: "muted" }, "reset with verge cloud --reset-admin-token") :
        h("button", { type: "button", class: "danger", testid: "token-revoke", onclick: () => {
          if (!confirm(`Revoke token ${k.name}?`)) return;
          act(async () => { await api("DELETE", `/api/tokens/${enc(k.id)}`); await refresh(); });
        } }, "Revoke")))));
  };
  append(byId("main"), h("h1", {}, "API tokens"), section("Create token", form, created), section("All tokens", t));
  poll(5000, "tokens", refresh);
}
