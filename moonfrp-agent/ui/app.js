// moonfrp's page: the overview, refreshed from the agent's own API (same origin only). Every
// name comes from whoever runs an frpc: text nodes only, never HTML.
"use strict";

const state = { rows: [], sort: "tunnel", desc: false, filter: "", timer: null };

function bytes(v, perSecond) {
  if (v === null || v === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let x = v;
  while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
  const s = i === 0 ? String(Math.round(x)) : x.toFixed(1);
  return s + " " + units[i] + (perSecond ? "/s" : "");
}

function exact(v) {
  return v === null || v === undefined ? "–" : v.toLocaleString("en-US");
}

function num(v, digits) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

function cell(text, cls, title) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  if (title) td.title = title;
  return td;
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
  for (const t of rows) {
    const tr = document.createElement("tr");
    tr.dataset.tunnel = t.tunnel;
    tr.append(cell(t.tunnel, "name", t.tunnel));
    tr.append(cell(t.port === null ? "–" : `${t.port}/${t.proto}`));
    tr.append(cell(t.role ?? t.type ?? ""));
    const status = document.createElement("td");
    const word = document.createElement("span");
    word.className = t.up ? "up" : "down";
    word.textContent = t.up ? "up" : "down";
    status.append(word);
    if (!t.up && t.reason) {
      const why = document.createElement("span");
      why.className = "reason";
      why.textContent = t.reason;
      status.append(why);
    }
    tr.append(status);
    tr.append(cell(bytes(t.receive_bytes_per_second, true), "num"));
    tr.append(cell(bytes(t.transmit_bytes_per_second, true), "num"));
    tr.append(cell(exact(t.receive_payload_bytes_total), "num payload-in"));
    tr.append(cell(exact(t.transmit_payload_bytes_total), "num payload-out"));
    tr.append(cell(exact(t.connections_active), "num"));
    tr.append(cell(num(t.refused_last_hour, 0), "num"));
    tr.append(cell(num(t.errors_last_hour, 0), "num"));
    out.append(tr);
  }
  body.replaceChildren(out);
  for (const th of document.querySelectorAll("#tunnels th")) {
    const key = th.querySelector("button").dataset.key;
    if (key === state.sort) th.setAttribute("aria-sort", state.desc ? "descending" : "ascending");
    else th.removeAttribute("aria-sort");
  }
}

function host(s) {
  const sys = s.system;
  document.getElementById("cpu").textContent =
    sys.cpu_usage_ratio === null ? "–" : (sys.cpu_usage_ratio * 100).toFixed(1) + " %";
  document.getElementById("memory").textContent =
    sys.memory_used_bytes === null ? "–" : `${bytes(sys.memory_used_bytes)} of ${bytes(sys.memory_total_bytes)}`;
  document.getElementById("load").textContent = num(sys.load1, 2);
  const up = s.tunnels.filter((t) => t.up).length;
  document.getElementById("up").textContent = `${up} of ${s.tunnels.length}`;
}

async function refresh() {
  const st = document.getElementById("state");
  let next = 5000;
  try {
    const r = await fetch("/api/v1/status", { headers: { Accept: "application/json" } });
    if (r.status === 503) {
      st.textContent = "waiting for the first snapshot…";
      next = 1000;
    } else if (!r.ok) {
      throw new Error(`HTTP ${r.status}`);
    } else {
      const s = (await r.json()).data;
      state.rows = s.tunnels;
      host(s);
      render();
      st.className = "state";
      const every = s.interval_seconds >= 10 ? Math.round(s.interval_seconds) : s.interval_seconds.toFixed(1);
      st.textContent = `updated ${new Date(s.time * 1000).toLocaleTimeString()} · every ${every} s · v${s.version}`;
      // Follow the agent's interval, between 1 and 10 s.
      next = Math.min(10, Math.max(1, s.interval_seconds)) * 1000;
    }
  } catch (e) {
    st.className = "state error";
    st.textContent = `cannot reach the agent (${e.message}); retrying`;
  }
  state.timer = setTimeout(refresh, next);
}

document.addEventListener("DOMContentLoaded", () => {
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
  refresh();
});
