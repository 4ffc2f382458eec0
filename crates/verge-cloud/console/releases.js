// The releases page (self-update of nodes, docs/deployments.md): add a
// release (the metadata `verge release sign` printed, then its binary),
// list releases with the nodes assigned each, delete one. Also the release
// section of a node's page: the release assigned to it, assign and
// unassign, and the `verge` version the node reports running.
"use strict";

// ---------------------------------------------------------------- releases

/** The first 12 hex digits of a SHA-256, the whole one as its title. */
function shortSha(sha) {
  return sha ? h("code", { title: sha }, sha.slice(0, 12)) : "–";
}

function releasesPage() {
  const gen = routeGen;
  const metadata = h("textarea", { id: "release-metadata", testid: "release-metadata", rows: 4, spellcheck: "false",
    placeholder: '{"version":"0.2.0","sha256":"…","size":…,"signature":"…"} (printed by verge release sign)' });
  const metaFile = h("input", { id: "release-metadata-file", testid: "release-metadata-file", type: "file", accept: ".json,application/json" });
  const binary = h("input", { id: "release-binary", testid: "release-binary", type: "file" });
  const submit = h("button", { type: "submit", id: "release-add", testid: "release-add" }, "Add release");
  const addErr = h("p", { class: "error", testid: "release-error", hidden: true });
  const state = h("span", { class: "muted", testid: "release-state" });
  // A chosen metadata file fills the textarea (shown, and editable).
  metaFile.addEventListener("change", () => act(async () => {
    const f = metaFile.files[0];
    if (f) metadata.value = (await f.text()).trim();
  }, addErr));
  const form = h("form", { id: "release-form", testid: "release-form", class: "stack" },
    field("Signed metadata (the JSON of verge release sign)", metadata),
    h("div", { class: "row" }, field("…or its file", metaFile), field("The binary", binary)),
    addErr, h("div", { class: "row" }, submit, state));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.textContent = "";
    act(async () => {
      const meta = parseJson(metadata.value.trim(), "the metadata", addErr);
      if (!meta || typeof meta !== "object" || Array.isArray(meta)) throw new Error("the metadata must be a JSON object");
      const f = binary.files[0];
      if (!f) throw new Error("choose the binary the metadata was signed for");
      submit.disabled = true;
      try {
        const r = await api("POST", "/api/releases", meta);
        state.textContent = `uploading ${r.version} (${bytes(f.size)})…`;
        const up = await apiUpload("PUT", `/api/releases/${enc(r.version)}/binary`, f, "application/octet-stream");
        state.textContent = `added ${up.version} (${bytes(up.size)}, sha256 ${up.sha256.slice(0, 12)})`;
        metadata.value = "";
        metaFile.value = "";
        binary.value = "";
      } catch (e) {
        state.textContent = "";
        throw e;
      } finally {
        submit.disabled = false;
        await refresh();
      }
    }, addErr);
  });

  const delErr = h("p", { class: "error", testid: "release-delete-error", hidden: true });
  const [t, body] = table("releases-table", ["Version", "Size", "SHA-256", "Created", "Binary", "Nodes", ""]);
  const refresh = async () => {
    const releases = await api("GET", "/api/releases");
    if (!current(gen)) return;
    // Newest first.
    const rows = releases.slice().reverse();
    replace(body, rows.length ? rows.map((r) => h("tr", { testid: "release-row", "data-version": r.version },
      h("td", { testid: "release-version" }, r.version),
      h("td", { testid: "release-size" }, bytes(r.size)),
      h("td", { testid: "release-sha" }, shortSha(r.sha256)),
      h("td", { class: "muted" }, r.created_ms ? new Date(r.created_ms).toLocaleString() : "–"),
      h("td", { testid: "release-uploaded" }, r.uploaded ? "uploaded" : h("span", { class: "error" }, "missing: add the release again with its binary")),
      h("td", { testid: "release-nodes" }, r.nodes.length
        ? r.nodes.map((n, i) => [i ? ", " : "", h("a", { href: `#/nodes/${enc(n)}`, testid: "release-node", "data-node": n }, n)])
        : "–"),
      h("td", { class: "actions" }, h("button", { type: "button", class: "danger", testid: "release-delete", onclick: () => {
        if (!confirm(`Delete release ${r.version}?`)) return;
        act(async () => { await api("DELETE", `/api/releases/${enc(r.version)}`); await refresh(); }, delErr);
      } }, "Delete")))) : emptyRow(7, "No releases yet: add one above."));
  };
  append(byId("main"), h("h1", {}, "Releases"),
    section("Add a release", form,
      h("p", { class: "muted" }, "Sign a verge binary with ", h("code", {}, "verge release sign --key release.key --version V ./verge"),
        "; the cloud checks the binary against the metadata's size and SHA-256, each node checks the signature with the key it was given at join.")),
    section("All releases", delErr, t,
      h("p", { class: "muted" }, "Assign a release on a node's page; the node swaps its binary and goes back when the new one does not report healthy.")));
  poll(2000, "releases", refresh);
}

// ---------------------------------------------------------------- a node's release

/** The release section of node `id`'s page. `refresh(node)` shows the
 * release assigned to it (from GET /api/releases) and the version it runs
 * (its report's `agent_version`). */
function nodeRelease(id) {
  const assigned = h("span", { testid: "node-release" });
  const running = h("span", { testid: "node-agent-version" });
  const choose = h("select", { id: "node-release-version", testid: "node-release-version" });
  const err = h("p", { class: "error", testid: "node-release-error", hidden: true });
  const done = h("span", { class: "muted", testid: "node-release-done" });
  let refreshAgain = async () => {};
  const unassign = h("button", { type: "button", class: "danger", testid: "node-release-unassign", hidden: true, onclick: () => {
    if (!confirm(`Unassign the release of ${id}? It keeps the binary it runs.`)) return;
    done.textContent = "";
    act(async () => {
      await api("DELETE", `/api/nodes/${enc(id)}/release`);
      done.textContent = "unassigned";
      await refreshAgain();
    }, err);
  } }, "Unassign");
  const form = h("form", { id: "node-release-form", testid: "node-release-form", class: "row" },
    field("Release", choose),
    h("button", { type: "submit", id: "node-release-assign", testid: "node-release-assign" }, "Assign"), unassign, done);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    done.textContent = "";
    act(async () => {
      if (!choose.value) throw new Error("no release with a binary to assign: add one on the Releases page");
      const r = await api("PUT", `/api/nodes/${enc(id)}/release`, { version: choose.value });
      done.textContent = `${r.version} assigned`;
      await refreshAgain();
    }, err);
  });
  let last = null;
  const refresh = async (node) => {
    last = node;
    const releases = await api("GET", "/api/releases");
    if (node !== last) return;
    const mine = releases.find((r) => (r.nodes || []).includes(id));
    const runs = (node.report || {}).agent_version;
    replace(assigned, mine ? h("strong", {}, mine.version) : h("span", { class: "muted" }, "none assigned"));
    replace(running, runs || "not reported",
      mine && runs && runs !== mine.version ? h("span", { class: "muted" }, ` (not yet ${mine.version})`) : null);
    unassign.hidden = !mine;
    // The choices: releases with their binary, newest first; kept while
    // the user picks one.
    const versions = releases.filter((r) => r.uploaded).map((r) => r.version).reverse();
    const now = [...choose.options].map((o) => o.value);
    if (now.join("\n") !== versions.join("\n")) {
      const sel = choose.value || (mine && mine.version);
      replace(choose, versions.map((v) => h("option", { value: v }, v)));
      if (versions.includes(sel)) choose.value = sel;
    }
  };
  refreshAgain = async () => { if (last) await refresh(last); };
  const el = h("div", { testid: "node-release-section" },
    h("dl", { class: "summary" },
      h("dt", {}, "Assigned release"), h("dd", {}, assigned),
      h("dt", {}, "Running version"), h("dd", {}, running)),
    form, err);
  return { el, refresh };
}
