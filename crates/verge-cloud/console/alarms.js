// The Alarms page (#/alarms): alarms of every device, filtered by status
// and acknowledgement, with Ack and Clear; alarmRow is shared with the
// device page.
"use strict";

// ---------------------------------------------------------------- alarms

/** One alarm as a table row with Ack and Clear; `withDevice` adds the
 * device column (a link to its page). `refresh` runs after an action. */
function alarmRow(a, refresh, withDevice) {
  const action = (verb) => act(async () => {
    await api("POST", `/api/alarms/${enc(a.id)}/${verb}`);
    await refresh();
  });
  const when = a.count > 1 ? `${time(a.created_ms)} (×${a.count}, last ${ago(a.updated_ms)})` : time(a.created_ms);
  return h("tr", { testid: "alarm-row", "data-id": a.id, "data-status": a.status, "data-acknowledged": String(!!a.acknowledged) },
    withDevice ? h("td", {}, h("a", { href: `#/devices/${enc(a.device_id)}`, testid: "alarm-device" }, a.device_id),
      h("div", { class: "muted" }, a.node_id)) : null,
    h("td", {}, when),
    h("td", {}, a.type, a.rule ? h("div", { class: "muted" }, `rule ${a.rule}`) : null),
    h("td", {}, h("span", { class: `badge severity-${String(a.severity || "").toLowerCase()}`, testid: "alarm-severity" }, a.severity)),
    h("td", {}, a.message || "–"),
    h("td", {}, h("span", { class: `badge alarm-${a.status}`, testid: "alarm-status" }, a.status),
      h("div", { class: "muted", testid: "alarm-ack" }, a.acknowledged ? `acknowledged ${ago(a.acknowledged_ms)}` : "unacknowledged")),
    h("td", { class: "actions" },
      a.acknowledged ? null : h("button", { type: "button", class: "ghost", testid: "alarm-ack-button", onclick: () => action("ack") }, "Ack"),
      a.status === "active" ? h("button", { type: "button", class: "danger", testid: "alarm-clear-button", onclick: () => action("clear") }, "Clear") : null));
}

function alarmsPage() {
  const gen = routeGen;
  const status = h("select", { testid: "alarms-status" },
    h("option", { value: "active" }, "active"), h("option", { value: "cleared" }, "cleared"), h("option", { value: "" }, "any status"));
  const unacked = h("input", { type: "checkbox", testid: "alarms-unacknowledged" });
  const device = h("input", { testid: "alarms-device", placeholder: "any device" });
  const [t, body] = table("alarms-table", ["Device", "Raised", "Type", "Severity", "Message", "Status", ""]);
  const refresh = async () => {
    const q = new URLSearchParams();
    if (status.value) q.set("status", status.value);
    if (unacked.checked) q.set("acknowledged", "false");
    if (device.value.trim()) q.set("device_id", device.value.trim());
    const list = await api("GET", `/api/alarms${q.toString() ? `?${q}` : ""}`);
    if (!current(gen)) return;
    replace(body, list.length ? list.map((a) => alarmRow(a, refresh, true)) : emptyRow(7, "No alarms match."));
  };
  for (const el of [status, unacked]) el.addEventListener("change", () => act(refresh));
  device.addEventListener("change", () => act(refresh));
  const filters = h("div", { class: "row", testid: "alarms-filters" },
    field("Status", status), h("label", { class: "inline" }, unacked, "unacknowledged only"), field("Device", device));
  append(byId("main"), h("h1", {}, "Alarms"),
    section("Alarms", h("p", { class: "muted" }, "Raised by the `alarm` action of a rule on a device's node; one open alarm per device and type (a new raise counts up)."),
      filters, t));
  poll(3000, "alarms", refresh);
}
