// The alerts page: pending and firing alerts now, and the notification log (history's alert
// events), filtered by alert, tunnel and event.
import { api, cell, el, labelText, short, status, when } from "./common.js";

let timer = null;
let gen = 0;

function active(list) {
  const body = document.querySelector("#alerts-active tbody");
  body.replaceChildren(...list.map((a) => {
    const tr = el("tr");
    tr.append(cell(a.alertname), cell(a.state, `event ${a.state}`), cell(a.severity), cell(labelText(a.labels), "labels"),
      cell(short(a.value), "num"), cell(when(a.since)), cell(a.annotations?.summary ?? "", "summary"));
    return tr;
  }));
  document.getElementById("alerts-active-note").textContent = list.length ? "" : "no alert is pending or firing";
}

function log(events) {
  const body = document.querySelector("#alerts-log tbody");
  body.replaceChildren(...events.map((e) => {
    const tr = el("tr");
    tr.append(cell(when(e.time)), cell(e.alertname), cell(e.event, `event ${e.event}`), cell(e.severity),
      cell(labelText(e.labels), "labels"), cell(short(e.value), "num"), cell(e.summary, "summary"));
    return tr;
  }));
}

function query() {
  const p = new URLSearchParams({ limit: "200" });
  for (const id of ["alertname", "tunnel", "event"]) {
    const v = document.getElementById(`log-${id}`).value.trim();
    if (v) p.set(id, v);
  }
  return `/api/v1/alerts/history?${p}`;
}

async function refresh(g) {
  const [now, past] = await Promise.allSettled([api("/api/v1/alerts"), api(query())]);
  if (g !== gen) return;
  if (now.status === "fulfilled") {
    active(now.value.alerts);
    if (!now.value.enabled) document.getElementById("alerts-active-note").textContent = "alerts are off in the configuration";
  }
  const note = document.getElementById("alerts-log-note");
  if (past.status === "fulfilled") {
    log(past.value.events);
    note.textContent = past.value.events.length ? "" : "no notification matches";
  } else {
    log([]);
    note.textContent = `alert log: ${past.reason.message}`;
  }
  if (now.status === "fulfilled") status(`alerts as of ${new Date().toLocaleTimeString()}`);
  else status(`cannot reach the agent (${now.reason.message}); retrying`, true);
  timer = setTimeout(() => refresh(g), 5000);
}

export function setup() {
  document.getElementById("log-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    clearTimeout(timer);
    refresh(++gen);
  });
}

export function show() {
  refresh(++gen);
}

export function hide() {
  gen++;
  clearTimeout(timer);
}
