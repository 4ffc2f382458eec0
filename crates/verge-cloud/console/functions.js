// The functions page: upload a wasm function, list, delete and test-call it.
"use strict";

// ---------------------------------------------------------------- functions

function toBase64(buf) {
  const u8 = new Uint8Array(buf);
  let s = "";
  for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
  return btoa(s);
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error(`cannot read ${file.name}`));
    r.readAsArrayBuffer(file);
  });
}

function functionsPage() {
  const gen = routeGen;
  const name = h("input", { id: "function-name", testid: "function-name", required: true, placeholder: "demo-tag" });
  const file = h("input", { id: "function-file", testid: "function-file", type: "file", accept: ".wasm,.wat", required: true });
  const desc = h("input", { id: "function-description", testid: "function-description", class: "grow" });
  const upErr = h("p", { class: "error", testid: "function-error", hidden: true });
  const upOk = h("span", { class: "muted", testid: "function-uploaded" });
  file.addEventListener("change", () => {
    if (!name.value && file.files[0]) name.value = file.files[0].name.replace(/\.(wasm|wat)$/, "");
  });
  const form = h("form", { id: "function-form", testid: "function-form", class: "stack" },
    h("div", { class: "row" }, field("Name", name), field("Module (.wasm or .wat)", file), field("Description", desc)), upErr,
    h("div", { class: "row" }, h("button", { type: "submit", id: "function-upload", testid: "function-upload" }, "Upload"), upOk));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    upOk.textContent = "";
    act(async () => {
      const f = file.files[0];
      if (!f) throw new Error("choose a .wasm or .wat file");
      const spec = { runtime: "wasm" };
      if (desc.value) spec.description = desc.value;
      const r = await api("PUT", `/api/functions/${enc(name.value.trim())}`, { spec, module_base64: toBase64(await readFile(f)) });
      upOk.textContent = `uploaded ${r.name} version ${r.version}`;
      await refresh();
    }, upErr);
  });

  const iName = h("select", { id: "invoke-name", testid: "invoke-name" });
  const iTopic = h("input", { id: "invoke-topic", testid: "invoke-topic", value: "devices/d1/telemetry", class: "grow" });
  const iPayload = h("textarea", { id: "invoke-payload", testid: "invoke-payload", rows: 3 });
  iPayload.value = '{"temperature": 21.5}';
  const iErr = h("p", { class: "error", testid: "invoke-error", hidden: true });
  const iOut = h("pre", { id: "invoke-output", testid: "invoke-output" });
  const iForm = h("form", { class: "stack", testid: "invoke-form" },
    h("div", { class: "row" }, field("Function", iName), field("Topic", iTopic)),
    field("Payload (JSON)", iPayload), iErr,
    h("div", {}, h("button", { type: "submit", id: "invoke-run", testid: "invoke-run" }, "Invoke")), iOut);
  iForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    iOut.textContent = "";
    act(async () => {
      const payload = parseJson(iPayload.value, "payload", iErr);
      const r = await api("POST", `/api/functions/${enc(iName.value)}/invoke`, { topic: iTopic.value.trim(), payload });
      iOut.textContent = `${(r.outputs || []).length} output(s) in ${r.duration_us} µs\n` +
        (r.outputs || []).map((o) => `${o.topic}\n${typeof o.payload === "string" ? o.payload : json(o.payload)}`).join("\n\n");
    }, iErr);
  });

  const [t, body] = table("functions-table", ["Function", "Version", "Size", "SHA-256", "Nodes", "Per node", ""]);
  const refresh = async () => {
    const fns = await api("GET", "/api/functions");
    if (!current(gen)) return;
    const sel = iName.value;
    replace(iName, fns.map((f) => h("option", { value: f.name }, f.name)));
    if (fns.some((f) => f.name === sel)) iName.value = sel;
    replace(body, fns.length ? fns.map((f) => h("tr", { testid: "function-row", "data-name": f.name },
      h("td", {}, f.name, f.spec && f.spec.description ? h("div", { class: "muted" }, f.spec.description) : null),
      h("td", {}, f.version), h("td", {}, bytes(f.size)),
      h("td", {}, h("code", { title: f.sha256 || "" }, (f.sha256 || "").slice(0, 12))),
      h("td", {}, (f.nodes || []).join(", ") || "–"),
      h("td", {}, (f.stats || []).length ? h("ul", { class: "plain" }, f.stats.map((s) => {
        const m = s.metrics || s;
        return h("li", {}, `${s.node_id}: v${s.version ?? "?"}, ${m.invocations ?? 0} calls, ${m.errors ?? 0} errors, p50 ${us(m.p50_us)}, p99 ${us(m.p99_us)}`);
      })) : "–"),
      h("td", { class: "actions" }, h("button", { type: "button", class: "danger", testid: "function-delete", onclick: () => {
        if (!confirm(`Delete function ${f.name}?`)) return;
        act(async () => { await api("DELETE", `/api/functions/${enc(f.name)}`); await refresh(); });
      } }, "Delete")))) : emptyRow(7, "No functions yet."));
  };
  append(byId("main"), h("h1", {}, "Functions"),
    section("Upload a function", form), section("All functions", t), section("Invoke in the cloud's sandbox", iForm));
  poll(3000, "functions", refresh);
}
