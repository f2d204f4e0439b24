// The dlinfer operator console: reads the node's public HTTP API and shows it.
// Plain browser JavaScript on purpose: no build step, no dependencies.
"use strict";

const REFRESH_MS = 2000;
const LOAD_PATH = "/v2/repository/models/{model}/load";
const state = { spec: null, controlEnabled: false, lastSample: null, rows: [], tryModel: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

async function api(method, path, body, headers) {
  const init = { method, headers: headers || {} };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, init);
  const type = r.headers.get("Content-Type") || "";
  const doc = type.includes("json") ? await r.json() : await r.text();
  return { ok: r.ok, status: r.status, doc };
}

function hasPath(path) {
  return Boolean(state.spec && state.spec.paths && state.spec.paths[path]);
}

// ----------------------------------------------------------------------------- server

async function showServer() {
  const [meta, ready] = await Promise.all([api("GET", "/v2"), api("GET", "/v2/health/ready")]);
  document.getElementById("server").textContent = meta.ok
    ? `${meta.doc.name} ${meta.doc.version} · extensions: ${meta.doc.extensions.join(", ")}`
    : `server metadata unavailable (${meta.status})`;
  const badge = document.getElementById("ready");
  badge.textContent = ready.doc.ready ? "ready" : "not ready";
  badge.className = "badge " + (ready.doc.ready ? "ok" : "bad");
}

async function showPlugins() {
  const r = await api("GET", "/v2/-/plugins");
  const body = document.querySelector("#plugins tbody");
  body.replaceChildren(
    ...r.doc.map((p) =>
      el(
        "tr",
        { class: p.status === "failed" ? "failed" : "" },
        el("td", {}, p.name),
        el("td", {}, p.distribution),
        el("td", {}, p.version),
        el("td", {}, p.status),
        el("td", { class: "small" }, p.error || p.hooks.join(", ")),
      ),
    ),
  );
}

// ----------------------------------------------------------------------------- metrics

function parsePrometheus(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)\{([^}]*)\}\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

// Cumulative request counts and durations per "model/version"; a gateway counts per model
// over all versions ("model/*"), and times the attempts it sends to its nodes.
function totals(samples) {
  const out = {};
  const get = (s, version) => (out[`${s.labels.model}/${version}`] ??= { ok: 0, failed: 0, us: 0, timed: 0 });
  for (const s of samples) {
    const v = s.labels.version;
    if (s.name === "dlinfer_inference_request_success_total") get(s, v).ok += s.value;
    else if (s.name === "dlinfer_inference_request_failure_total") get(s, v).failed += s.value;
    else if (s.name === "dlinfer_inference_request_duration_us_total") {
      get(s, v).us += s.value;
      get(s, v).perRequest = true; // a node times every request it answers
    } else if (s.name === "dlinfer_gateway_requests_total" && s.labels.model) {
      if (s.labels.code.startsWith("2")) get(s, "*").ok += s.value;
      else get(s, "*").failed += s.value;
    } else if (s.name === "dlinfer_gateway_upstream_duration_seconds_sum") get(s, "*").us += s.value * 1e6;
    else if (s.name === "dlinfer_gateway_upstream_duration_seconds_count") get(s, "*").timed += s.value;
  }
  for (const c of Object.values(out)) if (c.perRequest) c.timed = c.ok + c.failed;
  return out;
}

async function sampleMetrics() {
  if (!hasPath("/metrics")) return {};
  const r = await api("GET", "/metrics");
  if (!r.ok) return {};
  const now = performance.now();
  const current = totals(parsePrometheus(r.doc));
  const prev = state.lastSample;
  state.lastSample = { t: now, totals: current };
  const live = {};
  for (const [key, c] of Object.entries(current)) {
    const p = prev && prev.totals[key];
    const n = c.ok + c.failed;
    const entry = { failed: c.failed, rate: null, latencyMs: c.timed ? c.us / c.timed / 1000 : null };
    if (p) {
      entry.rate = (n - (p.ok + p.failed)) / ((now - prev.t) / 1000);
      const dt = c.timed - p.timed;
      if (dt > 0) entry.latencyMs = (c.us - p.us) / dt / 1000;
    }
    live[key] = entry;
  }
  return live;
}

// ----------------------------------------------------------------------------- models

async function control(action, model) {
  const token = document.getElementById("token").value;
  sessionStorage.setItem("dlinfer-token", token);
  const r = await api("POST", `/v2/repository/models/${encodeURIComponent(model)}/${action}`, "", {
    Authorization: `Bearer ${token}`,
  });
  document.getElementById("control-result").textContent = r.ok
    ? `${action} ${model}: done`
    : `${action} ${model}: ${r.status} ${r.doc.error || ""}`;
  refresh();
}

async function showModels() {
  const [index, live] = await Promise.all([api("POST", "/v2/repository/index", {}), sampleMetrics()]);
  state.rows = index.ok ? index.doc : [];
  const fmt = (v, digits, unit) => (v === null || v === undefined ? "–" : v.toFixed(digits) + unit);
  document.querySelector("#models tbody").replaceChildren(
    ...state.rows.map((m) => {
      const stats = live[`${m.name}/${m.version}`] || live[`${m.name}/*`] || {};
      const cells = [
        el("td", {}, m.name),
        el("td", {}, m.version ?? "–"),
        el("td", { class: "state " + m.state.toLowerCase() }, m.state),
        el("td", { class: "reason" }, m.reason),
        el("td", { class: "num" }, fmt(stats.rate, 1, "")),
        el("td", { class: "num" }, fmt(stats.latencyMs, 2, " ms")),
        el("td", { class: "num" }, stats.failed ?? "–"),
      ];
      if (state.controlEnabled) {
        cells.push(
          el(
            "td",
            { class: "ctl" },
            el("button", { type: "button", onclick: () => control("load", m.name) }, "load"),
            el("button", { type: "button", onclick: () => control("unload", m.name) }, "unload"),
          ),
        );
      }
      return el("tr", { "data-model": m.name, "data-state": m.state }, ...cells);
    }),
  );
  document.getElementById("metrics-note").textContent = hasPath("/metrics")
    ? "Request rate and latency from /metrics, refreshed every 2 s."
    : "This node serves no /metrics.";
  updateTryModels();
}

// ----------------------------------------------------------------------------- gateway nodes

// Columns shown first when a gateway reports them; any others follow as they come.
const NODE_COLUMNS = ["url", "healthy", "ejected", "weight", "outstanding", "requests", "share", "failures", "models", "last_error"];

async function showNodes() {
  if (!hasPath("/v2/-/nodes")) return;
  const r = await api("GET", "/v2/-/nodes");
  if (!r.ok) return;
  const rows = (Array.isArray(r.doc) ? r.doc : r.doc.nodes || []).map((n) => ({ ...n }));
  // Traffic share: each node's part of the requests the gateway sent.
  const total = rows.reduce((sum, n) => sum + (typeof n.requests === "number" ? n.requests : 0), 0);
  if (rows.some((n) => typeof n.requests === "number")) {
    for (const n of rows) n.share = total ? `${((100 * (n.requests || 0)) / total).toFixed(1)} %` : "–";
  }
  const keys = [...new Set(rows.flatMap((n) => Object.keys(n)))];
  const known = NODE_COLUMNS.filter((c) => keys.includes(c));
  const cols = known.length ? known : keys; // a gateway of another kind: show what it reports
  const cell = (c, v) => {
    if (c === "healthy") return el("td", { class: v ? "state ready" : "state unavailable" }, v ? "healthy" : "down");
    if (c === "models" && v && typeof v === "object" && !Array.isArray(v)) return el("td", {}, Object.keys(v).join(", "));
    return el("td", {}, v !== null && typeof v === "object" ? JSON.stringify(v) : v ?? "");
  };
  document.getElementById("nodes-section").hidden = false;
  document.getElementById("nodes").replaceChildren(
    el(
      "table",
      { id: "nodes-table" },
      el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", {}, c.replace("_", " "))))),
      el("tbody", {}, ...rows.map((n) => el("tr", { "data-node": n.url ?? "" }, ...cols.map((c) => cell(c, n[c]))))),
    ),
  );
}

// ----------------------------------------------------------------------------- try it

function updateTryModels() {
  const select = document.getElementById("try-model");
  const names = [...new Set(state.rows.filter((m) => m.state === "READY").map((m) => m.name))];
  const current = select.value;
  if (names.join() === [...select.options].map((o) => o.value).join()) return;
  select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  if (names.includes(current)) select.value = current;
  if (select.value !== state.tryModel) fillExample();
}

// A request with every input of the model filled with zeros, dynamic dimensions set to 1.
async function fillExample() {
  const model = document.getElementById("try-model").value;
  state.tryModel = model;
  if (!model) return;
  const r = await api("GET", `/v2/models/${encodeURIComponent(model)}`);
  if (!r.ok) return;
  const zero = { BOOL: false, BYTES: "" };
  const inputs = r.doc.inputs.map((t) => {
    const shape = t.shape.map((d) => (d < 0 ? 1 : d));
    const n = shape.reduce((a, b) => a * b, 1);
    return { name: t.name, datatype: t.datatype, shape, data: Array(n).fill(zero[t.datatype] ?? 0) };
  });
  // One input per line: readable and easy to edit, however long the data.
  const lines = inputs.map((t) => "  " + JSON.stringify(t)).join(",\n");
  document.getElementById("try-body").value = `{"inputs": [\n${lines}\n]}`;
}

async function sendTry(event) {
  event.preventDefault();
  const model = document.getElementById("try-model").value;
  const version = document.getElementById("try-version").value.trim();
  const path = `/v2/models/${encodeURIComponent(model)}` + (version ? `/versions/${encodeURIComponent(version)}` : "") + "/infer";
  const out = document.getElementById("try-result");
  let r;
  try {
    r = await api("POST", path, document.getElementById("try-body").value);
  } catch (err) {
    out.replaceChildren(el("p", { class: "error" }, String(err)));
    return;
  }
  if (!r.ok) {
    out.replaceChildren(el("p", { class: "error" }, `${r.status}: ${r.doc.error || r.doc}`));
    return;
  }
  out.replaceChildren(
    el("p", {}, `${r.doc.model_name} version ${r.doc.model_version ?? ""}`),
    el(
      "table",
      { id: "try-outputs" },
      el("thead", {}, el("tr", {}, el("th", {}, "output"), el("th", {}, "datatype"), el("th", {}, "shape"), el("th", {}, "data"))),
      el(
        "tbody",
        {},
        ...r.doc.outputs.map((o) =>
          el(
            "tr",
            { "data-output": o.name },
            el("td", {}, o.name),
            el("td", {}, o.datatype),
            el("td", {}, JSON.stringify(o.shape)),
            el("td", { class: "data" }, JSON.stringify(o.data).slice(0, 400)),
          ),
        ),
      ),
    ),
  );
}

// ----------------------------------------------------------------------------- main

async function refresh() {
  try {
    await Promise.all([showServer(), showModels(), showNodes()]);
  } catch (err) {
    document.getElementById("server").textContent = `cannot reach the node: ${err}`;
  }
}

async function main() {
  state.spec = (await api("GET", "/v2/-/openapi.json")).doc;
  const load = hasPath(LOAD_PATH) ? state.spec.paths[LOAD_PATH].post : null;
  // Model control is offered only where the node guards it with a token.
  state.controlEnabled = Boolean(load && load.security && load.security.length);
  document.getElementById("mode").textContent = state.controlEnabled ? "control enabled" : "read-only";
  document.getElementById("control").hidden = !state.controlEnabled;
  document.querySelectorAll("th.ctl").forEach((th) => (th.hidden = !state.controlEnabled));
  document.getElementById("token").value = sessionStorage.getItem("dlinfer-token") || "";
  document.getElementById("try").addEventListener("submit", sendTry);
  document.getElementById("try-model").addEventListener("change", fillExample);
  await Promise.all([refresh(), showPlugins()]);
  document.body.dataset.loaded = "true";
  setInterval(refresh, REFRESH_MS);
}

main();
