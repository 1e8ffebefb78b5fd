// The host page: CPU by mode, memory, load, network devices, disks and filesystems over time,
// from history, with the filesystems' use now.
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
    filesystems(s);
  } catch { /* the charts say what is missing */ }
  if (g === gen) panels.load(undefined, undefined, every);
}

export function hide() {
  gen++;
  panels?.stop();
}
