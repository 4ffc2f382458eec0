// The rules page: create, edit, enable, delete and test a rule's SQL.
"use strict";

// ---------------------------------------------------------------- rules

function rulesPage() {
  const gen = routeGen;
  const id = h("input", { id: "rule-id", testid: "rule-id", required: true, placeholder: "to-function" });
  const node = h("select", { id: "rule-node", testid: "rule-node", required: true });
  const sql = h("textarea", { id: "rule-sql", testid: "rule-sql", rows: 5, spellcheck: "false", placeholder: 'SELECT topic(2) AS device, temperature FROM "devices/+/telemetry"' });
  const sqlError = h("p", { id: "rule-sql-error", testid: "rule-error", class: "error", hidden: true });
  const actions = h("textarea", { id: "rule-actions", testid: "rule-actions", rows: 4, spellcheck: "false" });
  actions.value = '[{"type": "function", "name": "demo-tag"}]';
  const actionsError = h("p", { testid: "rule-actions-error", class: "error", hidden: true });
  const enabled = h("input", { type: "checkbox", id: "rule-enabled", testid: "rule-enabled", checked: true });
  const desc = h("input", { id: "rule-description", testid: "rule-description", class: "grow" });
  const saved = h("span", { class: "muted", testid: "rule-saved" });
  const formTitle = h("h2", {}, "New rule");
  let editing = null;
  const resetForm = () => {
    editing = null;
    formTitle.textContent = "New rule";
    id.readOnly = false;
    id.value = "";
    sql.value = "";
    desc.value = "";
    enabled.checked = true;
    sqlError.hidden = actionsError.hidden = true;
    saved.textContent = "";
  };
  const edit = (r) => {
    editing = r.id;
    formTitle.textContent = `Edit rule ${r.id}`;
    id.value = r.id;
    id.readOnly = true;
    node.value = r.node_id;
    sql.value = r.sql;
    actions.value = json(r.actions);
    enabled.checked = !!r.enabled;
    desc.value = r.description || "";
    sqlError.hidden = actionsError.hidden = true;
    saved.textContent = "";
    formTitle.scrollIntoView({ behavior: "smooth" });
  };
  const form = h("form", { id: "rule-form", testid: "rule-form", class: "stack" },
    h("div", { class: "row" }, field("Id", id), field("Node", node), field("Description", desc),
      h("label", { class: "inline" }, enabled, " enabled")),
    field("SQL", sql), sqlError,
    field("Actions (JSON array)", actions), actionsError,
    h("div", { class: "row" },
      h("button", { type: "submit", id: "rule-save", testid: "rule-save" }, "Save rule"),
      h("button", { type: "button", class: "ghost", testid: "rule-new", onclick: resetForm }, "New rule"), saved));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sqlError.hidden = actionsError.hidden = true;
    saved.textContent = "";
    let acts;
    try { acts = parseJson(actions.value, "actions", actionsError); } catch { return; }
    const body = { id: id.value.trim(), node_id: node.value, sql: sql.value, actions: acts, enabled: enabled.checked, description: desc.value };
    await act(async () => {
      try {
        const r = editing
          ? await api("PUT", `/api/rules/${enc(editing)}`, body)
          : await api("POST", "/api/rules", body);
        if (!editing) edit(r);
        saved.textContent = `saved ${r.id}`;
        await refresh();
      } catch (e) {
        if (e.code === "invalid_rule" || e.code === "invalid_request") {
          const { line, column } = e.detail;
          const at = line ? ` at line ${line}${column ? `, column ${column}` : ""}` : "";
          sqlError.textContent = `${e.code}${at}: ${e.message}`;
          sqlError.hidden = false;
          return;
        }
        throw e;
      }
    });
  });

  const tTopic = h("input", { id: "rule-test-topic", testid: "rule-test-topic", value: "devices/d1/telemetry", class: "grow" });
  const tPayload = h("textarea", { id: "rule-test-payload", testid: "rule-test-payload", rows: 3 });
  tPayload.value = '{"temperature": 21.5}';
  const tErr = h("p", { class: "error", testid: "rule-test-error", hidden: true });
  const tOut = h("pre", { id: "rule-test-output", testid: "rule-test-output" });
  const tForm = h("form", { class: "stack", testid: "rule-test-form" },
    h("p", { class: "muted" }, "Runs the SQL above on one sample message."),
    field("Topic", tTopic), field("Payload (JSON)", tPayload), tErr,
    h("div", {}, h("button", { type: "submit", id: "rule-test-run", testid: "rule-test-run" }, "Test")), tOut);
  tForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    tOut.textContent = "";
    act(async () => {
      const payload = parseJson(tPayload.value, "payload", tErr);
      const r = await api("POST", "/api/rules/test", { sql: sql.value, samples: [{ topic: tTopic.value.trim(), payload }] });
      const rows = (r && r.rows) || (Array.isArray(r) ? r : []);
      const errors = (r && r.errors) || [];
      tOut.textContent = `${rows.length} row(s)\n${rows.map((x) => json(x)).join("\n")}` +
        (errors.length ? `\nerrors:\n${errors.map((e) => `sample ${e.sample}: ${e.error}`).join("\n")}` : "");
    }, tErr);
  });

  const [t, body] = table("rules-table", ["Rule", "Node", "Enabled", "State", "In", "Rows out", "Errors", "SQL", ""]);
  let nodesLoaded = false;
  const refresh = async () => {
    const [rules, nodes] = await Promise.all([api("GET", "/api/rules"), api("GET", "/api/nodes")]);
    if (!current(gen)) return;
    if (!nodesLoaded || node.options.length !== nodes.length) { nodeOptions(node, nodes, node.value); nodesLoaded = true; }
    replace(body, rules.length ? rules.map((r) => {
      const st = r.status || {};
      const m = st.metrics || {};
      return h("tr", { testid: "rule-row", "data-id": r.id },
        h("td", {}, r.id), h("td", {}, r.node_id), h("td", {}, r.enabled ? "yes" : "no"),
        h("td", {}, st.status || "–", m.last_error ? h("div", { class: "error" }, m.last_error) : null),
        h("td", {}, m.messages_in ?? "–"), h("td", {}, m.rows_out ?? "–"), h("td", {}, m.errors ?? "–"),
        h("td", {}, h("code", { class: "sql" }, r.sql)),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "ghost", testid: "rule-edit", onclick: () => edit(r) }, "Edit"),
          h("button", { type: "button", class: "danger", testid: "rule-delete", onclick: () => {
            if (!confirm(`Delete rule ${r.id}?`)) return;
            act(async () => { await api("DELETE", `/api/rules/${enc(r.id)}`); if (editing === r.id) resetForm(); await refresh(); });
          } }, "Delete")));
    }) : emptyRow(9, "No rules yet."));
  };
  append(byId("main"), h("h1", {}, "Rules"),
    h("section", { class: "card" }, formTitle, form),
    section("Test the SQL", tForm),
    section("All rules", t));
  poll(2000, "rules", refresh);
}
