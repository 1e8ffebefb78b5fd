// moonfrp's page: a view per route (#/, #/tunnel/NAME, #/alerts, #/host), each refreshed from
// the agent's own API (same origin only) while it is shown.
import * as overview from "./overview.js";
import * as tunnel from "./tunnel.js";
import * as alerts from "./alerts.js";
import * as host from "./host.js";

const VIEWS = { overview, tunnel, alerts, host };
let current = null;

/// The view and its argument for a location hash.
function route(hash) {
  const path = hash.replace(/^#/, "") || "/";
  const m = path.match(/^\/tunnel\/(.+)$/);
  if (m) {
    try { return ["tunnel", decodeURIComponent(m[1])]; } catch { return ["overview"]; }
  }
  if (path === "/alerts") return ["alerts"];
  if (path === "/host") return ["host"];
  return ["overview"];
}

function go() {
  const [name, arg] = route(location.hash);
  if (current) VIEWS[current].hide();
  current = name;
  for (const v of Object.keys(VIEWS)) document.getElementById(`view-${v}`).hidden = v !== name;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  VIEWS[name].show(arg);
}

overview.setup();
alerts.setup();
window.addEventListener("hashchange", go);
go();
