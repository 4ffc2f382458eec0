// The devices page: create (with what a device program needs to connect,
// device.js), list with links to each device's page, new secret, delete,
// send a command and watch a device's messages.
"use strict";

// ---------------------------------------------------------------- devices

function devicesPage() {
  const gen = routeGen;
  const name = h("input", { id: "device-name", testid: "device-name", required: true, placeholder: "d1" });
  const node = h("select", { id: "device-node", testid: "device-node", required: true });
  const desc = h("input", { id: "device-description", testid: "device-description", placeholder: "optional", class: "grow" });
  const created = h("div");
  const panel = h("div", { id: "device-panel" });
  const form = h("form", { id: "device-form", class: "row", testid: "device-form" },
    field("Name", name), field("Node", node), field("Description", desc),
    h("button", { type: "submit", id: "device-create", testid: "device-create" }, "Create device"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const r = await api("POST", "/api/devices", { name: name.value.trim(), node_id: node.value, description: desc.value });
      name.value = "";
      desc.value = "";
      replace(created, secretBox("device-created", `Device ${r.device.id} created on ${r.device.node_id}. Its MQTT username is its id; password:`, [
        ["Device id", r.device.id, "device-id"], ["Secret", r.secret, "device-secret"]]));
      await refresh();
      // The node's broker addresses come with the device (from the node's heartbeat).
      const full = await api("GET", `/api/devices/${enc(r.device.id)}`);
      created.append(deviceOnboarding(r.device, r.secret, full.endpoints));
    });
  });
  const [t, body] = table("devices-table", ["Device", "Node", "Last telemetry", "When", ""]);
  let nodesLoaded = false;
  const refresh = async () => {
    const [devices, nodes] = await Promise.all([api("GET", "/api/devices"), api("GET", "/api/nodes")]);
    if (!current(gen)) return;
    if (!nodesLoaded || node.options.length !== nodes.length) { nodeOptions(node, nodes, node.value); nodesLoaded = true; }
    replace(body, devices.length ? devices.map((d) => h("tr", { testid: "device-row", "data-id": d.id },
      h("td", {}, h("a", { href: `#/devices/${enc(d.id)}`, testid: "device-link" }, d.id), d.description ? h("div", { class: "muted" }, d.description) : null),
      h("td", {}, h("a", { href: `#/nodes/${enc(d.node_id)}` }, d.node_id)),
      h("td", {}, h("pre", { class: "inline-json", testid: "device-telemetry" }, d.last_telemetry === null || d.last_telemetry === undefined ? "–" : json(d.last_telemetry))),
      h("td", {}, ago(d.last_telemetry_ms)),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "ghost", testid: "device-open", onclick: () => openDevice(d) }, "Commands & messages"),
        h("button", { type: "button", class: "ghost", testid: "device-rotate", onclick: () => act(async () => {
          const r = await api("POST", `/api/devices/${enc(d.id)}/secret`);
          replace(created, secretBox("device-created", `New secret of ${d.id} (the old one no longer works once the node applies it):`, [["Secret", r.secret, "device-secret"]]));
        }) }, "Rotate secret"),
        h("button", { type: "button", class: "danger", testid: "device-delete", onclick: () => {
          if (!confirm(`Delete device ${d.id}?`)) return;
          act(async () => { await api("DELETE", `/api/devices/${enc(d.id)}`); await refresh(); });
        } }, "Delete")))) : emptyRow(5, "No devices yet."));
  };
  let panelGen = 0;
  const openDevice = (d) => {
    const my = ++panelGen;
    const cname = h("input", { id: "command-name", testid: "command-name", required: true, placeholder: "reboot" });
    const payload = h("textarea", { id: "command-payload", testid: "command-payload", rows: 3 });
    payload.value = "{}";
    const inline = h("p", { class: "error", testid: "command-error", hidden: true });
    const result = h("p", { class: "muted", testid: "command-result" });
    const cform = h("form", { class: "stack", testid: "command-form" },
      field("Command", cname), field("Payload (JSON)", payload), inline,
      h("div", { class: "row" }, h("button", { type: "submit", testid: "command-send" }, "Send command"), result));
    cform.addEventListener("submit", (ev) => {
      ev.preventDefault();
      act(async () => {
        const body = parseJson(payload.value, "payload", inline);
        const r = await api("POST", `/api/devices/${enc(d.id)}/commands/${enc(cname.value.trim())}`, body);
        result.textContent = `command ${r.command.id} ${r.command.status}`;
      }, inline);
    });
    // The message list polls while this device stays open (the first poller
    // of a device panel stops itself when another device is opened).
    const live = liveMessages((after) => {
      if (my !== panelGen) return null;
      return messagesUrl(`/api/devices/${enc(d.id)}/messages`, after);
    }, { key: "device-messages", id: "device-messages", noFilter: true });
    replace(panel, section(`Device ${d.id}`, h("button", { type: "button", class: "ghost", onclick: () => { panelGen++; panel.replaceChildren(); } }, "Close"),
      h("h3", {}, "Send a command"), cform, h("h3", {}, "Messages"), live));
    panel.scrollIntoView({ behavior: "smooth" });
  };
  append(byId("main"), h("h1", {}, "Devices"), section("Create device", form, created), section("All devices", t), panel);
  poll(2000, "devices", refresh);
}
