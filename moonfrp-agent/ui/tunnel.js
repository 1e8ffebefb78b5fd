// A tunnel's page: its state now, charts from history (bandwidth, connections, errors,
// connection durations), its top peers and its alerts.
import { api, bytes, cell, el, exact, labelText, perSecond, seconds, short, status, when } from "./common.js";
import { Panels } from "./panels.js";

let panels = null;
let timer = null;
let gen = 0;

const rate = (name, metric, by) => ({ name, metric: `moonfrp_tunnel_${metric}`, rate: true, by });

/// The charts, each a list of history queries (all matched on the tunnel's name).
function specs(name) {
  const match = (qs) => qs.map((q) => ({ ...q, match: { tunnel: name } }));
  return [
    {
      id: "bandwidth", title: "Bandwidth", format: perSecond,
      queries: match([rate("in", "receive_bytes_total"), rate("out", "transmit_bytes_total"),
        rate("payload in", "receive_payload_bytes_total"), rate("payload out", "transmit_payload_bytes_total")]),
    },
    {
      id: "connections", title: "Connections per second", format: short,
      queries: match([rate("opened", "connections_opened_total", ["direction"]), rate("closed", "connections_closed_total")]),
    },
    {
      id: "active", title: "Open connections", format: short,
      queries: match([{ name: "open", metric: "moonfrp_tunnel_connections_active" }]),
    },
    {
      id: "errors", title: "Errors per second", format: short,
      queries: match([rate("refused", "connections_refused_total"), rate("resets sent", "resets_sent_total"),
        rate("resets received", "resets_received_total"), rate("retransmits", "retransmits_total")]),
    },
    {
      id: "durations", title: "Mean connection duration", format: seconds,
      queries: match([rate("sum", "connection_duration_seconds_sum"), rate("count", "connection_duration_seconds_count")]),
      // Seconds of closed connections per second over closed connections per second.
      derive: ([sums, counts]) => sums.map((s, i) => {
        const c = new Map((counts[i]?.points ?? []).map(([t, v]) => [t, v]));
        return {
          name: "mean",
          points: s.points.filter(([t]) => c.get(t) > 0).map(([t, v]) => [t, v / c.get(t)]),
        };
      }),
    },
  ];
}

/// A fact: a term and its value, kept together (a grid cell each).
function kv(dl, k, v, cls) {
  const pair = el("div");
  pair.append(el("dt", null, k), v instanceof Node ? v : el("dd", cls, v));
  dl.append(pair);
}

function summary(t) {
  const head = document.getElementById("tunnel-state");
  head.replaceChildren();
  if (!t) {
    head.append(el("p", "down", "not watched now (it may have been removed); its history is below"));
    return;
  }
  const dl = el("dl", "facts");
  const st = el("dd");
  st.append(el("span", t.up ? "up" : "down", t.up ? "up" : "down"));
  if (!t.up && t.reason) st.append(el("span", "reason", t.reason));
  kv(dl, "status", st);
  kv(dl, "port", t.port === null ? "–" : `${t.port}/${t.proto}`);
  kv(dl, "role", t.role ?? t.type ?? "–");
  kv(dl, "source", t.source);
  kv(dl, "payload in", exact(t.receive_payload_bytes_total), "payload-in");
  kv(dl, "payload out", exact(t.transmit_payload_bytes_total), "payload-out");
  kv(dl, "in / out now", `${perSecond(t.receive_bytes_per_second)} / ${perSecond(t.transmit_bytes_per_second)}`);
  kv(dl, "open connections", exact(t.connections_active));
  kv(dl, "refused", exact(t.connections_refused_total));
  kv(dl, "failures", exact(t.failures_total));
  head.append(dl);
}

function peers(p) {
  const body = document.querySelector("#peers tbody");
  body.replaceChildren(...p.peers.map((x) => {
    const tr = el("tr");
    tr.append(cell(x.address, "addr"), cell(bytes(x.receive_bytes), "num"), cell(bytes(x.transmit_bytes), "num"),
      cell(exact(x.receive_payload_bytes), "num"), cell(exact(x.transmit_payload_bytes), "num"),
      cell(exact(x.connection_attempts), "num"));
    return tr;
  }));
  document.getElementById("peers-note").textContent =
    `${p.peers.length} of ${p.peers_total} peers; table ${p.table.entries} of ${p.table.capacity} entries`;
}

function alertRows(body, rows) {
  body.replaceChildren(...rows.map((a) => {
    const tr = el("tr");
    tr.append(cell(when(a.time ?? a.since)), cell(a.alertname), cell(a.event ?? a.state, `event ${a.event ?? a.state}`),
      cell(a.severity), cell(a.summary ?? a.annotations?.summary ?? labelText(a.labels), "summary"));
    return tr;
  }));
}

async function refresh(name, g) {
  const [tunnels, p, active, log] = await Promise.allSettled([
    api("/api/v1/tunnels"),
    api(`/api/v1/tunnels/${encodeURIComponent(name)}/peers?limit=10`),
    api("/api/v1/alerts"),
    api(`/api/v1/alerts/history?tunnel=${encodeURIComponent(name)}&limit=20`),
  ]);
  if (g !== gen) return;
  if (tunnels.status === "fulfilled") {
    summary(tunnels.value.tunnels.find((t) => t.tunnel === name));
    status(`updated ${new Date(tunnels.value.time * 1000).toLocaleTimeString()}`);
  } else {
    status(`cannot read the tunnel (${tunnels.reason.message}); retrying`, true);
  }
  if (p.status === "fulfilled") peers(p.value);
  else {
    document.querySelector("#peers tbody").replaceChildren();
    document.getElementById("peers-note").textContent = p.reason.message;
  }
  const mine = active.status === "fulfilled" ? active.value.alerts.filter((a) => a.labels.tunnel === name) : [];
  alertRows(document.querySelector("#tunnel-alerts-active tbody"), mine);
  alertRows(document.querySelector("#tunnel-alerts-log tbody"), log.status === "fulfilled" ? log.value.events : []);
  document.getElementById("tunnel-alerts-note").textContent =
    log.status === "fulfilled" ? "" : `alert log: ${log.reason.message}`;
  timer = setTimeout(() => refresh(name, g), 5000);
}

export async function show(name) {
  const g = ++gen;
  document.getElementById("tunnel-name").textContent = name;
  document.title = `${name} · moonfrp`;
  const host = document.getElementById("tunnel-charts");
  host.replaceChildren();
  // A file name from a name a stranger chose: letters, digits, dot, dash and underscore only.
  panels = new Panels(host, specs(name), `moonfrp-${name.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 64)}`);
  window.moonfrpPanels = panels;
  let every = 60;
  try { every = (await api("/api/v1/tunnels")).interval_seconds || 60; } catch { /* refresh says it */ }
  if (g !== gen) return;
  panels.load(undefined, undefined, every);
  refresh(name, g);
}

export function hide() {
  gen++;
  clearTimeout(timer);
  panels?.destroy();
  panels = null;
  document.title = "moonfrp";
}
