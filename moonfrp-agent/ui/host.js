// The host page: CPU by mode, memory, load, network devices, disks and filesystems over time,
// from history, with what each service and container uses now and the filesystems' use.
import { api, bytes, cell, el, percent, perSecond, short } from "./common.js";
import { Panels } from "./panels.js";

let panels = null;
let gen = 0;

const sys = (name, metric, extra) => ({ name, metric: `moonfrp_system_${metric}`, ...extra });

const SPECS = [
  {
    id: "cpu", title: "CPU by mode (cores busy)", format: short,
    queries: [sys("", "cpu_seconds_total", { rate: true, by: ["mode"] })],
  },
  {
    id: "memory", title: "Memory", format: (v) => bytes(v),
    queries: [sys("used", "memory_used_bytes"), sys("available", "memory_available_bytes"),
      sys("cached", "memory_cached_bytes"), sys("buffers", "memory_buffers_bytes")],
  },
  {
    id: "load", title: "Load", format: short,
    queries: [sys("1 min", "load1"), sys("5 min", "load5"), sys("15 min", "load15")],
  },
  {
    id: "network", title: "Network devices", format: perSecond,
    queries: [sys("in", "network_receive_bytes_total", { rate: true, by: ["device"] }),
      sys("out", "network_transmit_bytes_total", { rate: true, by: ["device"] })],
  },
  {
    id: "disks", title: "Disks", format: perSecond,
    queries: [sys("read", "disk_read_bytes_total", { rate: true, by: ["device"] }),
      sys("written", "disk_written_bytes_total", { rate: true, by: ["device"] })],
  },
  {
    id: "filesystems", title: "Filesystems used", format: (v) => bytes(v),
    queries: [sys("", "filesystem_used_bytes", { by: ["mountpoint"] })],
  },
];

function filesystems(s) {
  const body = document.querySelector("#filesystems tbody");
  body.replaceChildren(...s.system.filesystems.map((f) => {
    const tr = el("tr");
    tr.append(cell(f.mountpoint, "name", f.mountpoint), cell(bytes(f.used_bytes), "num"),
      cell(bytes(f.size_bytes), "num"), cell(percent(f.used_bytes / f.size_bytes), "num"));
    return tr;
  }));
}

const num = (v) => (v === null || v === undefined ? "–" : String(v));

// Units (systemd state, cgroup resources) and containers, the busiest first.
function services(s) {
  const rows = [
    ...s.services.map((u) => ({ name: u.unit, kind: "service", state: u.state || "–", r: u })),
    ...(s.containers || []).map((c) => ({ name: c.container, kind: "container", state: c.id, r: c })),
  ].sort((a, b) => (b.r.cpu_cores ?? 0) - (a.r.cpu_cores ?? 0) || a.name.localeCompare(b.name));
  const body = document.querySelector("#services tbody");
  body.replaceChildren(...rows.map((g) => {
    const tr = el("tr");
    tr.dataset.name = g.name;
    tr.append(cell(g.name, "name", g.name), cell(g.kind), cell(g.state),
      cell(percent(g.r.cpu_cores), "num"),
      cell(bytes(g.r.memory_bytes), "num"), cell(bytes(g.r.memory_peak_bytes), "num"),
      cell(num(g.r.pids), "num"), cell(num(g.r.oom_kills), "num"));
    return tr;
  }));
  document.getElementById("services-note").textContent = rows.length ? ""
    : "No unit matches collectors.units and no container runs (or cgroups are not readable).";
}

export async function show() {
  const g = ++gen;
  if (!panels) {
    panels = new Panels(document.getElementById("host-charts"), SPECS, "moonfrp-host");
  }
  window.moonfrpPanels = panels;
  let every = 60;
  try {
    const s = await api("/api/v1/status");
    every = s.interval_seconds || 60;
    services(s);
    filesystems(s);
  } catch { /* the charts say what is missing */ }
  if (g === gen) panels.load(undefined, undefined, every);
}

export function hide() {
  gen++;
  panels?.stop();
}
