// A node's protocol drivers on its page: the list (protocol, devices,
// points), add or replace one from its JSON config, delete; the API's
// refusal (400 invalid_driver naming the key) shows under the form.
"use strict";

/** The Drivers section of node `id`: `{el, refresh(drivers)}`. */
function nodeDrivers(id) {
  const name = h("input", { id: "node-driver-name", testid: "node-driver-name", placeholder: "plc1", required: true });
  const config = h("textarea", { id: "node-driver-config", testid: "node-driver-config", class: "code", rows: 8,
    placeholder: '{"protocol": "modbus-tcp", "host": "10.0.0.5", "devices": [{"name": "m1", "points": [{"name": "t", "address": "hr:0"}]}]}' });
  const err = h("p", { class: "error", testid: "node-driver-error", hidden: true });
  const saved = h("span", { class: "muted", testid: "node-driver-saved" });
  const [t, body] = table("node-drivers", ["Driver", "Protocol", "Devices", "Points", "On the node", "Updated", ""]);
  const form = h("form", { id: "node-driver-form", testid: "node-driver-form" },
    h("div", { class: "row" }, field("Name", name)),
    field("Config (JSON, as the node's drivers API takes it; no pki_dir, serial lines under /dev/)", config),
    h("div", { class: "row" }, h("button", { type: "submit", testid: "node-driver-save" }, "Save driver"), saved), err);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    saved.textContent = "";
    act(async () => {
      const cfg = parseJson(config.value, "The driver config", err);
      const d = await api("PUT", `/api/nodes/${enc(id)}/drivers/${enc(name.value.trim())}`, cfg);
      saved.textContent = `driver ${d.name} saved`;
      refresh(await api("GET", `/api/nodes/${enc(id)}/drivers`));
    }, err);
  });
  let report = null;
  /** The driver's status in the node's last heartbeat. */
  const status = (name) => {
    const st = ((report && report.drivers) || []).find((x) => x.name === name);
    if (!st) return h("span", { class: "muted", testid: "node-driver-status" }, report ? "not running" : "–");
    return h("span", { testid: "node-driver-status", "data-connected": String(!!st.connected) },
      h("span", { class: `badge ${st.connected ? "status-online" : "status-offline"}` }, st.connected ? "connected" : "not connected"),
      ` ${st.reads ?? 0} reads, ${st.errors ?? 0} errors`,
      st.last_error ? h("span", { class: "muted" }, ` — ${st.last_error}`) : null);
  };
  const refresh = (drivers, nodeReport) => {
    if (nodeReport !== undefined) report = nodeReport;
    replace(body, drivers.length ? drivers.map((d) => h("tr", { testid: "node-driver-row", "data-name": d.name },
      h("td", {}, d.name), h("td", { testid: "node-driver-protocol" }, d.protocol ?? "–"),
      h("td", { testid: "node-driver-devices" }, d.devices), h("td", { testid: "node-driver-points" }, d.points),
      h("td", {}, status(d.name)),
      h("td", {}, ago(d.updated_ms)),
      h("td", {},
        h("button", { type: "button", class: "ghost", testid: "node-driver-edit", onclick: () => {
          name.value = d.name;
          const { name: _, ...rest } = d.config || {};
          config.value = JSON.stringify(rest, null, 2);
        } }, "Edit"),
        h("button", { type: "button", class: "danger", testid: "node-driver-delete", onclick: () => {
          if (!confirm(`Stop running driver ${d.name} on node ${id}?`)) return;
          act(async () => {
            await api("DELETE", `/api/nodes/${enc(id)}/drivers/${enc(d.name)}`);
            refresh(await api("GET", `/api/nodes/${enc(id)}/drivers`));
          }, err);
        } }, "Delete"))))
      : emptyRow(7, "No drivers on this node: add one above."));
  };
  return { el: h("div", { testid: "node-drivers-section" }, form, t), refresh };
}
