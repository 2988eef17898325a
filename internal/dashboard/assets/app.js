// StateMesh dashboard: reads the admin API (GET only) every few seconds
// and draws the mesh. Data is inserted as text, never as HTML.
"use strict";

const REFRESH_MS = 2000;
// Above this many nodes the page loads only the selected cluster's nodes.
const NODE_LIMIT = 1500;
// Clusters with at most this many loaded nodes list them by name.
const NAMED_NODES = 8;
const DOTS_PER_CLUSTER = 60;

const state = { token: "", status: null, nodes: [], paths: [], selected: "", selectedCluster: "", lastOK: 0, detail: null };

// The fragment may carry the admin token (kept for this tab, then
// removed from the address bar) and a node to select: #token=T&node=N.
function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("token")) {
    sessionStorage.setItem("statemesh-token", params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
  state.token = sessionStorage.getItem("statemesh-token") || "";
  if (params.get("node")) {
    state.selected = params.get("node");
    loadPeers(state.selected);
  }
}

async function api(path) {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) throw Object.assign(new Error("unauthenticated"), { auth: true });
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error.message; } catch (_) {}
    throw new Error(path + ": " + msg);
  }
  return r.json();
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

function total(counts) { return Object.values(counts || {}).reduce((a, b) => a + b, 0); }

function countsText(counts) {
  return Object.keys(counts || {}).sort().map(k => k + " " + counts[k]).join(", ") || "none";
}

async function refresh() {
  try {
    const [status, paths] = await Promise.all([api("/v1/status"), api("/v1/paths")]);
    state.status = status;
    state.paths = paths;
    const n = total(status.nodes);
    if (n <= NODE_LIMIT) {
      state.nodes = await api("/v1/nodes");
    } else if (state.selectedCluster) {
      const [r, c] = state.selectedCluster.split("/");
      state.nodes = await api("/v1/nodes?region=" + encodeURIComponent(r) + "&cluster=" + encodeURIComponent(c));
    } else {
      state.nodes = [];
    }
    if (state.selected) {
      try { state.detail = await api("/v1/nodes/" + encodeURIComponent(state.selected)); } catch (e) { state.detail = { gone: e.message }; }
    }
    state.lastOK = Date.now();
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    render();
  } catch (e) {
    if (e.auth) {
      document.getElementById("login").hidden = false;
      document.getElementById("main").hidden = true;
      document.getElementById("login-error").textContent = state.token ? "the token was refused" : "";
    }
    document.getElementById("mesh").textContent = "error: " + e.message;
  }
  renderLive();
}

function renderLive() {
  const live = document.getElementById("live");
  const age = (Date.now() - state.lastOK) / 1000;
  live.className = "live " + (state.lastOK && age < 3 * REFRESH_MS / 1000 ? "on" : "off");
  document.getElementById("updated").textContent = state.lastOK ? "updated " + new Date(state.lastOK).toLocaleTimeString() : "";
}

function render() {
  const st = state.status;
  document.getElementById("mesh").textContent = "mesh " + (st.mesh || "(no spec)") + " · revision " + st.revision;
  document.getElementById("counts").textContent = total(st.nodes) + " nodes (" + countsText(st.nodes) + ") · " + st.clients + " clients";
  renderTopology();
  renderDetail();
  renderLatency();
  renderAttention();
  renderEvents();
}

function nodeClass(n, stale) {
  let c = "node " + (n.state !== "active" ? "quarantined" : n.class);
  if (stale.has(n.name)) c += " stale";
  if (n.name === state.selected) c += " selected";
  return c;
}

function renderTopology() {
  const st = state.status;
  const root = document.getElementById("topology");
  root.replaceChildren();
  const byCluster = new Map();
  const byName = new Map();
  for (const n of state.nodes) {
    byName.set(n.name, n);
    if (n.cluster) {
      const k = n.region + "/" + n.cluster;
      if (!byCluster.has(k)) byCluster.set(k, []);
      byCluster.get(k).push(n);
    }
  }
  const stale = new Set(st.stalePeers || []);
  const CW = 190, GW = 150, PAD = 14;
  const cols = Math.min(st.regions.length, 3) || 1;
  let x0 = 0, y0 = 0, rowH = 0, width = 0;
  st.regions.forEach((r, i) => {
    const perRow = Math.max(1, Math.min(r.clusters.length, 3), Math.min(r.gateways.length, 3));
    const rw = PAD * 2 + perRow * CW;
    // cluster heights: named nodes, dots, or counts
    const ch = r.clusters.map(c => {
      const ns = byCluster.get(r.name + "/" + c.name) || [];
      if (ns.length === 0) return 64;
      if (ns.length <= NAMED_NODES) return 50 + ns.length * 16;
      return 56 + Math.ceil(Math.min(ns.length, DOTS_PER_CLUSTER) / 12) * 14;
    });
    const gwRows = Math.ceil(r.gateways.length / perRow) || 1;
    const gy = 36, cy = gy + gwRows * 44 + 40;
    const rowsH = [];
    for (let k = 0; k < r.clusters.length; k += perRow) rowsH.push(Math.max(...ch.slice(k, k + perRow)));
    const rh = cy + rowsH.reduce((a, b) => a + b + 12, 0) + PAD;
    if (i > 0 && i % cols === 0) { x0 = 0; y0 += rowH + 16; rowH = 0; }
    const g = svg("g", { transform: `translate(${x0},${y0})`, "data-region": r.name });
    g.append(svg("rect", { class: "region", x: 0, y: 0, width: rw, height: rh, rx: 8 }));
    g.append(svg("text", { class: "region-title", x: PAD, y: 22 }, r.name));
    const gwPos = new Map();
    r.gateways.forEach((gw, k) => {
      const gx = PAD + (k % perRow) * CW + (CW - GW) / 2, gyy = gy + Math.floor(k / perRow) * 44;
      gwPos.set(gw.name, [gx + GW / 2, gyy + 34]);
      const gg = svg("g", { class: "gw " + (gw.healthy ? "healthy" : "unhealthy"), "data-gateway": gw.name });
      gg.append(svg("rect", { x: gx, y: gyy, width: GW, height: 34, rx: 4 }));
      gg.append(svg("text", { x: gx + 8, y: gyy + 14 }, gw.name));
      gg.append(svg("text", { class: "count", x: gx + 8, y: gyy + 28 }, (gw.healthy ? "healthy" : "UNHEALTHY") + " · " + plural((gw.clusters || []).length, "cluster")));
      gg.append(svg("title", {}, gw.name + ": " + (gw.healthy ? "healthy" : "unhealthy") + ", carries " + ((gw.clusters || []).join(", ") || "no cluster")));
      gg.addEventListener("click", () => select(gw.name));
      if (gw.name === state.selected) gg.querySelector("rect").classList.add("selected");
      g.append(gg);
    });
    let yy = cy;
    r.clusters.forEach((c, k) => {
      const row = Math.floor(k / perRow);
      if (k > 0 && k % perRow === 0) yy += rowsH[row - 1] + 12;
      const cx = PAD + (k % perRow) * CW + 5, w = CW - 10, h = ch[k];
      const from = gwPos.get(c.designatedGateway);
      if (from) {
        g.insertBefore(svg("path", { class: "link", d: `M${from[0]},${from[1]} C${from[0]},${from[1] + 30} ${cx + w / 2},${yy - 30} ${cx + w / 2},${yy}`, "data-link": c.designatedGateway + ">" + c.name }), g.children[2] || null);
      }
      const cg = svg("g", { class: "cluster", "data-cluster": r.name + "/" + c.name });
      cg.append(svg("rect", { x: cx, y: yy, width: w, height: h, rx: 5 }));
      cg.append(svg("text", { x: cx + 8, y: yy + 16 }, c.name));
      cg.append(svg("text", { class: "count", x: cx + 8, y: yy + 30 }, "via " + (c.designatedGateway || "— no gateway")));
      const ns = (byCluster.get(r.name + "/" + c.name) || []).sort((a, b) => a.name.localeCompare(b.name));
      if (ns.length === 0) {
        const t = svg("text", { class: "count", x: cx + 8, y: yy + 48 }, countsText(c.nodes));
        cg.append(t);
        cg.addEventListener("click", () => { state.selectedCluster = r.name + "/" + c.name; refresh(); });
      } else if (ns.length <= NAMED_NODES) {
        ns.forEach((n, j) => {
          const ny = yy + 46 + j * 16;
          const dot = svg("circle", { class: nodeClass(n, stale), cx: cx + 14, cy: ny - 4, r: 5, "data-node": n.name });
          dot.append(svg("title", {}, n.name + " · " + n.class + " · " + n.state));
          const label = svg("text", { x: cx + 24, y: ny, "data-node-label": n.name }, n.name);
          for (const e of [dot, label]) e.addEventListener("click", () => select(n.name));
          cg.append(dot, label);
        });
      } else {
        ns.slice(0, DOTS_PER_CLUSTER).forEach((n, j) => {
          const dot = svg("circle", { class: nodeClass(n, stale), cx: cx + 12 + (j % 12) * 14, cy: yy + 46 + Math.floor(j / 12) * 14, r: 5, "data-node": n.name });
          dot.append(svg("title", {}, n.name + " · " + n.class + " · " + n.state));
          dot.addEventListener("click", () => select(n.name));
          cg.append(dot);
        });
        if (ns.length > DOTS_PER_CLUSTER) cg.append(svg("text", { class: "count", x: cx + 8, y: yy + h - 6 }, "+" + (ns.length - DOTS_PER_CLUSTER) + " more"));
      }
      g.append(cg);
    });
    root.append(g);
    x0 += rw + 16;
    rowH = Math.max(rowH, rh);
    width = Math.max(width, x0);
  });
  root.setAttribute("viewBox", `0 0 ${Math.max(width, 300)} ${y0 + rowH + 4}`);
  root.setAttribute("height", y0 + rowH + 4);
}

function select(name) {
  state.selected = name;
  history.replaceState(null, "", location.pathname + location.search + "#node=" + encodeURIComponent(name));
  state.detail = null;
  loadPeers(name);
  refresh();
}

async function loadPeers(name) {
  try {
    const m = await api("/v1/nodes/" + encodeURIComponent(name) + "/map");
    if (state.selected === name) { state.peers = m.peers || []; renderDetail(); }
  } catch (_) { state.peers = null; }
}

function fmtTime(t) { return t ? new Date(t).toLocaleString() : "—"; }

function renderDetail() {
  const box = document.getElementById("detail");
  const n = state.detail;
  if (!state.selected || !n) { box.replaceChildren(el("p", { class: "muted" }, state.selected ? "loading " + state.selected + "…" : "Select a node or gateway.")); return; }
  if (n.gone) { box.replaceChildren(el("p", { class: "bad" }, state.selected + ": " + n.gone)); return; }
  const dl = el("dl");
  const row = (k, v, cls) => dl.append(el("dt", {}, k), el("dd", cls ? { class: cls } : {}, v));
  row("name", n.name);
  row("where", n.region + (n.cluster ? "/" + n.cluster : "") + " · " + n.role);
  row("class", n.class, n.class === "strong" ? "good" : "warn");
  row("state", n.state + (n.reason ? " (" + n.reason + ")" : ""), n.state === "active" ? "good" : "bad");
  if (n.healthy !== undefined) row("gateway", n.healthy ? "healthy" : "unhealthy", n.healthy ? "good" : "bad");
  row("evidence", n.class === "strong" ? "TPM quote verified, EK sha256 " + (n.ekHash || "?").slice(0, 16) + "…, last " + fmtTime(n.attestedAt) : "no TPM evidence (admitted as weak)");
  row("overlay", [n.overlayIPv4, n.overlayIPv6].filter(Boolean).join(", "));
  if (n.podIPv4 || n.podIPv6) row("pods", [n.podIPv4, n.podIPv6].filter(Boolean).join(", "));
  row("endpoint", [n.endpoint, n.publicEndpoint].filter(Boolean).join(" · public ") || "—");
  row("firewall", n.firewall || "—", n.firewall === "enforced" ? "good" : "warn");
  row("map applied", n.appliedRevision ? "revision " + n.appliedRevision : "—");
  row("reported", fmtTime(n.reportedAt) + (n.clockSkewMillis ? " · clock " + (n.clockSkewMillis / 1000).toFixed(2) + " s off" : ""));
  row("peers", (n.peers || 0) + " · stale handshakes: " + ((n.stalePeers || []).join(", ") || "none"), (n.stalePeers || []).length ? "bad" : "");
  const paths = state.paths.filter(p => p.from === n.name);
  const nodes = [dl];
  if (paths.length) {
    const t = el("table", {}, el("tr", {}, el("th", {}, "probed gateway"), el("th", {}, "RTT ms"), el("th", {}, "loss"), el("th", {}, "path MTU")));
    for (const p of paths) {
      t.append(el("tr", {}, el("td", {}, p.peer), el("td", {}, p.loss >= 1 ? "—" : p.rttMillis.toFixed(2)), el("td", { class: p.loss > 0 ? "bad" : "" }, Math.round(p.loss * 100) + "%"),
        el("td", { class: p.pathMTU && p.pathMTU < p.plannedMTU ? "bad" : "" }, (p.pathMTU || "?") + " / " + p.plannedMTU)));
    }
    nodes.push(el("h2", {}, "Paths"), t);
  }
  if (state.peers) {
    const stale = new Set(n.stalePeers || []);
    const t = el("table", {}, el("tr", {}, el("th", {}, "peer"), el("th", {}, "role"), el("th", {}, "endpoint"), el("th", {}, "handshake (last report)")));
    for (const p of state.peers.slice(0, 50)) {
      t.append(el("tr", {}, el("td", {}, p.name), el("td", {}, p.role), el("td", {}, p.endpoint || "—"), el("td", { class: stale.has(p.name) ? "bad" : "good" }, stale.has(p.name) ? "stale" : "fresh")));
    }
    nodes.push(el("h2", {}, "WireGuard peers (" + state.peers.length + ")"), t);
  }
  box.replaceChildren(...nodes);
}

function renderLatency() {
  const cells = state.status.latency || [];
  const t = document.getElementById("latency");
  const regions = [...new Set(cells.flatMap(c => [c.from, c.to]))].sort();
  if (!regions.length) { t.replaceChildren(el("tr", {}, el("td", { class: "muted" }, "no path probes reported yet"))); return; }
  const at = new Map(cells.map(c => [c.from + "\u0000" + c.to, c]));
  const head = el("tr", {}, el("th", {}, "from \\ to"), ...regions.map(r => el("th", {}, r)));
  const rows = regions.map(from => el("tr", {}, el("th", {}, from), ...regions.map(to => {
    const c = at.get(from + "\u0000" + to);
    if (!c) return el("td", {}, "—");
    if (c.loss >= 1) return el("td", { class: "bad" }, "unreachable");
    const low = state.paths.some(p => p.fromRegion === from && p.region === to && p.pathMTU && p.pathMTU < p.plannedMTU);
    return el("td", { class: low || c.loss > 0 ? "bad" : "" }, c.rttMillis.toFixed(1) + (c.loss > 0 ? " · " + Math.round(c.loss * 100) + "% loss" : "") + (c.minPathMTU ? " · " + c.minPathMTU : ""));
  })));
  t.replaceChildren(head, ...rows);
}

function renderAttention() {
  const st = state.status;
  const items = [];
  for (const r of st.regions) {
    const healthy = r.gateways.filter(g => g.healthy).length;
    if (r.gateways.length && healthy < r.gateways.length) items.push(["bad", r.name + ": " + healthy + " of " + r.gateways.length + " gateways healthy"]);
  }
  if (st.quarantined.length) items.push(["bad", "quarantined: " + st.quarantined.join(", ")]);
  if (st.stalePeers.length) items.push(["warn", "stale handshakes on: " + st.stalePeers.join(", ")]);
  if (st.nodesBehind) items.push(["warn", st.nodesBehind + " nodes apply an older map than sent"]);
  const low = state.paths.filter(p => p.loss < 1 && p.pathMTU && p.pathMTU < p.plannedMTU);
  if (low.length) items.push(["bad", plural(low.length, "path") + " below the planned MTU (statemesh doctor names the fix), e.g. " + low[0].from + " → " + low[0].peer + ": " + low[0].pathMTU + " < " + low[0].plannedMTU]);
  const list = document.getElementById("attention");
  list.replaceChildren(...(items.length ? items.map(([c, t]) => el("li", { class: c }, t)) : [el("li", { class: "good" }, "nothing needs attention")]));
}

function renderEvents() {
  const t = document.getElementById("events");
  const ev = (state.status.events || []).slice().reverse();
  if (!ev.length) { t.replaceChildren(el("tr", {}, el("td", { class: "muted" }, "no events since this controller started"))); return; }
  t.replaceChildren(...ev.map(e => el("tr", {}, el("td", {}, new Date(e.time).toLocaleTimeString()), el("td", {}, e.kind), el("td", {}, e.subject), el("td", {}, e.message))));
}

document.getElementById("login-form").addEventListener("submit", ev => {
  ev.preventDefault();
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("statemesh-token", state.token);
  refresh();
});

takeToken();
refresh();
setInterval(refresh, REFRESH_MS);
setInterval(renderLive, 1000);
