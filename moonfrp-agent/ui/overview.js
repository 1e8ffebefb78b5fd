// The overview: host gauges and the tunnel table (sortable, filterable, a sparkline of the last
// hour's traffic per tunnel), refreshed from /api/v1/status at the agent's interval.
import { api, bytes, cell, el, exact, num, percent, status, tunnelHref } from "./common.js";
import { palette, sparkline } from "./chart.js";

// Rows drawn at most, unless asked for all: a table of a thousand rows relaid out every second
// keeps a browser busy (`cargo xtask bench-page`).
const PAGE = 200;

const state = {
  rows: [], sort: "tunnel", desc: false, filter: "", timer: null, gen: 0, all: false,
  // Sparklines: the last hour per tunnel, and each tunnel's canvas, drawn once per reading.
  sparks: new Map(), sparkedAt: 0, canvases: new Map(),
};

/// The tunnel's sparkline canvas, drawn when its data changed since it was last drawn.
function sparkCanvas(tunnel) {
  let c = state.canvases.get(tunnel);
  if (!c) {
    c = el("canvas");
    c.setAttribute("aria-hidden", "true");
    state.canvases.set(tunnel, c);
  }
  const points = state.sparks.get(tunnel);
  if (points && c.drawn !== points) {
    c.pending = points;
  }
  return c;
}

function compare(a, b) {
  const k = state.sort;
  const x = a[k];
  const y = b[k];
  let r;
  if (x === y) r = 0;
  else if (x === null || x === undefined) r = 1;
  else if (y === null || y === undefined) r = -1;
  else if (typeof x === "string") r = x.localeCompare(y);
  else r = x < y ? -1 : 1;
  return state.desc ? -r : r;
}

function render() {
  const body = document.querySelector("#tunnels tbody");
  const f = state.filter.toLowerCase();
  const rows = state.rows
    .filter((t) => !f || [t.tunnel, String(t.port ?? ""), t.role ?? "", t.proto, t.type]
      .some((s) => s.toLowerCase().includes(f)))
    .sort(compare);
  const out = document.createDocumentFragment();
  const colour = palette().series[0];
  const shown = state.all ? rows : rows.slice(0, PAGE);
  const more = document.getElementById("more");
  more.hidden = rows.length <= PAGE;
  more.textContent = state.all ? `Show the first ${PAGE}` : `Show all ${rows.length}`;
  document.getElementById("count").textContent =
    `${shown.length} of ${rows.length} tunnel${rows.length === 1 ? "" : "s"}` +
    (rows.length < state.rows.length ? ` (${state.rows.length} in all)` : "");
  const toDraw = [];
  for (const t of shown) {
    const tr = el("tr");
    tr.dataset.tunnel = t.tunnel;
    const name = el("td", "name");
    const a = el("a", null, t.tunnel);
    a.href = tunnelHref(t.tunnel);
    a.title = t.tunnel;
    name.append(a);
    tr.append(name);
    tr.append(cell(t.port === null ? "–" : `${t.port}/${t.proto}`));
    tr.append(cell(t.role ?? t.type ?? ""));
    const st = el("td");
    st.append(el("span", t.up ? "up" : "down", t.up ? "up" : "down"));
    if (!t.up && t.reason) st.append(el("span", "reason", t.reason));
    tr.append(st);
    tr.append(cell(bytes(t.receive_bytes_per_second, true), "num"));
    tr.append(cell(bytes(t.transmit_bytes_per_second, true), "num"));
    const spark = el("td", "spark");
    const canvas = sparkCanvas(t.tunnel);
    spark.append(canvas);
    tr.append(spark);
    tr.append(cell(exact(t.receive_payload_bytes_total), "num payload-in"));
    tr.append(cell(exact(t.transmit_payload_bytes_total), "num payload-out"));
    tr.append(cell(exact(t.connections_active), "num"));
    tr.append(cell(num(t.refused_last_hour, 0), "num"));
    tr.append(cell(num(t.errors_last_hour, 0), "num"));
    out.append(tr);
    if (canvas.pending) toDraw.push(canvas);
  }
  body.replaceChildren(out);
  // Drawn once in the document (a canvas needs its size), and again only with new data.
  for (const canvas of toDraw) {
    sparkline(canvas, canvas.pending, colour);
    canvas.drawn = canvas.pending;
    canvas.pending = null;
  }
  for (const th of document.querySelectorAll("#tunnels th")) {
    const key = th.querySelector("button")?.dataset.key;
    if (key && key === state.sort) th.setAttribute("aria-sort", state.desc ? "descending" : "ascending");
    else th.removeAttribute("aria-sort");
  }
}

function host(s) {
  const sys = s.system;
  document.getElementById("cpu").textContent = percent(sys.cpu_usage_ratio);
  document.getElementById("memory").textContent =
    sys.memory_used_bytes === null ? "–" : `${bytes(sys.memory_used_bytes)} of ${bytes(sys.memory_total_bytes)}`;
  const fullest = [...sys.filesystems].sort((a, b) => b.used_bytes / b.size_bytes - a.used_bytes / a.size_bytes)[0];
  document.getElementById("disk").textContent =
    fullest ? `${percent(fullest.used_bytes / fullest.size_bytes)} ${fullest.mountpoint}` : "–";
  document.getElementById("load").textContent = num(sys.load1, 2);
  const up = s.tunnels.filter((t) => t.up).length;
  document.getElementById("up").textContent = `${up} of ${s.tunnels.length}`;
}

/// Traffic (in + out, per second) of every tunnel over the last hour, one point a minute.
async function sparks() {
  const q = (m) => api(`/api/v1/history?metric=${m}&since=1h&step=60&rate=true`).catch(() => ({ series: [] }));
  const [rx, tx] = await Promise.all([q("moonfrp_tunnel_receive_bytes_total"), q("moonfrp_tunnel_transmit_bytes_total")]);
  const sum = new Map();
  for (const s of [...rx.series, ...tx.series]) {
    const by = sum.get(s.labels.tunnel) ?? new Map();
    for (const [t, v] of s.samples) by.set(t, (by.get(t) ?? 0) + v);
    sum.set(s.labels.tunnel, by);
  }
  state.sparks = new Map([...sum].map(([k, by]) => [k, [...by].sort((a, b) => a[0] - b[0])]));
}

async function refresh(gen) {
  let next = 5000;
  try {
    const r = await fetch("/api/v1/status", { headers: { Accept: "application/json" } });
    if (r.status === 503) {
      status("waiting for the first snapshot…");
      next = 1000;
    } else if (!r.ok) {
      throw new Error(`HTTP ${r.status}`);
    } else {
      const s = (await r.json()).data;
      if (Date.now() - state.sparkedAt > 60000) {
        state.sparkedAt = Date.now();
        await sparks();
      }
      if (gen !== state.gen) return;
      state.rows = s.tunnels;
      const names = new Set(s.tunnels.map((t) => t.tunnel));
      for (const k of state.canvases.keys()) if (!names.has(k)) state.canvases.delete(k);
      host(s);
      render();
      const every = s.interval_seconds >= 10 ? Math.round(s.interval_seconds) : s.interval_seconds.toFixed(1);
      status(`updated ${new Date(s.time * 1000).toLocaleTimeString()} · every ${every} s · v${s.version}`);
      // Follow the agent's interval, between 1 and 10 s.
      next = Math.min(10, Math.max(1, s.interval_seconds)) * 1000;
    }
  } catch (e) {
    status(`cannot reach the agent (${e.message}); retrying`, true);
  }
  if (gen === state.gen) state.timer = setTimeout(() => refresh(gen), next);
}

export function setup() {
  for (const b of document.querySelectorAll("#tunnels th button")) {
    b.addEventListener("click", () => {
      const key = b.dataset.key;
      state.desc = state.sort === key ? !state.desc : false;
      state.sort = key;
      render();
    });
  }
  document.getElementById("filter").addEventListener("input", (e) => {
    state.filter = e.target.value;
    render();
  });
  document.getElementById("more").addEventListener("click", () => {
    state.all = !state.all;
    render();
  });
}

export function show() {
  refresh(++state.gen);
}

export function hide() {
  state.gen++;
  clearTimeout(state.timer);
}
