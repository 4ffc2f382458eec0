// The messages page: live upstream messages of one node.
"use strict";

// ---------------------------------------------------------------- messages

function messagesPage() {
  const gen = routeGen;
  const node = h("select", { id: "messages-node", testid: "messages-node" });
  const slot = h("div", { id: "messages-slot" });
  let viewGen = 0;
  const show = () => {
    const my = ++viewGen;
    const id = node.value;
    if (!id) { replace(slot, h("p", { class: "muted" }, "No nodes yet.")); return; }
    replace(slot, liveMessages((after, topic) => {
      if (my !== viewGen) return null;
      return messagesUrl(`/api/nodes/${enc(id)}/messages`, after, topic);
    }, { key: "messages" }));
  };
  node.addEventListener("change", show);
  append(byId("main"), h("h1", {}, "Live messages"),
    section("Node", field("Node", node), slot));
  act(async () => {
    const nodes = await api("GET", "/api/nodes");
    if (!current(gen)) return;
    nodeOptions(node, nodes, nodes[0] && nodes[0].id);
    show();
  });
}
